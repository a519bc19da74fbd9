"""The ``patchwork`` command line: thin wrappers over the library, one readable line per error."""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from patchwork.errors import PatchworkError

app = typer.Typer(
    name="patchwork",
    help="Causal interventions on audio-visual LLMs: where does the audio evidence get lost?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

#: Modules that add their own commands (they live beside the code they drive).
SUBCOMMAND_MODULES = ("patchwork.analysis.commands", "patchwork.testbed.commands")


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`PatchworkError` into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PatchworkError as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


@app.command()
@user_errors
def validate(study: Annotated[Path, typer.Argument(help="A study YAML file.")]) -> None:
    """Check a study file against the schema (no model is loaded)."""
    from patchwork.study import load_study

    loaded = load_study(study)
    console.print(f"[green]ok[/] {study}: study {loaded.name!r} is valid")


@app.command()
@user_errors
def run(
    study: Annotated[Path, typer.Argument(help="A study YAML file.")],
    store: Annotated[
        Path, typer.Option("--store", help="Store root: results go under it (default: store/).")
    ] = Path("store"),
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Remove the study's existing store first (says so).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option("--workers", min=0, help="Run units on a local Dask cluster of N processes."),
    ] = 0,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Run units on the Dask cluster at ADDRESS.")
    ] = None,
) -> None:
    """Run a study's sweep and write its results store; re-running resumes."""
    from patchwork.engine.runner import run_study
    from patchwork.study import load_study

    loaded = load_study(study)
    with contextlib.ExitStack() as stack:
        executor = None
        if workers or scheduler:
            from patchwork.engine.distributed import dask_executor

            executor = stack.enter_context(
                dask_executor(workers or None, scheduler, loaded.execution.resources)
            )
        progress = stack.enter_context(
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("samples"),
                TimeElapsedColumn(),
                console=console,
            )
        )
        task = progress.add_task(loaded.name, total=None)
        summary = run_study(
            loaded,
            store_root=store,
            executor=executor,
            fresh=fresh,
            on_start=lambda total: progress.update(task, total=total),
            on_unit=lambda count: progress.advance(task, count),
            on_note=lambda note: progress.console.print(f"[yellow]{note}[/]"),
        )
    if summary.layer_profile is not None:
        console.print(_profile_table(loaded.name, summary.layer_profile))
    console.print(
        f"{summary.samples} samples on "
        f"{summary.model}: {summary.units_run} units run, {summary.units_skipped} already done, "
        f"{summary.seconds:.1f} s → [bold]{summary.store}[/]"
    )
    console.print(
        f"next: [bold]patchwork locate {summary.store}[/] · "
        f"[bold]patchwork plot {summary.store} --out figures[/]"
    )


def _profile_table(study: str, profile: Any) -> Table:
    """Mean normalized effect (layer × position group) of the first component, as a table."""
    component = str(profile["component"].values)
    table = Table(
        title=f"{study}: mean normalized effect of patching the {component} "
        "(0 = nothing restored, 1 = audio answer fully restored)"
    )
    table.add_column("layer", justify="right")
    groups = [str(group) for group in profile["position_group"].values]
    for group in groups:
        table.add_column(group, justify="right")
    for layer in profile["layer"].values:
        row = profile.sel(layer=layer)
        table.add_row(
            str(int(layer)), *(f"{float(row.sel(position_group=g)):+.2f}" for g in groups)
        )
    return table


@app.command()
@user_errors
def verify(store: Annotated[Path, typer.Argument(help="A results store (*.zarr).")]) -> None:
    """Remove crash leftovers and unmark any finished unit whose data are incomplete."""
    from patchwork.store.verify import verify_store

    report = verify_store(store)
    for leftover in report.partial_files_removed:
        console.print(f"removed leftover {leftover}")
    for model, units in report.units_cleared.items():
        for start, stop in units:
            console.print(f"{model}: samples {start}–{stop - 1} incomplete; unmarked for re-run")
    verdict = "[green]ok[/]" if report.ok else "[yellow]repaired[/]"
    console.print(
        f"{verdict} {store}: {report.units_checked} finished units checked, "
        f"{sum(map(len, report.units_cleared.values()))} unmarked, "
        f"{len(report.partial_files_removed)} leftovers removed"
    )


@app.command()
@user_errors
def status(store: Annotated[Path, typer.Argument(help="A results store (*.zarr).")]) -> None:
    """Show what a store holds and how far its run got."""
    import zarr

    from patchwork.store.zarr_store import open_results

    first = open_results_any(store)
    root = zarr.open_group(store, mode="r", zarr_format=3)
    console.print(
        f"[bold]{store}[/]: study {first.attrs.get('study_name')!r}, "
        f"config {str(first.attrs.get('config_sha256'))[:12]}, created {first.attrs.get('created')}"
    )
    for model, _ in sorted(root.groups()):
        results = open_results(store, model)
        done = int(results["done"].sum())
        total = results.sizes["sample"]
        state = "complete" if done == total else "partial"
        console.print(
            f"  {model}: {done}/{total} samples done ({state}); layers "
            f"{results.sizes['layer']}, groups {list(map(str, results.position_group.values))}, "
            f"components {list(map(str, results.component.values))}"
        )


def open_results_any(store: Path) -> Any:
    import zarr

    from patchwork.store.zarr_store import open_results

    models = []
    if (store / "zarr.json").exists():
        models = sorted(name for name, _ in zarr.open_group(store, mode="r").groups())
    return open_results(store, models[0] if models else None)


def _register_subcommands() -> None:
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(app)


def main() -> None:
    """Entry point of the ``patchwork`` command."""
    _register_subcommands()
    app(prog_name="patchwork")


if __name__ == "__main__":  # pragma: no cover
    main()
