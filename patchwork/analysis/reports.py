"""One report per study method kind: what a user reads of that kind's arrays after a run.

A report is a plug-in with a documented contract, as xarray's backends are (:class:`Report`: the
variables that show the kind is in a store, a required :meth:`~Report.summary`, optional
:meth:`~Report.figures`, and whether ``patchwork locate`` applies). Reports are found through the
``patchwork.reports`` entry-point group (:mod:`patchwork.plugins`); patchwork registers its own
(:mod:`patchwork.analysis.patching_report`, :mod:`patchwork.analysis.method_reports`) there
exactly as another package would. A kind in a store without a registered report gets
:class:`GenericReport`: the mean of each of its variables.

:func:`reports_for` matches reports to a store by its variables; nothing here imports torch, so
``patchwork status``, ``plot`` and ``locate`` stay light. ``patchwork run`` and ``status`` print
every present kind's summary, ``patchwork plot`` writes every present kind's figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from patchwork import plugins
from patchwork.analysis.results import (
    UNFINISHED,
    SampleCoverage,
    done_mask,
    few_samples_note,
)

#: Store variables that belong to no method: the per-sample done mark and unit checksums.
BOOKKEEPING = frozenset({"done", "checksum"})


class Report:
    """The summary and figures of one method kind's arrays.

    A subclass sets :attr:`kind` and :attr:`variables` and implements :meth:`summary`; it may
    implement :meth:`figures` and name further variables of its kind in :attr:`optional`. Options
    a report does not use (``patchwork plot``'s ``metric``, ``seed``, ``n_resamples`` …) arrive
    as keywords and are ignored.
    """

    #: The study ``kind`` whose arrays this report reads (the entry point's name).
    kind: str = ""
    #: Store variables that show the kind is present: all of them must be in the store.
    variables: tuple[str, ...] = ()
    #: Variables of the kind that some studies of it store and some do not.
    optional: tuple[str, ...] = ()
    #: Whether :func:`~patchwork.analysis.locate` reads this kind's arrays.
    locate_applies: ClassVar[bool] = False
    #: One line: what to read instead of ``patchwork locate`` for this kind.
    instead: str = "read its summary (`patchwork status STORE`) and figures (`patchwork plot`)"
    #: Summary columns that name a row, so that two stores' summaries subtract row by row
    #: (:mod:`patchwork.analysis.compare`); None for a ranking, which is compared side by side.
    keys: tuple[str, ...] | None = None

    def present(self, results: xr.Dataset) -> bool:
        """Whether ``results`` hold this kind's arrays."""
        return bool(self.variables) and all(name in results.data_vars for name in self.variables)

    def claims(self) -> frozenset[str]:
        """Every variable this report accounts for."""
        return frozenset(self.variables) | frozenset(self.optional)

    def summary(self, results: xr.Dataset, **options: Any) -> pd.DataFrame:
        """A small table to read after a run. Its ``attrs`` hold ``kind``, ``title``,
        ``estimator``, ``n_used``, ``n_total`` and ``caption`` (a sentence naming the estimator
        and the samples used of all; see :func:`describe_summary`)."""
        raise NotImplementedError(f"the {self.kind} report has no summary")

    def figures(self, results: xr.Dataset, **options: Any) -> dict[str, Figure]:
        """File stem → figure; none by default."""
        return {}

    def locate_line(self) -> str:
        """The line ``patchwork locate`` prints for this kind when it does not apply."""
        return f"locate does not apply to {self.kind}: {self.instead}"


def describe_summary(
    frame: pd.DataFrame,
    kind: str,
    title: str,
    estimator: str,
    used: int,
    total: int,
    excluded: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Set ``frame.attrs`` as :meth:`Report.summary` promises and return ``frame``.

    The caption reads e.g. ``"ratio of means over 61 of 64 samples; 3 excluded, conflict run …:
    s00039, s00051, s00056"``, and flags fewer than
    :data:`~patchwork.analysis.results.MIN_SAMPLES` samples.
    """
    caption = f"{estimator} over {used} of {total} samples"
    for reason, ids in (excluded or {}).items():
        if ids:
            shown = ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
            caption += f"; {len(ids)} {reason}: {shown}"
    if few_samples_note(used):
        caption += f"; {few_samples_note(used)}"
    frame.attrs.update(
        kind=kind, title=title, estimator=estimator, n_used=used, n_total=total, caption=caption
    )
    return frame


def coverage_excluded(coverage: SampleCoverage) -> dict[str, tuple[str, ...]]:
    """The excluded samples of ``coverage`` by reason, unfinished ones named ``"unfinished"``
    and listed last."""
    reasons = {
        f"excluded, {why}": ids for why, ids in coverage.excluded.items() if why != UNFINISHED
    }
    if coverage.excluded.get(UNFINISHED):
        reasons[UNFINISHED] = coverage.excluded[UNFINISHED]
    return reasons


def unfinished(results: xr.Dataset) -> dict[str, tuple[str, ...]]:
    """``{"unfinished": ids}`` of the samples not marked done ({} when all are)."""
    ids = results["sample"].values[~done_mask(results)] if "sample" in results.coords else []
    return {UNFINISHED: tuple(map(str, ids))} if len(ids) else {}


class GenericReport(Report):
    """The fallback for a kind without a registered report: the mean of each of its variables
    over the samples marked done (NaN skipped); no figures; locate does not apply."""

    keys = ("variable",)

    def __init__(self, kind: str, variables: Sequence[str]) -> None:
        self.kind = kind
        self.variables = tuple(variables)

    def summary(self, results: xr.Dataset, **options: Any) -> pd.DataFrame:
        done = results.isel(sample=done_mask(results)) if "sample" in results.dims else results
        rows = []
        for name in self.variables:
            values = done[name]
            numeric = values.dtype.kind in "biuf"
            mean = float(values.astype("float64").mean(skipna=True)) if numeric else np.nan
            rows.append(
                {
                    "variable": name,
                    "dims": ", ".join(map(str, values.dims)),
                    "mean": mean,
                    "units": str(values.attrs.get("units", "")),
                    "long_name": str(values.attrs.get("long_name", "")),
                }
            )
        frame = pd.DataFrame(rows, columns=["variable", "dims", "mean", "units", "long_name"])
        used = int(done.sizes.get("sample", 0))
        return describe_summary(
            frame,
            self.kind,
            f"{self.kind}: no report is installed for this kind; the mean of each variable",
            "mean over every cell (NaN skipped)",
            used,
            int(results.sizes.get("sample", 0)),
            unfinished(results),
        )


def registered_reports() -> dict[str, type[Report]]:
    """Every installed report by kind (entry points ``patchwork.reports``; imports them)."""
    return {name: plugins.load(plugins.REPORTS, name) for name in plugins.names(plugins.REPORTS)}


def study_kinds(results: xr.Dataset) -> list[str]:
    """The interventions' kinds of the study stored with ``results``, in study order ([] when the
    store holds no study text)."""
    text = results.attrs.get("study")
    if not isinstance(text, str):
        return []
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        study = YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        return []
    entries = study.get("interventions") if isinstance(study, dict) else None
    if not isinstance(entries, list):
        return []
    return [str(entry["kind"]) for entry in entries if isinstance(entry, dict) and "kind" in entry]


def reports_for(results: xr.Dataset) -> list[Report]:
    """The reports of the kinds present in ``results``, in the study's order.

    A report is present when all its :attr:`Report.variables` are stored. Variables no present
    report claims (other than :data:`BOOKKEEPING`) belong to kinds without a report: they get one
    :class:`GenericReport`, named after the study's kinds that no report matched (or
    ``"unreported"`` when the store holds no study text).
    """
    found = [report for report in map(_instance, registered_reports().values())]
    found = [report for report in found if report.present(results)]
    claimed = frozenset().union(BOOKKEEPING, *(report.claims() for report in found))
    left = [str(name) for name in results.data_vars if name not in claimed]
    kinds = study_kinds(results)
    if left:
        matched = {report.kind for report in found}
        unmatched = [kind for kind in kinds if kind not in matched]
        found.append(GenericReport(", ".join(unmatched) or "unreported", left))
    order = {kind: index for index, kind in enumerate(kinds)}
    return sorted(found, key=lambda report: order.get(report.kind, len(order)))


def _instance(report: type[Report] | Report) -> Report:
    return report() if isinstance(report, type) else report
