"""Every present method kind's summary as a table on the terminal (``patchwork run`` and
``patchwork status``), from :mod:`patchwork.analysis.reports`."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from patchwork.errors import PatchworkError


def summary_table(frame: pd.DataFrame, heading: str | None = None) -> Table:
    """A :meth:`~patchwork.analysis.reports.Report.summary` as a rich table: its title above
    (after ``heading``, e.g. the store's study and model), its caption (estimator, samples used
    of all) below, index levels as leading columns."""
    shown = frame if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    title = frame.attrs.get("title")
    table = Table(
        title=f"[bold]{heading}[/]\n{title}" if heading else title,
        caption=frame.attrs.get("caption"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    for column in shown.columns:
        numeric = pd.api.types.is_numeric_dtype(shown[column])
        table.add_column(_header(column), justify="right" if numeric else "left")
    number_format = frame.attrs.get("number_format")
    for row in shown.itertuples(index=False):
        table.add_row(*(_cell(value, number_format) for value in row))
    return table


def print_summaries(results: Any, console: Console, indent: str = "", **options: Any) -> None:
    """Print the summary of every kind in ``results``; a kind whose summary cannot be computed
    (no usable sample yet …) gets one yellow line saying why."""
    from patchwork.analysis.reports import reports_for

    for report in reports_for(results):
        try:
            frame = report.summary(results, **options)
        except PatchworkError as error:
            console.print(f"{indent}[yellow]{report.kind}: no summary: {error}[/]")
            continue
        console.print(summary_table(frame))


def _header(column: Any) -> str:
    if isinstance(column, tuple):
        return "\n".join(str(part) for part in column)
    return str(column)


def _cell(value: Any, number_format: str | None = None) -> str:
    """A value as printed: integers as they are, floats to two decimals (or ``number_format``,
    e.g. ``"{:+.2f}"``; tiny ones in scientific notation), NaN blank, booleans yes/no."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return str(int(value))
    if isinstance(value, float) or (hasattr(value, "dtype") and value.dtype.kind == "f"):
        number = float(value)
        if not math.isfinite(number):
            return ""
        if number_format is not None:
            return number_format.format(0.0 if abs(number) < 0.005 else number)
        if number == 0 or abs(number) >= 0.01:
            return f"{number:.2f}".replace("-0.00", "0.00")
        return f"{number:.1e}"
    return str(value)
