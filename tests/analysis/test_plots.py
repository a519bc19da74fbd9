from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from patchwork.analysis import (
    AnalysisError,
    layer_profile,
    locate,
    plot_components,
    plot_heatmap,
    plot_layer_profile,
    save_figure,
    save_figures,
)


@pytest.fixture(scope="module")
def profile_and_windows(results: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    return layer_profile(results, n_resamples=100), locate(results, n_resamples=100)


def test_heatmap_has_a_panel_per_component_titles_and_a_labelled_colour_bar(
    profile_and_windows,
) -> None:
    profile, located = profile_and_windows
    figure = plot_heatmap(profile, located)
    panels = [ax for ax in figure.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == ["residual", "attention", "mlp"]
    assert "synthetic · synthetic-model" in figure.get_suptitle()
    colour_bar = [ax for ax in figure.axes if ax not in panels][0]
    assert "normalized effect" in colour_bar.get_ylabel()
    assert [t.get_text() for t in panels[0].get_yticklabels()] == [
        "audio",
        "video",
        "text",
        "answer",
    ]
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == [str(i) for i in range(8)]
    assert len(panels[0].texts) == 4 * 8  # every cell annotated
    assert len(panels[0].patches) == 2  # both located windows outlined


def test_heatmap_selected_components_and_unknown_component(profile_and_windows) -> None:
    profile, _ = profile_and_windows
    figure = plot_heatmap(profile, components=["mlp"], annotate=False)
    assert [ax.get_title(loc="left") for ax in figure.axes if ax.get_title(loc="left")] == ["mlp"]
    with pytest.raises(AnalysisError, match="component must be one of"):
        plot_heatmap(profile, components=["embedding"])


def test_layer_profile_draws_a_line_and_band_per_group(profile_and_windows) -> None:
    profile, located = profile_and_windows
    figure = plot_layer_profile(profile, "residual", located)
    ax = figure.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["audio", "video", "text", "answer"]
    assert len(ax.collections) >= 4  # interval bands
    assert "residual" in figure.get_suptitle() and "synthetic" in figure.get_suptitle()
    assert "layer" in ax.get_xlabel()
    with pytest.raises(AnalysisError):
        plot_layer_profile(profile, "embedding")


def test_small_multiples_grid(profile_and_windows) -> None:
    profile, located = profile_and_windows
    figure = plot_components(profile, located)
    assert len(figure.axes) == 4 * 3
    assert "synthetic-model" in figure.get_suptitle()


def test_save_writes_png_and_svg(profile_and_windows, tmp_path: Path) -> None:
    profile, located = profile_and_windows
    paths = save_figure(plot_layer_profile(profile), tmp_path, "one")
    assert [p.name for p in paths] == ["one.png", "one.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in paths[1].read_bytes()[:1000]
    with pytest.raises(AnalysisError, match="figure format"):
        save_figure(plot_layer_profile(profile), tmp_path, "x", formats=("gif",))


def test_save_figures_writes_every_standard_figure(profile_and_windows, tmp_path: Path) -> None:
    profile, located = profile_and_windows
    paths = save_figures(profile, located, tmp_path / "figures", formats=("png",))
    assert sorted(p.name for p in paths) == sorted(
        f"{stem}.png"
        for stem in (
            "heatmap",
            "components",
            "profile_residual",
            "profile_attention",
            "profile_mlp",
        )
    )
    assert all(p.stat().st_size > 1000 for p in paths)
