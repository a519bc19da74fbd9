"""What analysis expects of a result store, and the checks that say so early.

A result store opened with :func:`patchwork.open_results` is an :class:`xarray.Dataset` holding

``effect``
    ``(sample, layer, position_group, component, metric)`` float, NaN where not computed.
``baseline``
    ``(sample, run, metric)``: the unpatched ``clean`` and ``conflict`` runs.
``null_effect`` *(optional)*
    like ``effect``, but each patch taken from a *mismatched* sample's clean run.
``done``
    ``(sample,)`` bool: samples whose results are complete.

Analysis reads only samples marked done, so a store still being filled can be analysed, and of
those only samples whose metric is defined; :func:`sample_coverage` says how many were used of how
many, and which were left out and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from patchwork.errors import PatchworkError

EFFECT_DIMS = ("sample", "layer", "position_group", "component", "metric")
METRICS = ("logit_diff", "audio_probability", "normalized_effect")

METRIC_LABELS = {
    "normalized_effect": "normalized effect (1 = audio answer restored, 0 = no change)",
    "logit_diff": "logit difference, audio − visual answer (nats)",
    "audio_probability": "probability of the audio answer",
}


#: Smallest gap between the clean and the conflict logit difference with a defined normalized
#: effect: :data:`patchwork.patching.metrics.MIN_GAP` (copied, since that module needs torch).
MIN_GAP = 1e-6

#: Reason of :func:`sample_coverage` for samples not marked done.
UNFINISHED = "unfinished"
#: Reason of :func:`sample_coverage`: the normalized effect's sign would be meaningless.
WRONG_DIRECTION = "clean run not preferring the audio answer, or conflict run already preferring it"
#: Reason of :func:`sample_coverage`: one such sample would outweigh many typical ones.
GAP_TOO_SMALL = "clean − conflict gap below min_relative_gap × the median gap"

#: Estimators of a mean normalized effect over samples (see :mod:`patchwork.analysis.profile`).
ESTIMATORS = ("ratio_of_means", "mean_of_ratios")

#: Fewer samples than this give bootstrap intervals (and means) too rough to read at their stated
#: coverage; ``locate``, its table and the method summaries flag them.
MIN_SAMPLES = 8


def few_samples_note(n_samples: int) -> str:
    """``""``, or a note that ``n_samples`` is below :data:`MIN_SAMPLES`."""
    if n_samples >= MIN_SAMPLES:
        return ""
    return f"only {n_samples} samples (fewer than {MIN_SAMPLES}): intervals and means are rough"


@dataclass(frozen=True)
class AnalysisSettings:
    """How normalized-effect analyses read a store: the estimator and the gap threshold.

    Defaults are the study's ``analysis`` section stored with the results
    (:meth:`from_results`), else :class:`patchwork.study.schema.AnalysisSpec`'s.
    """

    estimator: str = "ratio_of_means"
    min_relative_gap: float = 0.05

    @classmethod
    def from_results(
        cls,
        results: xr.Dataset,
        estimator: str | None = None,
        min_relative_gap: float | None = None,
    ) -> AnalysisSettings:
        """The settings stored with ``results``, with the given ones over them."""
        stored = _stored_analysis(results)
        settings = cls(
            estimator=estimator or stored.get("estimator", cls.estimator),
            min_relative_gap=float(
                stored.get("min_relative_gap", cls.min_relative_gap)
                if min_relative_gap is None
                else min_relative_gap
            ),
        )
        check_choice("estimator", settings.estimator, ESTIMATORS)
        if not 0.0 <= settings.min_relative_gap < 1.0:
            raise AnalysisError(
                f"min_relative_gap must lie in [0, 1); got {settings.min_relative_gap}"
            )
        return settings

    def attrs(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "min_relative_gap": self.min_relative_gap}


def _stored_analysis(results: xr.Dataset) -> dict[str, Any]:
    """The ``analysis`` section of the study text stored with ``results`` ({} when none)."""
    text = results.attrs.get("study")
    if not isinstance(text, str) or "analysis" not in text:
        return {}
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        study = YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        return {}
    section = study.get("analysis") if isinstance(study, dict) else None
    return dict(section) if isinstance(section, dict) else {}


class AnalysisError(PatchworkError):
    """A result dataset lacks what an analysis needs, or an argument does not fit it."""


def check_results(results: xr.Dataset, variable: str = "effect") -> None:
    """Raise :class:`AnalysisError` unless ``results[variable]`` has the effect dimensions.

    Args:
        results: a result dataset (see the module docstring).
        variable: ``"effect"`` or ``"null_effect"``.
    """
    if not isinstance(results, xr.Dataset):
        raise AnalysisError(
            f"expected an xarray.Dataset of patching results, got {type(results).__name__}"
        )
    if variable not in results.data_vars:
        present = ", ".join(sorted(map(str, results.data_vars))) or "nothing"
        raise AnalysisError(
            f"the results have no {variable!r} variable (they hold: {present}); "
            "open a store written by `patchwork run`"
        )
    missing = [dim for dim in EFFECT_DIMS if dim not in results[variable].dims]
    if missing:
        raise AnalysisError(
            f"{variable!r} lacks the dimension(s) {', '.join(missing)}; "
            f"expected {', '.join(EFFECT_DIMS)}, got {', '.join(map(str, results[variable].dims))}"
        )


def check_choice(name: str, value: str, allowed: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`AnalysisError` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise AnalysisError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def done_samples(results: xr.Dataset) -> xr.Dataset:
    """The samples of ``results`` marked done (all of them when there is no ``done`` mark).

    Returns:
        ``results`` restricted along ``sample``; other dimensions are untouched.

    Raises:
        patchwork.analysis.AnalysisError: when no sample is done yet.
    """
    check_results(results)
    if "done" in results.data_vars:
        results = results.isel(sample=results["done"].values.astype(bool))
    if results.sizes["sample"] == 0:
        raise AnalysisError("no sample in the store is marked done yet: nothing to analyse")
    return results


def select_metric(results: xr.Dataset, metric: str, variable: str = "effect") -> xr.DataArray:
    """``results[variable]`` at one metric, as float64 with dims (sample, layer, position_group,
    component); a ``null_effect`` with several noise-floor partners per sample is averaged over
    them (NaN where a sample has none).

    Raises:
        patchwork.analysis.AnalysisError: when the variable is absent or the metric is not stored.
    """
    check_results(results, variable)
    stored = [str(m) for m in results[variable]["metric"].values]
    check_choice("metric", metric, stored)
    values = results[variable].sel(metric=metric, drop=True).astype("float64")
    if "partner" in values.dims:
        count = values.notnull().sum("partner")
        values = (values.sum("partner", skipna=True) / count).where(count > 0)
    return values.transpose("sample", "layer", "position_group", "component").compute()


def describe(results: xr.Dataset) -> str:
    """A short title naming the study and the model, e.g. ``"quickstart · testbed"``."""
    study = results.attrs.get("study_name", "unnamed study")
    model = results.attrs.get("model_name")
    return f"{study} · {model}" if model else str(study)


@dataclass(frozen=True)
class SampleCoverage:
    """How many samples an analysis used, of how many stored, and which it left out and why.

    Attributes:
        used: samples analysed.
        total: samples in the store.
        excluded: reason → ids of the samples left out for it (every sample at most once).
    """

    used: int
    total: int
    excluded: Mapping[str, tuple[str, ...]]

    @property
    def partial(self) -> bool:
        """Whether some samples are not finished yet."""
        return bool(self.excluded.get(UNFINISHED))

    def describe(self, reasons: bool = True) -> str:
        """E.g. ``"16 of 64 samples (partial: 48 unfinished)"`` or ``"64 of 64 samples"``.

        Args:
            reasons: name every reason with its count; when False, reasons other than unfinished
                are counted together, e.g. ``"15 of 64 samples (partial: 48 unfinished; 1
                excluded)"``.
        """
        unfinished = len(self.excluded.get(UNFINISHED, ()))
        others = {why: len(ids) for why, ids in self.excluded.items() if why != UNFINISHED and ids}
        if reasons:
            parts = [f"{count} {why}" for why, count in others.items()]
        else:
            parts = [f"{sum(others.values())} excluded"] if others else []
        if unfinished:
            parts.insert(0, f"partial: {unfinished} unfinished")
        elif parts and reasons:
            parts[0] = f"excluded: {parts[0]}"
        label = f"{self.used} of {self.total} samples"
        return f"{label} ({', '.join(parts)})" if parts else label

    def short(self) -> str:
        """For figures: ``"n = 16 of 64 (partial)"``, ``"n = 63 of 64 (1 excluded)"``, or
        ``"n = 64"`` when every sample is used."""
        if self.used == self.total:
            return f"n = {self.used}"
        others = sum(len(ids) for reason, ids in self.excluded.items() if reason != UNFINISHED)
        tags = ["partial"] * self.partial + [f"{others} excluded"] * bool(others)
        return f"n = {self.used} of {self.total} ({', '.join(tags)})"

    def __str__(self) -> str:
        return self.describe()

    def attrs(self) -> dict[str, Any]:
        """As dataset attributes: ``n_used``, ``n_total`` and ``excluded_samples`` (JSON text of
        reason → ids, so that the attributes also survive netCDF)."""
        excluded = {reason: list(ids) for reason, ids in self.excluded.items()}
        return {
            "n_used": self.used,
            "n_total": self.total,
            "excluded_samples": json.dumps(excluded),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> SampleCoverage | None:
        """The coverage stored by :meth:`attrs`, or None when ``attrs`` hold none."""
        if "n_used" not in attrs or "n_total" not in attrs:
            return None
        excluded = json.loads(attrs.get("excluded_samples", "{}"))
        return cls(
            int(attrs["n_used"]),
            int(attrs["n_total"]),
            {str(reason): tuple(ids) for reason, ids in excluded.items()},
        )


ExclusionRule = Callable[[xr.Dataset, str, AnalysisSettings], tuple[str, np.ndarray]]


def _baselines(done: xr.Dataset, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(source, target) logit differences per sample — the runs in the order the method stored
    them (from, into), e.g. clean and conflict — when ``metric`` is the normalized effect and
    the store holds baselines; None otherwise (the baseline rules then exclude nothing)."""
    if metric != "normalized_effect" or "baseline" not in done.data_vars:
        return None
    runs = done["baseline"].sel(metric="logit_diff")
    return runs.isel(run=0).values, runs.isel(run=1).values


def _wrong_direction(
    done: xr.Dataset, metric: str, settings: AnalysisSettings
) -> tuple[str, np.ndarray]:
    baselines = _baselines(done, metric)
    if baselines is None:
        return WRONG_DIRECTION, np.zeros(done.sizes["sample"], dtype=bool)
    source, target = baselines
    with np.errstate(invalid="ignore"):
        return WRONG_DIRECTION, np.isfinite(source - target) & ~((target < 0) & (0 < source))


def _gap_too_small(
    done: xr.Dataset, metric: str, settings: AnalysisSettings
) -> tuple[str, np.ndarray]:
    baselines = _baselines(done, metric)
    if baselines is None:
        return GAP_TOO_SMALL, np.zeros(done.sizes["sample"], dtype=bool)
    gap = np.abs(baselines[0] - baselines[1])
    finite = gap[np.isfinite(gap)]
    threshold = max(
        MIN_GAP, settings.min_relative_gap * float(np.median(finite)) if finite.size else 0.0
    )
    return GAP_TOO_SMALL, np.isfinite(gap) & (gap < threshold)


def _no_values(done: xr.Dataset, metric: str, settings: AnalysisSettings) -> tuple[str, np.ndarray]:
    stored = select_metric(done, metric).notnull().any(("layer", "position_group", "component"))
    return f"without a {metric} value", ~stored.values


#: The checks of :func:`sample_coverage` after "unfinished", in order. Each maps the done samples
#: left by the checks before it, a metric and the settings to (reason, mask of the samples it
#: excludes); a sample takes the first reason it meets. The gap threshold is relative to the
#: median gap of the samples whose baselines point the right way.
EXCLUSION_RULES: tuple[ExclusionRule, ...] = (_wrong_direction, _gap_too_small, _no_values)


def _excluded_masks(
    results: xr.Dataset, metric: str, settings: AnalysisSettings
) -> dict[str, np.ndarray]:
    """Reason → mask over all samples of ``results``; masks are disjoint."""
    check_results(results)
    finished = np.ones(results.sizes["sample"], dtype=bool)
    if "done" in results.data_vars:
        finished = results["done"].values.astype(bool)
    masks = {UNFINISHED: ~finished}
    left = finished.copy()
    for rule in EXCLUSION_RULES:
        reason, mask = rule(results.isel(sample=left), metric, settings)
        full = np.zeros_like(left)
        full[np.flatnonzero(left)[mask]] = True
        masks[reason] = masks.get(reason, np.zeros_like(left)) | full
        left &= ~full
    return masks


def default_metric(results: xr.Dataset) -> tuple[str, str]:
    """The metric an activation-patching analysis reads when none is named, and why.

    The normalized effect, unless no done sample defines it (every clean run fails to prefer the
    audio answer, or every conflict run already does, as on a random-init model): then the logit
    difference, with a note saying so.

    Returns:
        ``(metric, note)``; ``note`` is ``""`` for the normalized effect.
    """
    coverage = sample_coverage(results, "normalized_effect")
    if coverage.used > 0 or not np.asarray(done_mask(results)).any():
        return "normalized_effect", ""
    return "logit_diff", f"no sample defines the normalized effect ({coverage}): logit_diff shown"


def done_mask(results: xr.Dataset) -> np.ndarray:
    """Which samples are marked done (all of them without a ``done`` mark)."""
    if "done" not in results.data_vars:
        return np.ones(results.sizes.get("sample", 0), dtype=bool)
    return results["done"].values.astype(bool)


def sample_coverage(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    min_relative_gap: float | None = None,
) -> SampleCoverage:
    """Which samples an analysis of ``metric`` uses, and why it leaves the others out.

    Left out are samples not marked done (``"unfinished"``); for the normalized effect, done
    samples whose clean run does not prefer the audio answer or whose conflict run already does
    (:data:`WRONG_DIRECTION`: the ratio's sign means nothing there) and samples whose clean −
    conflict gap is below ``min_relative_gap`` × the median gap (:data:`GAP_TOO_SMALL`: one such
    sample would outweigh many); and done samples with no value of ``metric`` at all; see
    :data:`EXCLUSION_RULES`. Reasons that exclude nothing are not listed.

    Args:
        results: a result dataset.
        metric: the metric analysed.
        min_relative_gap: default: the stored study's ``analysis.min_relative_gap``, else 0.05.

    Raises:
        patchwork.analysis.AnalysisError: when ``results`` are no result dataset or lack
            ``metric``.
    """
    settings = AnalysisSettings.from_results(results, min_relative_gap=min_relative_gap)
    return _coverage(results, _excluded_masks(results, metric, settings))


def _coverage(results: xr.Dataset, masks: dict[str, np.ndarray]) -> SampleCoverage:
    ids = [str(sample) for sample in results["sample"].values]
    excluded = {
        reason: tuple(ids[i] for i in np.flatnonzero(mask))
        for reason, mask in masks.items()
        if mask.any()
    }
    total = results.sizes["sample"]
    return SampleCoverage(total - sum(map(len, excluded.values())), total, excluded)


def used_samples(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    settings: AnalysisSettings | None = None,
) -> tuple[xr.Dataset, SampleCoverage]:
    """The samples of ``results`` that an analysis of ``metric`` uses, and their coverage
    (``settings``: default :meth:`AnalysisSettings.from_results`).

    Returns:
        ``results`` restricted along ``sample`` to the used samples, and
        :func:`sample_coverage` of ``results``.

    Raises:
        patchwork.analysis.AnalysisError: when no sample is done, or none of them is usable.
    """
    done_samples(results)
    settings = settings or AnalysisSettings.from_results(results)
    masks = _excluded_masks(results, metric, settings)
    coverage = _coverage(results, masks)
    if coverage.used == 0:
        raise AnalysisError(f"no done sample has a usable {metric}: {coverage}")
    return results.isel(sample=~np.logical_or.reduce(list(masks.values()))), coverage


@dataclass(frozen=True)
class BaselineReport:
    """Do the unpatched runs show the behaviour a study looks for? Over the samples marked done:
    how many clean runs prefer the audio answer (logit difference > 0) and how many conflict runs
    prefer the picture's (< 0), and the ids of the samples that do not."""

    done: int
    clean_prefers_audio: int
    conflict_prefers_picture: int
    flagged: Mapping[str, tuple[str, ...]]

    def describe(self) -> str:
        """E.g. ``"clean runs prefer the audio answer in 61/64 samples, conflict runs the
        picture's in 58/64"``."""
        return (
            f"clean runs prefer the audio answer in {self.clean_prefers_audio}/{self.done} "
            f"samples, conflict runs the picture's in {self.conflict_prefers_picture}/{self.done}"
        )

    def flagged_lines(self, shown: int = 3) -> list[str]:
        """One line per flag that holds for some sample: the flag, the first ids, the count."""
        return [
            f"flagged, {flag}: {', '.join(ids[:shown])}{', …' if len(ids) > shown else ''} "
            f"({len(ids)})"
            for flag, ids in self.flagged.items()
            if ids
        ]


CLEAN_NOT_AUDIO = "clean run does not prefer the audio answer"
CONFLICT_NOT_PICTURE = "conflict run does not prefer the picture's answer"


def baseline_report(results: xr.Dataset) -> BaselineReport | None:
    """:class:`BaselineReport` of the stored ``baseline`` (None when the store has none or no
    sample is done). Flagged samples are still analysed; the report says which they are."""
    if "baseline" not in results.data_vars:
        return None
    done = results["done"].values.astype(bool) if "done" in results else None
    finished = results if done is None else results.isel(sample=done)
    if finished.sizes["sample"] == 0:
        return None
    difference = finished["baseline"].sel(metric="logit_diff")
    clean = difference.sel(run="clean").values
    conflict = difference.sel(run="conflict").values
    ids = np.array([str(sample) for sample in finished["sample"].values])
    return BaselineReport(
        done=len(ids),
        clean_prefers_audio=int((clean > 0).sum()),
        conflict_prefers_picture=int((conflict < 0).sum()),
        flagged={
            CLEAN_NOT_AUDIO: tuple(ids[~(clean > 0)]),
            CONFLICT_NOT_PICTURE: tuple(ids[~(conflict < 0)]),
        },
    )
