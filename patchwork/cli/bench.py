"""``patchwork bench``: grade the interpretability methods on planted model organisms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from patchwork.cli.options import given_path
from patchwork.errors import PatchworkError

if TYPE_CHECKING:
    import xarray as xr
    from rich.console import Console
    from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the ``patchwork`` app."""
    from patchwork.cli.output import user_errors

    app.command("bench")(user_errors(bench_command))


def bench_command(
    out: Annotated[
        Path,
        typer.Option(
            parser=given_path,
            help="Folder for the organisms (trained once, cached), stores and results.",
        ),
    ] = Path("bench"),
    samples: Annotated[
        int, typer.Option(min=1, max=100_000, help="Held-out clips per organism and method.")
    ] = 16,
    organism: Annotated[
        list[str] | None,
        typer.Option(help="Only these organisms (repeat the option) [default: the whole suite]."),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, max=1024, help="torch threads.")] = 1,
    train_jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Organisms trained at once, each in its own process with --threads threads "
            "(the same weights as one at a time).",
        ),
    ] = 1,
) -> None:
    """Train (once) or load the planted organisms, run every method on each, grade how well it
    recovers the planted truth; writes bench.zarr, bench.png and faithfulness.png into --out."""
    import torch
    from rich.console import Console

    from patchwork.bench import SUITE, reference_lines, run_bench
    from patchwork.cli.options import no_links, output_folder

    names = [o.name for o in SUITE]
    unknown = [name for name in organism or [] if name not in names]
    if unknown:
        raise PatchworkError(
            f"--organism: unknown {unknown[0]!r}; the suite has " + ", ".join(map(repr, names))
        )
    chosen = [o for o in SUITE if not organism or o.name in organism]
    output_folder(out, "--out")  # before any organism trains
    no_links(out, "--out")  # its checkpoints, studies and stores, at any depth
    torch.set_num_threads(threads)
    graded = run_bench(out, chosen, samples, log=typer.echo, train_jobs=train_jobs)
    print_uncut(
        Console(), bench_table(graded, f"patchwork bench ({samples} clips per organism)", out)
    )
    for line in reference_lines(graded):
        typer.echo(line)


def bench_table(graded: xr.Dataset, title: str, out: Path) -> Table:
    """The grading table: a row per organism and method it runs, a column per grade."""
    from rich.table import Table

    from patchwork.bench import grade_frame
    from patchwork.bench.suite import INTERVAL_GRADES

    table = Table(title=f"{title} → {out / 'bench.zarr'}")
    frame = grade_frame(graded)
    frame["samples_used"] = [  # "13 of 16": the clips a grade read, of those run
        f"{used:.0f} of {total:.0f}" if used == used else ""
        for used, total in zip(frame["samples_used"], frame["samples_total"], strict=True)
    ]
    for name in INTERVAL_GRADES:  # "0.875 [0.81, 0.94]": the grade and its interval over clips
        if f"{name}_low" in frame:
            frame[name] = [
                value
                if value != value
                else _cell(value) + (f" [{_cell(low)}, {_cell(high)}]" if low == low else "")
                for value, low, high in zip(
                    frame[name], frame[f"{name}_low"], frame[f"{name}_high"], strict=True
                )
            ]
    for column, heading in HEADINGS.items():
        table.add_column(  # folded onto more lines, never cut
            heading, justify="left" if frame[column].dtype == object else "right", overflow="fold"
        )
    for row in frame[list(HEADINGS)].itertuples(index=False):
        if all(value == "" or value != value for value in row[2:]):
            continue  # a method the organism does not run
        table.add_row(*(_cell(value) for value in row))
    return table


def print_uncut(console: Console, table: Table) -> None:
    """Print ``table`` with no cell cut: as wide as it needs when the output is not a terminal
    (a log file has no width), its cells folded onto more lines on a narrow terminal."""
    if not console.is_terminal:
        from rich.console import Console

        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console = Console(file=console.file, width=max(console.width, natural))
    console.print(table)


HEADINGS = {
    "organism": "organism",
    "technique": "method",
    "status": "status",
    "error_layers": "error",
    "auroc": "AUROC",
    "lens_error": "lens error",
    "inside": "inside",
    "outside": "outside",
    "first_planted": "head 1st",
    "planted_share": "share",
    "cpr": "CPR",
    "cmd": "CMD",
    "bottom_area": "bottom",
    "samples_used": "clips",
}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "·" if value != value else f"{value:.3g}"
    return str(value)
