"""Two stores side by side: every method kind's summary in each, and their difference.

For comparing two models on one study (an Omni model against its base) or two runs of the same
study kind. Summaries whose rows have names (:attr:`~patchwork.analysis.reports.Report.keys`:
layers, groups, …) are subtracted row by row, second − first, over the rows both hold; rankings
(top heads, top paths, strongest knockouts) are shown side by side only, since their rows differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import xarray as xr

from patchwork.analysis.reports import reports_for
from patchwork.analysis.results import describe
from patchwork.errors import PatchworkError


@dataclass(frozen=True)
class Comparison:
    """One kind in two stores: each summary (None with ``note`` saying why) and the
    difference (None for rankings, or when a side has no summary)."""

    kind: str
    first: pd.DataFrame | None
    second: pd.DataFrame | None
    difference: pd.DataFrame | None
    note: str = ""


def summary_difference(
    first: pd.DataFrame, second: pd.DataFrame, keys: Sequence[str]
) -> pd.DataFrame:
    """``second − first`` of every numeric column both summaries hold (not yes/no columns), on
    the rows whose ``keys`` both hold, in ``first``'s order."""
    keys = list(keys)
    numeric = [
        column
        for column in first.columns
        if column not in keys
        and column in second.columns
        and pd.api.types.is_numeric_dtype(first[column])
        and not pd.api.types.is_bool_dtype(first[column])
    ]
    merged = first[[*keys, *numeric]].merge(
        second[[*keys, *numeric]], on=keys, how="inner", suffixes=("@first", "@second")
    )
    difference = merged[keys].copy()
    for column in numeric:
        difference[column] = merged[f"{column}@second"] - merged[f"{column}@first"]
    return difference


def comparison_labels(first: xr.Dataset, second: xr.Dataset) -> tuple[str, str]:
    """``"study · model"`` of each store, prefixed ``first:`` and ``second:`` when they read the
    same (two runs of one study on one model)."""
    labels = (describe(first), describe(second))
    if labels[0] == labels[1]:
        return f"first: {labels[0]}", f"second: {labels[1]}"
    return labels


def compare(first: xr.Dataset, second: xr.Dataset, **options: Any) -> list[Comparison]:
    """Every kind in either store: both summaries and, where rows have names, the difference.

    ``options`` go to every :meth:`~patchwork.analysis.reports.Report.summary`. The differences'
    ``attrs`` hold a ``title`` and a ``caption`` naming both stores and their samples.
    """
    ours = {report.kind: report for report in reports_for(first)}
    theirs = {report.kind: report for report in reports_for(second)}
    labels = comparison_labels(first, second)
    comparisons = []
    for kind in [*ours, *(kind for kind in theirs if kind not in ours)]:
        if kind not in ours or kind not in theirs:
            where = labels[0] if kind in ours else labels[1]
            comparisons.append(Comparison(kind, None, None, None, f"only in {where}"))
            continue
        summaries, notes = [], []
        for report, results, label in (
            (ours[kind], first, labels[0]),
            (theirs[kind], second, labels[1]),
        ):
            try:
                summaries.append(report.summary(results, **options))
            except PatchworkError as error:
                summaries.append(None)
                notes.append(f"no summary of {label}: {error}")
        difference = None
        keys = ours[kind].keys
        mine, other = summaries
        if keys is not None and mine is not None and other is not None:
            if set(keys) <= set(mine.columns) & set(other.columns):
                difference = summary_difference(mine, other, keys)
                difference.attrs.update(
                    {key: mine.attrs[key] for key in ("number_format",) if key in mine.attrs},
                    kind=kind,
                    title=f"{kind}: {labels[1]} − {labels[0]}",
                    caption="over the rows both hold; each side's estimator and samples as above",
                )
            else:  # one side lost arrays of the kind, and what is left is reported generically
                notes.append(f"no difference: the summaries do not both hold {', '.join(keys)}")
        comparisons.append(
            Comparison(kind, summaries[0], summaries[1], difference, "; ".join(notes))
        )
    return comparisons
