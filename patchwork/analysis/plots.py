"""Figures of a patching sweep: heatmaps, per-layer profiles with intervals, small multiples.

Every function takes the output of :func:`~patchwork.analysis.layer_profile` (and optionally of
:func:`~patchwork.analysis.locate`); titles name the study, the model and the samples used
(``n = 16 of 64 (partial)``, see :func:`~patchwork.analysis.sample_coverage`). Each returns a
:class:`matplotlib.figure.Figure` built without pyplot, so nothing depends on the interactive
backend; :func:`save_figure` writes PNG and SVG.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from patchwork.analysis.results import (
    METRIC_LABELS,
    AnalysisError,
    SampleCoverage,
    check_choice,
    describe,
)
from patchwork.analysis.windows import located_spans

#: Formats :func:`save_figure` writes.
FIGURE_FORMATS = ("png", "svg", "pdf")
#: Every position group keeps its colour in every figure.
GROUP_ORDER = ("audio", "video", "image", "text", "answer", "text_and_answer", "all")
_COLOURBLIND = sns.color_palette("colorblind", 10)
_PALETTE = dict(zip(GROUP_ORDER, [_COLOURBLIND[i] for i in (0, 1, 5, 7, 2, 3, 4)], strict=True))


def _title(profile: xr.Dataset, what: str) -> str:
    """``what``, then the study and model and the samples used, e.g. ``n = 16 of 64 (partial)``."""
    subtitle = describe(xr.Dataset(attrs=profile.attrs))
    coverage = SampleCoverage.from_attrs(profile.attrs)
    if profile.attrs.get("metric", "normalized_effect") == "normalized_effect":
        subtitle += f", {str(profile.attrs.get('estimator', 'mean')).replace('_', ' ')}"
    return f"{what}\n{subtitle}" + ("" if coverage is None else f", {coverage.short()}")


def _metric_label(profile: xr.Dataset, wrap: bool = False) -> str:
    metric = str(profile.attrs.get("metric", "normalized_effect"))
    label = METRIC_LABELS.get(metric, metric)
    return label.replace(" (", "\n(", 1) if wrap else label


def _components(profile: xr.Dataset, components: Sequence[str] | None) -> list[str]:
    stored = [str(c) for c in profile["component"].values]
    if components is None:
        return stored
    for component in components:
        check_choice("component", component, stored)
    return list(components)


def plot_heatmap(
    profile: xr.Dataset,
    located: xr.Dataset | None = None,
    components: Sequence[str] | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Layer × position-group heatmap of the mean effect, one panel per component.

    The diverging palette is centred at 0 (no change) and spans at least ±1 (full restoration),
    so colours compare across stores. Located windows are outlined in black.

    Args:
        profile: from :func:`~patchwork.analysis.layer_profile`, dims (layer, position_group,
            component).
        located: from :func:`~patchwork.analysis.locate`, to outline windows (optional).
        components: which panels, in order (default: all stored).
        annotate: write each cell's value (default: when there are at most 24 layers).

    Returns:
        The figure; its colour bar is labelled with the metric and its units.
    """
    components = _components(profile, components)
    layers = profile["layer"].values
    groups = [str(g) for g in profile["position_group"].values]
    annotate = len(layers) <= 24 if annotate is None else annotate
    limit = max(1.0, float(np.nanmax(np.abs(profile["mean"].values), initial=0.0)))
    figure = Figure(
        figsize=(max(6.0, 0.62 * len(layers) + 2.6), 0.5 * len(groups) * len(components) + 1.6),
        layout="constrained",
    )
    axes = np.atleast_1d(figure.subplots(len(components), 1, sharex=True, squeeze=False)[:, 0])
    for ax, component in zip(axes, components, strict=True):
        grid = profile["mean"].sel(component=component).transpose("position_group", "layer")
        with warnings.catch_warnings():
            # seaborn 0.13 calls Colormap.set_bad, which matplotlib ≥ 3.11 marks as pending removal.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(
                grid.to_pandas(),
                ax=ax,
                cmap="vlag",
                center=0.0,
                vmin=-limit,
                vmax=limit,
                # Values that round to zero are written "0.00", never "-0.00".
                annot=grid.where(abs(grid) >= 0.005, 0.0).to_pandas() if annotate else False,
                fmt=".2f",
                annot_kws={"fontsize": 8},
                linewidths=0.5,
                linecolor="white",
                cbar=False,
            )
        ax.set_title(component, loc="left", fontsize=10)
        ax.set_ylabel("position group")
        ax.set_xlabel("")
        ax.tick_params(axis="y", rotation=0)
        if located is not None:
            _outline_windows(ax, located, component, layers, groups)
    axes[-1].set_xlabel("layer (first layer of the patched window)")
    colourbar = figure.colorbar(axes[0].collections[0], ax=list(axes), shrink=0.9)
    colourbar.set_label("mean " + _metric_label(profile))
    figure.suptitle(_title(profile, "Mean effect of patching the clean run into the conflict run"))
    return figure


def _outline_windows(
    ax, located: xr.Dataset, component: str, layers: np.ndarray, groups: list[str]
) -> None:
    """A box around the cells of the layers ``window_layers`` names (heatmap cells are unit
    squares, layer k at x = k … k + 1 in stored order)."""
    for row, group in enumerate(groups):
        for window in window_layers(located, component, group):
            first, last = (int(np.searchsorted(layers, layer)) for layer in window)
            ax.add_patch(
                Rectangle((first, row), last - first + 1, 1, fill=False, edgecolor="black", lw=2)
            )


def _draw_profile(ax, profile: xr.Dataset, component: str, group: str, label: bool) -> None:
    cell = profile.sel(component=component, position_group=group)
    layers = cell["layer"].values
    colour = _PALETTE.get(group, "grey")
    ax.fill_between(
        layers, cell["ci_low"].values, cell["ci_high"].values, color=colour, alpha=0.25, lw=0
    )
    sns.lineplot(
        x=layers,
        y=cell["mean"].values,
        ax=ax,
        color=colour,
        marker="o",
        markersize=4,
        label=group if label else None,
        legend=False,
    )


def window_layers(located: xr.Dataset | None, component: str, group: str) -> list[tuple[int, int]]:
    """The located windows of a cell as :func:`~patchwork.analysis.locate` states them: each
    window's first and last layer, inclusive, in layer order (one pair for a single window, one
    per window where the change comes in separate stretches; empty when none is located). Every
    figure marks exactly these layers."""
    if located is None or group not in located["position_group"].values:
        return []
    if component not in located["component"].values:
        return []
    return located_spans(located.sel(component=component, position_group=group))


def layer_extent(layers: Iterable[float], start: float, end: float) -> tuple[float, float]:
    """The x range of a line plot that holds the stored layers ``start`` … ``end`` and no other:
    halfway to the neighbouring stored layers (half a step beyond the first and the last)."""
    stored = sorted(float(layer) for layer in layers)
    steps = np.diff(stored) if len(stored) > 1 else np.ones(1)
    first, last = stored.index(float(start)), stored.index(float(end))
    before = stored[first - 1] if first > 0 else stored[first] - float(steps[0])
    after = stored[last + 1] if last + 1 < len(stored) else stored[last] + float(steps[-1])
    return (stored[first] + before) / 2, (stored[last] + after) / 2


def _shade_window(
    ax, located: xr.Dataset | None, component: str, group: str, layers: Iterable[float]
) -> None:
    for window in window_layers(located, component, group):
        ax.axvspan(*layer_extent(layers, *window), color=_PALETTE.get(group, "grey"), alpha=0.15)


def _reference_lines(ax) -> None:
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhline(1.0, color="black", lw=0.8, ls=":")


def plot_layer_profile(
    profile: xr.Dataset,
    component: str = "residual",
    located: xr.Dataset | None = None,
    position_groups: Sequence[str] | None = None,
) -> Figure:
    """Mean effect per layer for one component, a line per position group with its interval band.

    Args:
        profile: from :func:`~patchwork.analysis.layer_profile`.
        component: which component.
        located: from :func:`~patchwork.analysis.locate`; each group's located window is shaded
            in its colour, over the layers :func:`window_layers` names (optional).
        position_groups: which lines (default: all stored).

    Returns:
        The figure: x is the layer, y the metric (dotted line at 1 = clean run, solid at 0 =
        conflict run), bands are the bootstrap intervals.
    """
    check_choice("component", component, [str(c) for c in profile["component"].values])
    groups = position_groups or [str(g) for g in profile["position_group"].values]
    figure = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = figure.subplots()
    layers = profile["layer"].values
    for group in groups:
        _draw_profile(ax, profile, component, group, label=True)
        _shade_window(ax, located, component, group, layers)
    _reference_lines(ax)
    confidence = profile.attrs.get("confidence", 0.95)
    ax.legend(
        title=f"position group\n(band: {confidence:.0%} CI;\nshaded: located window)",
        frameon=False,
        loc="best",
    )
    ax.set_xlabel("layer (first layer of the patched window)")
    ax.set_ylabel(_metric_label(profile, wrap=True))
    ax.set_xticks(profile["layer"].values)
    figure.suptitle(_title(profile, f"Per-layer effect of patching the {component}"))
    return figure


def plot_components(profile: xr.Dataset, located: xr.Dataset | None = None) -> Figure:
    """Small multiples: one panel per (position group, component), profiles with interval bands.

    Rows are position groups, columns components; axes are shared so panels compare directly.
    Located windows are shaded.

    Returns:
        The figure.
    """
    groups = [str(g) for g in profile["position_group"].values]
    components = [str(c) for c in profile["component"].values]
    figure = Figure(
        figsize=(2.9 * len(components) + 0.8, 1.9 * len(groups) + 1.2), layout="constrained"
    )
    axes = figure.subplots(len(groups), len(components), sharex=True, sharey=True, squeeze=False)
    for row, group in enumerate(groups):
        for column, component in enumerate(components):
            ax = axes[row, column]
            _draw_profile(ax, profile, component, group, label=False)
            _shade_window(ax, located, component, group, profile["layer"].values)
            _reference_lines(ax)
            if row == 0:
                ax.set_title(component, fontsize=10)
            if column == 0:
                ax.set_ylabel(group)
    figure.supxlabel("layer (first layer of the patched window)")
    figure.supylabel(_metric_label(profile), fontsize=9)
    figure.suptitle(_title(profile, "Effect per layer across components (bands: bootstrap CI)"))
    return figure


def save_figure(
    figure: Figure, directory: str | Path, stem: str, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write ``figure`` as ``directory/stem.<format>`` for every format; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        if extension not in FIGURE_FORMATS:
            raise AnalysisError(f"figure format must be png, svg or pdf; got {extension!r}")
        path = directory / f"{stem}.{extension}"
        figure.savefig(path, dpi=150)
        paths.append(path)
    return paths


def save_figures(
    profile: xr.Dataset,
    located: xr.Dataset | None,
    directory: str | Path,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Every standard figure of a sweep, written into ``directory``.

    Writes :func:`standard_figures`, each in every format. Returns the paths written.
    """
    paths = []
    for stem, figure in standard_figures(profile, located).items():
        paths += save_figure(figure, directory, stem, formats)
    return paths


def standard_figures(profile: xr.Dataset, located: xr.Dataset | None) -> dict[str, Figure]:
    """File stem → figure: ``heatmap``, ``components`` and one ``profile_<component>`` per
    component, all marking the same located windows."""
    figures = {
        "heatmap": plot_heatmap(profile, located),
        "components": plot_components(profile, located),
    }
    for component in profile["component"].values:
        figures[f"profile_{component}"] = plot_layer_profile(profile, str(component), located)
    return figures
