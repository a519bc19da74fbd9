"""``locate`` on synthetic sweeps with a known step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.analysis import (
    TABLE_COLUMNS,
    AnalysisError,
    locate,
    locate_table,
    located_spans,
    synthetic_results,
)

from .conftest import raise_normalized

CELL = {"position_group": "answer", "component": "residual"}


@st.composite
def stepped_sweeps(draw: st.DrawFn, well_above_noise: bool = True) -> tuple[xr.Dataset, int]:
    """A sweep whose answer/residual effect steps at a random layer, by at least 12 standard
    errors and well above the default floor (0.1)."""
    n_layers = draw(st.integers(2, 16))
    step_layer = draw(st.integers(1, n_layers - 1))
    n_samples = draw(st.integers(5, 48))
    noise = draw(st.floats(0.01, 0.4))
    standard_error = noise * math.sqrt(2 / n_samples)
    size = max(draw(st.floats(12.0, 40.0)) * standard_error, draw(st.floats(0.3, 1.0)))
    height = size * draw(st.sampled_from([-1, 1]))
    results = synthetic_results(
        n_samples=n_samples,
        n_layers=n_layers,
        step_layer=step_layer,
        steps={("answer", "residual"): (0.2, 0.2 + height)},
        noise=noise,
        position_groups=("audio", "answer"),
        components=("residual", "mlp"),
        seed=draw(st.integers(0, 2**16)),
    )
    return results, step_layer


@given(sweep=stepped_sweeps())
@settings(max_examples=50, deadline=None, derandomize=True)
def test_a_step_well_above_noise_is_located_in_its_window(sweep: tuple[xr.Dataset, int]) -> None:
    results, step_layer = sweep
    found = locate(results, n_resamples=200).sel(CELL)
    assert str(found["status"].values) == "located"
    assert found["start_layer"] <= step_layer <= found["end_layer"]
    assert int(found["n_windows"]) == 1  # one step is one window
    assert found["peak_layer_low"] <= step_layer <= found["peak_layer_high"]
    assert found["change_low"] <= found["change"] <= found["change_high"]


@given(
    n_layers=st.integers(2, 16),
    n_samples=st.integers(4, 64),
    relative_noise=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=50, deadline=None, derandomize=True)
def test_no_step_means_none_everywhere(n_layers, n_samples, relative_noise, seed) -> None:
    """Without a step, and with the standard error of a change at most a quarter of the default
    floor, no cell reports a window. (Louder noise: see the false-alarm rate test below.)"""
    standard_error = relative_noise * 0.025
    results = synthetic_results(
        n_samples=n_samples,
        n_layers=n_layers,
        steps={},
        noise=standard_error / math.sqrt(2 / n_samples),
        seed=seed,
        position_groups=("audio", "answer"),
        components=("residual", "mlp"),
    )
    found = locate(results, n_resamples=200, seed=seed)
    assert (found["status"] == "none").all()
    assert found["start_layer"].isnull().all()


def test_false_alarms_are_rare_even_with_loud_noise_and_few_samples() -> None:
    """360 cells without any step (4 to 40 samples, noise up to half the clean–conflict gap) and
    no practical floor: the simultaneous noise bound alone keeps false windows at or below its
    nominal 5%; the default floor makes them rarer still."""
    rng = np.random.default_rng(11)
    alarms = {0.0: 0, "auto": 0}
    cells = 0
    for seed in range(30):
        results = synthetic_results(
            n_samples=int(rng.integers(4, 41)),
            n_layers=int(rng.integers(2, 13)),
            steps={},
            noise=float(rng.uniform(0.02, 0.5)),
            seed=seed,
            null=False,
            position_groups=("audio", "video", "text", "answer"),
            components=("residual", "attention", "mlp"),
        )
        for floor in alarms:
            found = locate(results, floor=floor, n_resamples=200, seed=seed)
            alarms[floor] += int((found["status"] == "located").sum())
        cells += 12
    assert alarms[0.0] / cells <= 0.05, alarms
    assert alarms["auto"] / cells <= 0.01, alarms


def test_default_sweep_finds_both_steps_and_nothing_else(results: xr.Dataset) -> None:
    found = locate(results, n_resamples=300)
    assert found.attrs["floor_source"] == "auto"
    located = found.where(found["status"] == "located", drop=True)
    table = locate_table(found).set_index(["position_group", "component"])
    assert table.loc[("answer", "residual"), "window"] == "5"
    assert table.loc[("answer", "residual"), "direction"] == "rise"
    assert table.loc[("video", "residual"), "direction"] == "fall"
    assert int((found["status"] == "located").sum()) == 2, located


def test_window_spans_a_two_layer_rise() -> None:
    """Levels 0 → 0.4 → 1.0 across layers 4 and 5: the window is 4–5, the change about 1."""
    results = synthetic_results(
        n_samples=40, step_layer=5, steps={("answer", "residual"): (0.0, 1.0)}, noise=0.05, seed=2
    )
    raise_normalized(results, dict(CELL, layer=4), 0.4)
    found = locate(results, n_resamples=300).sel(CELL)
    assert (int(found["start_layer"]), int(found["end_layer"])) == (4, 5)
    assert int(found["peak_layer"]) == 5
    assert found["change_low"] <= found["change"] <= found["change_high"]
    assert abs(float(found["change"]) - 1.0) < 0.1
    assert abs(float(found["before"])) < 0.1 and abs(float(found["after"]) - 1.0) < 0.1


def test_auto_floor_without_null_and_explicit_floors() -> None:
    results = synthetic_results(null=False, noise=0.05, seed=4)
    found = locate(results, n_resamples=200)
    assert found.attrs["floor_source"] == "auto"
    assert float(found["floor"].max()) == pytest.approx(0.1)
    assert str(found.sel(CELL)["status"].values) == "located"
    assert np.isnan(float(found.sel(CELL)["null_change"]))
    too_high = locate(results, floor=2.0, n_resamples=200)
    assert (too_high["status"] == "none").all()
    assert too_high.attrs["floor_source"] == "fixed"
    with pytest.raises(AnalysisError, match="no null_effect"):
        locate(results, floor="null")
    with pytest.raises(AnalysisError, match="floor must be"):
        locate(results, floor="loud")
    with pytest.raises(AnalysisError, match="≥ 0"):
        locate(results, floor=-1.0)
    with pytest.raises(AnalysisError, match="coverage"):
        locate(results, coverage=0.0)
    with pytest.raises(AnalysisError, match="confidence"):
        locate(results, confidence=2.0)


def test_null_floor_and_null_change() -> None:
    results = synthetic_results(seed=7)
    by_null = locate(results, floor="null", n_resamples=200)
    assert by_null.attrs["floor_source"] == "null"
    answer = by_null.sel(CELL)
    assert str(answer["status"].values) == "located"
    assert abs(float(answer["null_change"])) < 0.1  # the mismatched patches do not step
    results["null_effect"][:] = np.nan
    assert np.isnan(float(locate(results, n_resamples=100).sel(CELL)["null_change"]))
    with pytest.raises(AnalysisError, match="null_effect is empty"):
        locate(results, floor="null", n_resamples=100)


def test_cells_never_computed_say_so() -> None:
    results = synthetic_results(seed=5)
    results["effect"].loc[{"component": "mlp"}] = np.nan
    found = locate(results, n_resamples=100)
    assert (found["status"].sel(component="mlp") == "not computed").all()


def test_table_is_tidy_with_nullable_layers(results: xr.Dataset) -> None:
    table = locate_table(locate(results, n_resamples=100))
    assert tuple(table.columns) == TABLE_COLUMNS
    assert len(table) == results.sizes["position_group"] * results.sizes["component"]
    assert str(table["start_layer"].dtype) == "Int64"
    assert set(table["window"]) == {"none", "5"}


def test_other_metrics_and_seeds_are_honoured(results: xr.Dataset) -> None:
    by_logit = locate(results, metric="logit_diff", n_resamples=100)
    assert by_logit.attrs["metric"] == "logit_diff"
    assert str(by_logit.sel(CELL)["status"].values) == "located"
    gap = results["baseline"].sel(run="clean") - results["baseline"].sel(run="conflict")
    expected = 0.1 * float(abs(gap.sel(metric="logit_diff")).median())
    assert float(by_logit["floor"].max()) == pytest.approx(expected, rel=1e-5)
    xr.testing.assert_identical(
        locate(results, seed=3, n_resamples=100), locate(results, seed=3, n_resamples=100)
    )


def _planted_like() -> xr.Dataset:
    """The testbed's planted answer profile: 0.10 (layers 0-3), 0.23 (4), 0.90 (5-7)."""
    results = synthetic_results(
        n_samples=64, step_layer=5, steps={("answer", "residual"): (0.10, 0.90)}, noise=0.1, seed=6
    )
    raise_normalized(results, dict(CELL, layer=4), 0.13)
    return results


def test_a_planted_two_layer_window_is_found_whole() -> None:
    found = locate(_planted_like(), n_resamples=300).sel(CELL)
    assert (int(found["start_layer"]), int(found["end_layer"])) == (4, 5)
    assert int(found["peak_layer"]) == 5
    narrow = locate(_planted_like(), n_resamples=300, coverage=0.75).sel(CELL)
    assert (int(narrow["start_layer"]), int(narrow["end_layer"])) == (5, 5)


def test_a_gradual_rise_gives_a_long_window() -> None:
    """0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0: the change is spread over layers 1-5."""
    results = synthetic_results(n_samples=40, steps={}, noise=0.05, seed=8)
    ramp = xr.DataArray(np.minimum(np.arange(8) * 0.2, 1.0), dims="layer")
    raise_normalized(results, CELL, ramp)
    found = locate(results, n_resamples=300).sel(CELL)
    assert str(found["direction"].values) == "rise"
    assert int(found["start_layer"]) in (1, 2) and int(found["end_layer"]) == 5
    assert 1 <= int(found["peak_layer_low"]) <= int(found["peak_layer_high"]) <= 5


def _two_steps(second: Sequence[float]) -> xr.Dataset:
    """The answer/residual profile 0 at layer 0, 0.8 from layer 1, then ``second`` over layers
    2-7 (40 samples, noise 0.05)."""
    results = synthetic_results(n_samples=40, steps={}, noise=0.05, seed=11)
    raise_normalized(results, CELL, xr.DataArray([0.0, 0.8, *second], dims="layer"))
    return results


@pytest.mark.parametrize(
    ("second", "windows"),
    [
        # flat over layers 2-4, then a second rise of 0.2 in layer 5: two windows
        ((0.8, 0.8, 0.8, 1.0, 1.0, 1.0), [(1, 1), (5, 5)]),
        # the same with the second rise over layers 5-6
        ((0.8, 0.8, 0.8, 0.9, 1.0, 1.0), [(1, 1), (5, 6)]),
        # a second rise smaller than the floor (0.1) is no window of its own
        ((0.8, 0.8, 0.8, 0.85, 0.85, 0.85), [(1, 1)]),
        # no flat run between the two rises: one window, the shortest carrying 90% of 1.0
        ((0.85, 0.9, 0.95, 1.0, 1.0, 1.0), [(1, 3)]),
    ],
)
def test_separate_stretches_of_change_are_separate_windows(second, windows) -> None:
    found = locate(_two_steps(second), n_resamples=300).sel(CELL)
    assert str(found["status"].values) == "located"
    assert located_spans(found) == windows
    assert int(found["n_windows"]) == len(windows)
    assert (int(found["start_layer"]), int(found["end_layer"])) == (windows[0][0], windows[-1][1])
    profile = (0.0, 0.8, *second)  # each window's own change, from the layer before it
    expected = [profile[last] - profile[first - 1] for first, last in windows]
    assert found["window_change"].values[: len(windows)] == pytest.approx(expected, abs=0.05)
    label = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in windows)
    table = locate_table(locate(_two_steps(second), n_resamples=300))
    assert (
        table.set_index(["position_group", "component"]).loc[("answer", "residual"), "window"]
        == label
    )


def test_every_figure_marks_each_separate_window() -> None:
    from matplotlib.patches import Rectangle

    from patchwork.analysis import layer_profile, plot_heatmap, plot_layer_profile

    results = _two_steps((0.8, 0.8, 0.8, 1.0, 1.0, 1.0))
    located = locate(results, n_resamples=300)
    profile = layer_profile(results, n_resamples=100)
    line = plot_layer_profile(profile, located=located, position_groups=["answer"]).axes[0]
    shaded = sorted((p.get_x(), p.get_x() + p.get_width()) for p in line.patches)
    assert shaded == [(0.5, 1.5), (4.5, 5.5)]  # layers 1 and 5, not 1-5
    heatmap = plot_heatmap(profile, located=located, components=["residual"], annotate=False)
    outlined = [p for p in heatmap.axes[0].patches if isinstance(p, Rectangle)]
    assert sorted(int(p.get_x()) for p in outlined) == [1, 5]
    assert all(p.get_width() == 1 for p in outlined)
