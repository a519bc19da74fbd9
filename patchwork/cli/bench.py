"""``patchwork bench``: grade the interpretability methods on planted model organisms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from patchwork.errors import PatchworkError


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the ``patchwork`` app."""
    from patchwork.cli.output import user_errors

    app.command("bench")(user_errors(bench_command))


def bench_command(
    out: Annotated[
        Path,
        typer.Option(help="Folder for the organisms (trained once, cached), stores and results."),
    ] = Path("bench"),
    samples: Annotated[int, typer.Option(help="Held-out clips per organism and method.")] = 16,
    organism: Annotated[
        list[str] | None,
        typer.Option(help="Only these organisms (repeat the option) [default: the whole suite]."),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
) -> None:
    """Train (once) or load the planted organisms, run every method on each, grade how well it
    recovers the planted truth; writes bench.zarr and bench.png into --out."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from patchwork.bench import SUITE, run_bench

    names = [o.name for o in SUITE]
    unknown = [name for name in organism or [] if name not in names]
    if unknown:
        raise PatchworkError(
            f"--organism: unknown {unknown[0]!r}; the suite has " + ", ".join(map(repr, names))
        )
    chosen = [o for o in SUITE if not organism or o.name in organism]
    torch.set_num_threads(threads)
    graded = run_bench(out, chosen, samples, log=typer.echo)
    table = Table(title=f"patchwork bench ({samples} clips per organism) → {out / 'bench.zarr'}")
    frame = graded.to_dataframe().reset_index()
    for column, heading in HEADINGS.items():
        table.add_column(heading, justify="left" if frame[column].dtype == object else "right")
    for row in frame[list(HEADINGS)].itertuples(index=False):
        if all(value == "" or value != value for value in row[2:]):
            continue  # a method the organism does not run
        table.add_row(*(_cell(value) for value in row))
    Console().print(table)


HEADINGS = {
    "organism": "organism",
    "technique": "method",
    "status": "status",
    "error_layers": "error",
    "auroc": "AUROC",
    "inside": "inside",
    "outside": "outside",
    "first_planted": "head 1st",
    "planted_share": "share",
    "samples_used": "n",
}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "·" if value != value else f"{value:.3g}"
    return str(value)
