"""Per-layer profiles of a patching sweep and the noise floor they are judged against.

The mean normalized effect over samples has two estimators
(:class:`~patchwork.analysis.results.AnalysisSettings`):

- ``ratio_of_means`` (default): Σ(patched − conflict) / Σ(clean − conflict) of the logit
  difference over samples — the share of the total clean − conflict gap that patching restores.
  Each sample weighs by its gap, so a sample whose runs barely differ cannot swing the profile;
  bootstrapped over samples (numerator and denominator resampled together). Right when the
  question is "how much of the audio evidence comes back, overall".
- ``mean_of_ratios``: the mean of per-sample normalized effects. Every sample weighs the same,
  which is right when gaps are comparable and each clip is one vote; a small gap blows its
  ratio up (a gap of 1/15 of the median weighs 15 times a typical sample).

Both use only the samples :func:`~patchwork.analysis.results.sample_coverage` keeps: clean > 0 >
conflict and a gap of at least ``min_relative_gap`` of the median.
"""

from __future__ import annotations

import xarray as xr

from patchwork.analysis.bootstrap import (
    bootstrap_mean,
    bootstrap_weights,
    ratio_mean,
    resampled_means,
)
from patchwork.analysis.results import (
    AnalysisError,
    AnalysisSettings,
    select_metric,
    used_samples,
)


def estimator_terms(
    done: xr.Dataset, metric: str, estimator: str, variable: str = "effect"
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """Per-sample values whose mean (or, with the denominator, ratio of sums) is the estimate:
    for ``ratio_of_means`` of the normalized effect, patched − conflict and clean − conflict of the
    logit difference; otherwise the stored metric and no denominator."""
    if metric != "normalized_effect" or estimator != "ratio_of_means":
        return select_metric(done, metric, variable), None
    if "baseline" not in done.data_vars:
        raise AnalysisError(
            "the ratio-of-means estimator needs the stored baselines; use "
            "estimator='mean_of_ratios'"
        )
    runs = done["baseline"].sel(metric="logit_diff")
    source, target = runs.isel(run=0, drop=True), runs.isel(run=1, drop=True)
    patched = select_metric(done, "logit_diff", variable)
    return patched - target, source - target


#: Default floor of :func:`~patchwork.analysis.windows.locate`: a change of one tenth of the gap
#: between the clean and the conflict run (0.1 in normalized-effect units).
DEFAULT_FIXED_FLOOR = 0.1


def layer_profile(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    variable: str = "effect",
    estimator: str | None = None,
    min_relative_gap: float | None = None,
) -> xr.Dataset:
    """Mean effect per layer, position group and component, with bootstrap intervals.

    Only samples marked done, with a defined ``metric``, are used (see
    :func:`~patchwork.analysis.results.sample_coverage`). Resampling draws whole samples, so every
    cell of one resample uses the same samples. The normalized effect is averaged by
    ``estimator`` (see the module docstring).

    Args:
        results: a result dataset (see :mod:`patchwork.analysis.results`).
        metric: which stored metric to average.
        confidence: coverage of the intervals.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling; equal seeds give equal intervals.
        variable: ``"effect"``, or ``"null_effect"`` for the mismatched-patch profile.
        estimator: ``"ratio_of_means"`` or ``"mean_of_ratios"``; default: the stored study's
            ``analysis.estimator``, else ratio of means.
        min_relative_gap: see :func:`~patchwork.analysis.results.sample_coverage`.

    Returns:
        Dataset with dims ``(layer, position_group, component)`` holding ``mean``, ``ci_low``,
        ``ci_high`` (units of the metric) and ``n_samples``; attrs name the metric, estimator,
        study and model and hold the samples used of all
        (:meth:`~patchwork.analysis.results.SampleCoverage.attrs`).
    """
    settings = AnalysisSettings.from_results(results, estimator, min_relative_gap)
    done, coverage = used_samples(results, metric, settings)
    values, denominator = estimator_terms(done, metric, settings.estimator, variable)
    profile = bootstrap_mean(values, confidence, n_resamples, seed, denominator)
    profile = profile.transpose("layer", "position_group", "component")
    profile.attrs.update(
        {**_provenance(results), **coverage.attrs(), **settings.attrs()},
        metric=metric,
        variable=variable,
    )
    return profile


def mean_profile(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    variable: str = "effect",
    estimator: str | None = None,
    min_relative_gap: float | None = None,
) -> xr.DataArray:
    """The ``mean`` of :func:`layer_profile` without its bootstrap: the same samples, the same
    estimator, the same numbers (what ``patchwork run`` prints and the heatmap draws).

    Returns:
        DataArray with dims ``(layer, position_group, component)`` in units of the metric; attrs
        as :func:`layer_profile`'s.
    """
    settings = AnalysisSettings.from_results(results, estimator, min_relative_gap)
    done, coverage = used_samples(results, metric, settings)
    values, denominator = estimator_terms(done, metric, settings.estimator, variable)
    mean = ratio_mean(values, denominator).transpose("layer", "position_group", "component")
    mean.name = "mean"
    mean.attrs.update(
        {**_provenance(results), **coverage.attrs(), **settings.attrs()},
        metric=metric,
        variable=variable,
    )
    return mean


def estimator_label(metric: str, estimator: str) -> str:
    """How a profile of ``metric`` averages over samples, in words: e.g. ``"ratio of means
    Σ(patched − conflict) / Σ(clean − conflict) of the logit difference"``."""
    if metric != "normalized_effect":
        return f"mean {metric}"
    if estimator == "ratio_of_means":
        return (
            "normalized effect as a ratio of means, Σ(patched − conflict) / Σ(clean − conflict) "
            "of the logit difference,"
        )
    return "normalized effect as a mean of per-sample ratios"


def layer_changes(values: xr.DataArray) -> xr.DataArray:
    """Per-sample change of an effect between consecutive stored layers.

    Args:
        values: DataArray with dims including ``sample`` and ``layer`` (layers ascending).

    Returns:
        ``values[layer=l_k] − values[layer=l_(k−1)]`` labelled with the later layer ``l_k``: same
        dims, one layer fewer, units of ``values``. A change labelled ``l`` is what patching at
        ``l`` adds over patching at the layer stored before it.
    """
    if values.sizes.get("layer", 0) < 2:
        raise AnalysisError("a layer profile needs at least two layers to show a change")
    return values.sortby("layer").diff("layer", label="upper")


def noise_floor(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    quantile: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    estimator: str | None = None,
    min_relative_gap: float | None = None,
) -> xr.DataArray:
    """How large a change across layers the *mismatched* patches produce.

    Uses ``null_effect``: the same patches, taken from another sample's clean run. For each
    position group and component, the largest net change of the null's mean profile between any
    two layers (its range) is bootstrapped over samples; the floor is its ``quantile``. Pass
    ``floor="null"`` to :func:`~patchwork.analysis.windows.locate` to require a change larger than
    this.

    Caveat: where the clean run's content at the patched positions is the same for every sample
    (a blank picture at the video positions), the mismatched patch *is* the matched patch, and
    this floor swallows a real effect. That is why it is not the default floor.

    Args:
        results: a result dataset with a ``null_effect`` variable.
        metric: which stored metric.
        quantile: which quantile of the bootstrapped range, in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.
        estimator, min_relative_gap: as in :func:`layer_profile`.

    Returns:
        DataArray with dims ``(position_group, component)``, ≥ 0, in units of the metric.

    Raises:
        patchwork.analysis.AnalysisError: when the results hold no (or an all-NaN)
            ``null_effect``.
    """
    if "null_effect" not in results.data_vars:
        raise AnalysisError(
            "the store has no null_effect (patches from mismatched samples); "
            f"pass a fixed floor instead (e.g. floor={DEFAULT_FIXED_FLOOR})"
        )
    if not 0.0 < quantile < 1.0:
        raise AnalysisError(f"quantile must lie strictly between 0 and 1; got {quantile}")
    settings = AnalysisSettings.from_results(results, estimator, min_relative_gap)
    done, _ = used_samples(results, metric, settings)
    null_values, denominator = estimator_terms(done, metric, settings.estimator, "null_effect")
    if not bool(null_values.notnull().any()):
        raise AnalysisError(
            "the store's null_effect is empty (the study ran without mismatched patches); "
            f"pass a fixed floor instead (e.g. floor={DEFAULT_FIXED_FLOOR})"
        )
    weights = bootstrap_weights(done.sizes["sample"], n_resamples, seed)
    profiles = resampled_means(null_values, weights, denominator)
    spread = profiles.max("layer", skipna=True) - profiles.min("layer", skipna=True)
    floor = spread.quantile(quantile, dim="resample", skipna=True).drop_vars("quantile")
    floor.name = "floor"
    floor.attrs.update(metric=metric, quantile=quantile, source="null")
    return floor.transpose("position_group", "component")


def _provenance(results: xr.Dataset) -> dict[str, str]:
    keys = ("study_name", "model_name")
    return {key: str(results.attrs[key]) for key in keys if key in results.attrs}
