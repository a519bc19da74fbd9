"""Activation patching below the mean: the effect per sample and per category pair.

The layer profile averages over samples; these views undo that. :func:`sample_effects` keeps every
used sample's own effect, :func:`pair_profile` averages within each (audio answer, picture's
answer) category pair with the profile's estimator, so a pair that behaves unlike the rest shows.
Both use exactly the samples the profile, the heatmap and ``locate`` use
(:func:`~patchwork.analysis.results.used_samples`). The figures (:func:`plot_samples`,
:func:`plot_pairs`) are heatmaps like :func:`~patchwork.analysis.plots.plot_heatmap`, one panel
per position group, for one component.
"""

from __future__ import annotations

import warnings

import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from patchwork.analysis.bootstrap import ratio_mean
from patchwork.analysis.plots import window_layers
from patchwork.analysis.profile import _provenance, estimator_terms
from patchwork.analysis.results import (
    AnalysisError,
    AnalysisSettings,
    SampleCoverage,
    check_choice,
    describe,
    select_metric,
    used_samples,
)


def _used(
    results: xr.Dataset,
    metric: str,
    component: str,
    estimator: str | None,
    min_relative_gap: float | None,
) -> tuple[xr.Dataset, AnalysisSettings, dict]:
    check_choice("component", component, [str(c) for c in results["component"].values])
    settings = AnalysisSettings.from_results(results, estimator, min_relative_gap)
    done, coverage = used_samples(results, metric, settings)
    attrs = {**_provenance(results), **coverage.attrs(), **settings.attrs(), "metric": metric}
    return done, settings, {**attrs, "component": component}


def sample_effects(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    component: str = "residual",
    estimator: str | None = None,
    min_relative_gap: float | None = None,
) -> xr.DataArray:
    """Each used sample's own ``metric`` at ``component``.

    Returns:
        DataArray (sample, layer, position_group) in units of the metric, samples ordered by
        category pair (audio answer, then picture's answer); attrs name the samples used of all.
    """
    done, _, attrs = _used(results, metric, component, estimator, min_relative_gap)
    values = select_metric(done, metric).sel(component=component, drop=True)
    order = np.lexsort((_labels(done, "visual_answer"), _labels(done, "audio_answer")))
    values = values.isel(sample=order).transpose("sample", "layer", "position_group")
    values.attrs.update(attrs)
    return values


def pair_profile(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    component: str = "residual",
    estimator: str | None = None,
    min_relative_gap: float | None = None,
) -> xr.DataArray:
    """The profile's estimator within each (audio answer, picture's answer) pair.

    With the ratio of means, the overall profile is the gap-weighted mean of these (each pair
    weighs by its Σ(clean − conflict)); with a plain mean, the sample-weighted mean.

    Returns:
        DataArray (pair, layer, position_group), pairs labelled ``"croak / tweet"`` (audio answer
        / picture's answer) with their sample count in the ``n_samples`` coordinate.
    """
    done, settings, attrs = _used(results, metric, component, estimator, min_relative_gap)
    if "audio_answer" not in done.coords or "visual_answer" not in done.coords:
        raise AnalysisError("the store has no per-sample audio_answer and visual_answer labels")
    values, denominator = estimator_terms(done, metric, settings.estimator)
    values = values.sel(component=component, drop=True)
    pairs = np.array(
        [
            f"{audio} / {visual}"
            for audio, visual in zip(
                _labels(done, "audio_answer"), _labels(done, "visual_answer"), strict=True
            )
        ]
    )
    profiles, counts = [], []
    names = sorted(set(pairs))
    for name in names:
        chosen = np.flatnonzero(pairs == name)
        below = None if denominator is None else denominator.isel(sample=chosen)
        profiles.append(ratio_mean(values.isel(sample=chosen), below))
        counts.append(len(chosen))
    profile = xr.concat(profiles, dim="pair").assign_coords(pair=names, n_samples=("pair", counts))
    profile = profile.transpose("pair", "layer", "position_group")
    profile.attrs.update(attrs)
    return profile


def _labels(done: xr.Dataset, name: str) -> np.ndarray:
    if name not in done.coords:
        return np.full(done.sizes["sample"], "", dtype=object)
    return np.array([str(label) for label in done[name].values], dtype=object)


def _panels(
    values: xr.DataArray,
    rows: list[str],
    what: str,
    row_label: str,
    located: xr.Dataset | None,
) -> Figure:
    groups = [str(group) for group in values["position_group"].values]
    layers = values["layer"].values
    limit = max(1.0, float(np.nanmax(np.abs(values.values), initial=0.0)))
    height = min(0.16 * len(rows) + 1.8, 30.0)
    figure = Figure(figsize=(2.6 + 0.45 * len(layers) * len(groups), height), layout="constrained")
    axes = figure.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=True):
        grid = values.sel(position_group=group).values
        with warnings.catch_warnings():
            # seaborn 0.13 calls Colormap.set_bad, which matplotlib ≥ 3.11 marks as pending removal.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(
                grid,
                ax=ax,
                cmap="vlag",
                center=0.0,
                vmin=-limit,
                vmax=limit,
                xticklabels=[str(layer) for layer in layers],
                yticklabels=rows,
                cbar=ax is axes[-1],
                cbar_kws={"label": str(values.attrs.get("metric", "")).replace("_", " ")},
            )
        # the columns of each located window, every row
        for window in window_layers(located, str(values.attrs.get("component")), group):
            first, last = (int(np.searchsorted(layers, layer)) for layer in window)
            ax.add_patch(
                Rectangle((first, 0), last - first + 1, len(rows), fill=False, lw=2, clip_on=False)
            )
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("layer")
        ax.tick_params(axis="y", labelsize=6 if len(rows) > 40 else 8)
    axes[0].set_ylabel(row_label)
    coverage = SampleCoverage.from_attrs(values.attrs)
    subtitle = describe(xr.Dataset(attrs=values.attrs))
    if coverage is not None:
        subtitle += f", {coverage.short()}"
    figure.suptitle(f"{what}, {values.attrs.get('component')}\n{subtitle}")
    return figure


def plot_samples(values: xr.DataArray, located: xr.Dataset | None = None) -> Figure:
    """Heatmaps of :func:`sample_effects`: one row per used sample (labelled ``id: audio /
    picture``), one panel per position group; ``located`` windows (from
    :func:`~patchwork.analysis.locate`) are outlined over every row."""
    rows = [str(sample) for sample in values["sample"].values]
    if "audio_answer" in values.coords and "visual_answer" in values.coords:
        rows = [
            f"{sample}: {audio} / {visual}"
            for sample, audio, visual in zip(
                rows, values["audio_answer"].values, values["visual_answer"].values, strict=True
            )
        ]
    what = "Effect per sample (audio answer / picture's answer)"
    return _panels(values, rows, what, "sample", located)


def plot_pairs(profile: xr.DataArray, located: xr.Dataset | None = None) -> Figure:
    """Heatmaps of :func:`pair_profile`: one row per category pair with its sample count, one
    panel per position group; ``located`` windows are outlined over every row."""
    rows = [
        f"{pair} (n = {count})"
        for pair, count in zip(profile["pair"].values, profile["n_samples"].values, strict=True)
    ]
    estimator = str(profile.attrs.get("estimator", "mean")).replace("_", " ")
    if profile.attrs.get("metric") != "normalized_effect":
        estimator = "mean"
    what = f"Effect per category pair ({estimator} within each pair)"
    return _panels(profile, rows, what, "audio answer / picture's answer", located)
