"""The ``patchwork`` command line: thin wrappers over the library, one readable line per error
(exit codes in :mod:`patchwork.cli.output`). This module holds the app and the commands that
drive a run; :mod:`patchwork.cli.analysis` and :mod:`patchwork.cli.testbed` add the others.

Only ``run``, ``validate``, ``plan``, ``inspect`` and ``pairs`` (which build the model on the meta
device) and the ``testbed`` commands load torch, transformers and nnsight; ``--help``,
``validate --schema-only``, ``status``, ``locate`` and ``plot`` start without them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from patchwork.cli.options import given_path
from patchwork.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    OutputFailed,
    console,
    guard_output,
    one_line,
    output_failed,
    user_errors,
)

app = typer.Typer(
    name="patchwork",
    help="Causal interventions on audio-visual LLMs: where does the audio evidence get lost?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from patchwork._version import __version__

        typer.echo(f"patchwork {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Causal interventions on audio-visual LLMs: where does the audio evidence get lost?"""
    from patchwork.cli.progress import quiet_library_bars

    quiet_library_bars()  # every command that loads a model shows its own progress, or none


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY.PATH=VALUE",
        help="Override a study field (YAML value), e.g. --set model.dtype=bfloat16 or "
        "--set interventions.0.window=2; repeatable. Validated like the file, recorded in the "
        "store, part of the study hash.",
    ),
]


#: The study field each short option of ``run`` sets.
SHORT_FORMS = {
    "threads": "execution.threads",
    "device": "model.device",
    "dtype": "model.dtype",
    "batch_size": "execution.batch_size",
    "samples": "dataset.samples",
    "seed": "dataset.seed",
}


def overrides(assignments: list[str] | None = None, **short_forms: object) -> list[str]:
    """``--set`` assignments plus the short options that were given, as ``key.path=value`` (a
    text value quoted, so that it is read as the text it is: ``--device yes`` is not ``true``)."""
    given = [
        f"{SHORT_FORMS[name]}={json.dumps(value) if isinstance(value, str) else value}"
        for name, value in short_forms.items()
        if value is not None
    ]
    return [*(assignments or []), *given]


def _load_with_short_forms(
    study: Path, assignments: list[str] | None, **short_forms: object
) -> Any:
    """:func:`~patchwork.study.load_study` with ``overrides(assignments, **short_forms)``; a
    refused short form is named as it was typed (``--seed -1: …``), not as its override."""
    from patchwork.errors import StudyError
    from patchwork.study import load_study

    for name, value in short_forms.items():
        field = SHORT_FORMS[name]
        for text in assignments or []:
            key = ".".join(part.strip() for part in text.partition("=")[0].split("."))
            if value is not None and key == field:  # one of them would be dropped unread
                raise StudyError(
                    f"--{name.replace('_', '-')} {value} and --set {text} both set {field}; "
                    "give one of them"
                )
    try:
        return load_study(study, overrides(assignments, **short_forms))
    except StudyError as error:
        for name, value in short_forms.items():
            written = overrides(None, **{name: value})
            if value is not None and str(error).startswith(f"--set {written[0]}:"):
                option = f"--{name.replace('_', '-')} {value}"
                raise StudyError(option + str(error)[len(f"--set {written[0]}") :]) from None
        raise


@app.command()
@user_errors
def validate(
    study: Annotated[Path, typer.Argument(parser=given_path, help="A study YAML file.")],
    assignments: SetOption = None,
    schema_only: Annotated[
        bool,
        typer.Option(
            "--schema-only", help="Check the file against the schema only (no torch, instant)."
        ),
    ] = False,
) -> None:
    """Check a study as `run` would before computing — schema, checkpoint, layer ranges, media,
    manifest rows, words — without loading the model's weights."""
    from patchwork.study import load_study

    loaded = load_study(study, overrides(assignments))
    if not schema_only:
        from patchwork.engine.runner import check_study

        prepared = check_study(loaded)
        console.print(
            f"[green]ok[/] {study}: study {loaded.name!r} is valid for {prepared.loaded.name} "
            f"({prepared.loaded.adapter.num_layers} layers, {len(prepared.samples)} samples)"
        )
        for note in prepared.notes:
            console.print(f"[yellow]{note}[/]")
        return
    console.print(f"[green]ok[/] {study}: study {loaded.name!r} matches the schema")


@app.command()
@user_errors
def plan(
    study: Annotated[Path, typer.Argument(parser=given_path, help="A study YAML file.")],
    assignments: SetOption = None,
) -> None:
    """What a study will cost, before it runs: cells, positions per group, forwards and FLOPs of
    the exact path vs a naive sweep, weights and peak memory, and whether it fits the device.
    Builds the model from its config alone (no weights read, no memory); checks as `validate`."""
    from rich.table import Table

    from patchwork.engine.cost import plan_study
    from patchwork.study import load_study

    estimate = plan_study(load_study(study, overrides(assignments)))
    table = Table(title=f"plan: {estimate.study}", show_header=False)
    for name, value in estimate.rows():
        table.add_row(name, value)
    console.print(table)


@app.command()
@user_errors
def run(
    study: Annotated[Path, typer.Argument(parser=given_path, help="A study YAML file.")],
    store: Annotated[
        Path,
        typer.Option(
            "--store",
            parser=given_path,
            help="Store root: results go under it (default: store/).",
        ),
    ] = Path("store"),
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Remove the study's existing store first (says so).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=256,
            help="Run units on a local Dask cluster of N processes (0, the default: in this "
            "process).",
        ),
    ] = 0,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Run units on the Dask cluster at ADDRESS.")
    ] = None,
    assignments: SetOption = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            max=1024,
            help="torch threads per process (execution.threads; default 1).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="model.device, e.g. cuda:0.")] = None,
    dtype: Annotated[str | None, typer.Option(help="model.dtype: float32, bfloat16 …")] = None,
    batch_size: Annotated[int | None, typer.Option(help="execution.batch_size.")] = None,
    samples: Annotated[int | None, typer.Option(help="dataset.samples (generators).")] = None,
    seed: Annotated[int | None, typer.Option(help="dataset.seed: which samples.")] = None,
) -> None:
    """Run a study's sweep and write its results store; re-running resumes."""
    import contextlib

    from patchwork.cli.options import output_folder
    from patchwork.cli.progress import RunProgress
    from patchwork.engine.distributed import check_address
    from patchwork.errors import PatchworkError

    if scheduler is not None:
        if workers:
            raise PatchworkError(
                f"--workers {workers} and --scheduler {scheduler}: give one (local workers, or "
                "the cluster at the scheduler's address)"
            )
        check_address(scheduler)  # '' (an unset shell variable) is no address: never ignored

    loaded = _load_with_short_forms(
        study,
        assignments,
        threads=threads,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        samples=samples,
        seed=seed,
    )
    from patchwork.engine.runner import run_study, store_path

    output_folder(store, "--store")  # before anything loads: a store is a folder
    label = loaded.where("store") if loaded.store is not None else "--store"
    output_folder(store_path(loaded, store), label, store=True)

    with contextlib.ExitStack() as stack:
        executor = None
        if workers or scheduler is not None:
            from patchwork.engine.distributed import dask_executor

            executor = stack.enter_context(
                dask_executor(
                    workers or None,
                    scheduler,
                    loaded.execution.resources,
                    loaded.execution.threads,
                )
            )
        progress = stack.enter_context(RunProgress(loaded.name, console))
        summary = run_study(
            loaded,
            store_root=store,
            executor=executor,
            fresh=fresh,
            on_start=progress.start,
            on_unit=progress.unit,
            on_note=progress.note,
        )
    from patchwork.cli.summaries import print_summaries
    from patchwork.store.zarr_store import open_results

    written = open_results(summary.store, summary.model, verify=False)  # just checked
    print_summaries(written, console)  # every present kind's, as `patchwork status` prints them
    _print_baselines(written)
    console.print(
        f"{summary.samples} samples on "
        f"{summary.model}: {summary.units_run} units run, {summary.units_skipped} already done, "
        f"{summary.seconds:.1f} s → [bold]{summary.store}[/]"
    )
    console.print(
        f"next: [bold]patchwork locate {summary.store}[/] · "
        f"[bold]patchwork plot {summary.store} --out figures[/]"
    )


@app.command()
@user_errors
def verify(
    store: Annotated[Path, typer.Argument(parser=given_path, help="A results store (*.zarr).")],
) -> None:
    """Remove crash leftovers and unmark any finished unit whose data are incomplete."""
    from patchwork.engine.lock import store_lock
    from patchwork.store.metadata import metadata_line
    from patchwork.store.verify import verify_store
    from patchwork.store.zarr_store import root_attributes

    root_attributes(store)  # a store whose root metadata read, or one line
    with store_lock(store):  # never while a run writes: its marks would look lost
        report = verify_store(store)
    for leftover in report.partial_files_removed:
        console.print(f"removed leftover {leftover}")
    for model, lines in report.marks_restored.items():
        for line in lines:
            console.print(f"{model}: {line}")
    for model, units in report.units_cleared.items():
        for start, stop in units:
            console.print(
                f"{model}: samples {start}–{stop - 1} damaged or incomplete; unmarked for re-run"
            )
    for model, names in report.coordinates_damaged.items():
        if names:
            console.print(
                f"{model}: coordinates {names} damaged; units not checked (they are judged "
                "with their coordinates): the next run of the study rewrites them, then checks "
                "its units"
            )
    for model, lost in report.metadata_lost.items():
        console.print(f"[yellow]{metadata_line(store, model, lost)}[/]")
    verdict = "[green]ok[/]" if report.ok else "[yellow]repaired[/]"
    if report.metadata_lost:
        verdict = "[yellow]needs the study[/]"
    console.print(
        f"{verdict} {store}: {report.units_checked} finished units checked, "
        f"{sum(map(len, report.units_cleared.values()))} unmarked, "
        f"{len(report.partial_files_removed)} leftovers removed"
    )


@app.command()
@user_errors
def status(
    store: Annotated[Path, typer.Argument(parser=given_path, help="A results store (*.zarr).")],
) -> None:
    """Show what a store holds and how far its run got."""
    from patchwork.errors import StoreError
    from patchwork.store.metadata import metadata_line, unreadable_metadata
    from patchwork.store.zarr_store import open_results, root_attributes, store_models

    models = store_models(store)
    attrs = root_attributes(store)
    for model in models:  # damaged metadata: one line, before anything is printed
        lost = unreadable_metadata(store, model)
        if lost:
            raise StoreError(metadata_line(store, model, lost))
    opened = {model: open_results(store, model) for model in models}  # damage: one line first
    console.print(
        f"[bold]{store}[/]: study {attrs.get('study_name')!r}, "
        f"config {str(attrs.get('config_sha256'))[:12]}, created {attrs.get('created')}"
    )
    for model, results in opened.items():
        done = int(results["done"].sum())
        total = results.sizes["sample"]
        state = "complete" if done == total else "partial"
        console.print(f"  {model}: {done}/{total} samples done ({state})")
        for name, variable in results.data_vars.items():
            if name not in ("done", "checksum"):
                shape = " × ".join(f"{dim} {results.sizes[dim]}" for dim in variable.dims[1:])
                console.print(f"    {name} ({shape or 'per sample'})")
        _print_baselines(results)
    _print_store_summaries(store, models)


def _print_store_summaries(store: Path, models: list[str]) -> None:
    """After ``status``'s lines: every present kind's summary, per model group."""
    from patchwork.cli.summaries import print_summaries
    from patchwork.store.zarr_store import open_results

    for model in models:
        if len(models) > 1:
            console.print(f"[bold]{model}[/]")
        print_summaries(open_results(store, model, verify=False), console, indent="  ")


def _print_baselines(results: Any) -> None:
    """The unpatched runs' behaviour and the samples that do not show it (status and run)."""
    from patchwork.analysis.results import baseline_report

    report = baseline_report(results)
    if report is None:
        return
    console.print(f"  baselines: {report.describe()}")
    for line in report.flagged_lines():
        console.print(f"  [yellow]{line}[/]")


def open_results_any(store: Path) -> Any:
    import zarr

    from patchwork.store.zarr_store import open_results

    models = []
    if (store / "zarr.json").exists():
        models = sorted(name for name, _ in zarr.open_group(store, mode="r").groups())
    return open_results(store, models[0] if models else None, verify=False)  # attributes only


def _register_subcommands() -> None:
    """``locate`` and ``plot`` (:mod:`patchwork.cli.analysis`), ``testbed …``
    (:mod:`patchwork.cli.testbed`), ``bench``, ``inspect`` and ``pairs`` (their own modules)."""
    from patchwork.cli import analysis, bench, inspect, pairs, testbed

    analysis.register(app)
    testbed.register(app)
    bench.register(app)
    inspect.register(app)
    pairs.register(app)


def main() -> None:
    """Entry point of the ``patchwork`` command: every outcome but a bug is one line at most."""
    guard_output()
    try:
        _register_subcommands()
        code = app(prog_name="patchwork", standalone_mode=False)
        sys.stdout.flush()  # a full disk is found here, not at the interpreter's exit
    except OutputFailed as failed:
        raise SystemExit(output_failed(failed)) from None
    except (KeyboardInterrupt, typer.Abort):
        raise SystemExit(one_line("interrupted", EXIT_INTERRUPTED)) from None
    except typer.TyperException as error:  # bad arguments, unknown commands and options
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "patchwork"
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        code = getattr(error, "exit_code", EXIT_USER_ERROR)
        if not message.strip():  # no arguments: the help was shown
            raise SystemExit(code) from None
        raise SystemExit(one_line(f"error: {message} (see {command} --help)", code)) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
