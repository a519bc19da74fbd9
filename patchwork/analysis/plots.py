"""Figures of a patching sweep: heatmaps, per-layer profiles with intervals, small multiples.

Every function takes the output of :func:`~patchwork.analysis.layer_profile` (and optionally of
:func:`~patchwork.analysis.locate`); titles name the study, the model and the samples used
(``n = 16 of 64 (partial)``, see :func:`~patchwork.analysis.sample_coverage`). Each returns a
:class:`matplotlib.figure.Figure` built without pyplot, so nothing depends on the interactive
backend; :func:`save_figure` writes PNG and SVG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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

#: Every position group keeps its colour in every figure.
GROUP_ORDER = ("audio", "video", "image", "text", "answer", "all")
_COLOURBLIND = sns.color_palette("colorblind", 10)
_PALETTE = dict(zip(GROUP_ORDER, [_COLOURBLIND[i] for i in (0, 1, 5, 7, 2, 4)], strict=True))


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
            _outline_windows(ax, located.sel(component=component), layers, groups)
    axes[-1].set_xlabel("layer (first layer of the patched window)")
    colourbar = figure.colorbar(axes[0].collections[0], ax=list(axes), shrink=0.9)
    colourbar.set_label("mean " + _metric_label(profile))
    figure.suptitle(_title(profile, "Mean effect of patching the clean run into the conflict run"))
    return figure


def _outline_windows(ax, located: xr.Dataset, layers: np.ndarray, groups: list[str]) -> None:
    for row, group in enumerate(groups):
        if group not in located["position_group"].values:
            continue
        cell = located.sel(position_group=group)
        if str(cell["status"].values) != "located":
            continue
        first = int(np.searchsorted(layers, cell["start_layer"].values))
        last = int(np.searchsorted(layers, cell["end_layer"].values))
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


def _shade_window(ax, located: xr.Dataset | None, component: str, group: str) -> None:
    span = _window_span(located, component, group)
    if span is not None:
        ax.axvspan(*span, color=_PALETTE.get(group, "grey"), alpha=0.15)


def _mark_window(
    ax, profile: xr.Dataset, located: xr.Dataset | None, component: str, group: str
) -> None:
    """Thicken the stretch of the line where the located window moves it."""
    span = _window_span(located, component, group)
    if span is None:
        return
    cell = profile["mean"].sel(component=component, position_group=group)
    stretch = cell.sel(layer=(cell["layer"] >= span[0]) & (cell["layer"] <= span[1]))
    ax.plot(
        stretch["layer"].values,
        stretch.values,
        lw=7,
        alpha=0.35,
        color=_PALETTE.get(group, "grey"),
        solid_capstyle="round",
    )


def _window_span(located: xr.Dataset | None, component: str, group: str) -> list[float] | None:
    """From the layer stored before the window to its end: where the line moves."""
    if located is None or group not in located["position_group"].values:
        return None
    cell = located.sel(component=component, position_group=group)
    if str(cell["status"].values) != "located":
        return None
    layers = located.attrs.get("layers") or []
    start, end = float(cell["start_layer"]), float(cell["end_layer"])
    return [max((layer for layer in layers if layer < start), default=start - 1), end]


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
        located: from :func:`~patchwork.analysis.locate`; the stretch of each line across its
            located window is drawn thick (optional).
        position_groups: which lines (default: all stored).

    Returns:
        The figure: x is the layer, y the metric (dotted line at 1 = clean run, solid at 0 =
        conflict run), bands are the bootstrap intervals.
    """
    check_choice("component", component, [str(c) for c in profile["component"].values])
    groups = position_groups or [str(g) for g in profile["position_group"].values]
    figure = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = figure.subplots()
    for group in groups:
        _draw_profile(ax, profile, component, group, label=True)
        _mark_window(ax, profile, located, component, group)
    _reference_lines(ax)
    confidence = profile.attrs.get("confidence", 0.95)
    ax.legend(
        title=f"position group\n(band: {confidence:.0%} CI;\nthick: located window)",
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
            _shade_window(ax, located, component, group)
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
        if extension not in ("png", "svg", "pdf"):
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

    Writes ``heatmap``, ``components`` and one ``profile_<component>`` per component, each in
    every format. Returns the paths written.
    """
    paths = save_figure(plot_heatmap(profile, located), directory, "heatmap", formats)
    paths += save_figure(plot_components(profile, located), directory, "components", formats)
    for component in profile["component"].values:
        figure = plot_layer_profile(profile, str(component), located)
        paths += save_figure(figure, directory, f"profile_{component}", formats)
    return paths
