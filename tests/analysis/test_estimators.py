"""The normalized effect over samples: which samples count, and the two estimators.

Properties: a sample whose baselines point the wrong way or whose gap is tiny leaves the
ratio-of-means profile and the located windows exactly as they were (it is excluded); and with
no exclusion at all, one added sample moves the ratio-of-means profile by at most
(|patched − conflict| + |R|·gap) / Σ gaps — a bound the mean of ratios does not have.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.analysis import layer_profile, locate, sample_coverage, synthetic_results
from patchwork.analysis.results import GAP_TOO_SMALL, WRONG_DIRECTION

N_LAYERS = 6
BASE = synthetic_results(n_samples=24, n_layers=N_LAYERS, step_layer=3, noise=0.1, seed=11)


def _with_sample(
    results: xr.Dataset, clean: float, conflict: float, patched: np.ndarray
) -> xr.Dataset:
    """``results`` plus one done sample with these baselines and patched logit differences
    (layer, position_group, component); its normalized effect as the store computes it."""
    extra = results.isel(sample=[0]).copy(deep=True)
    extra = extra.assign_coords(sample=["extra"])
    gap = clean - conflict
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = (patched - conflict) / gap if abs(gap) >= 1e-6 else np.nan * patched
    probability = 1 / (1 + np.exp(-patched))
    effect = np.stack([patched, probability, normalized], axis=-1)[None].astype("float32")
    extra["effect"].values[...] = effect
    extra["baseline"].values[0, :, 0] = [clean, conflict]
    extra["baseline"].values[0, :, 2] = [1.0, 0.0]
    extra["done"].values[...] = True
    return xr.concat([results, extra], dim="sample", data_vars="all")


def _patched(draw: st.DrawFn, bound: float) -> np.ndarray:
    shape = (N_LAYERS, BASE.sizes["position_group"], BASE.sizes["component"])
    values = draw(
        st.lists(
            st.floats(-bound, bound, allow_nan=False, width=32),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        )
    )
    return np.asarray(values, dtype=np.float64).reshape(shape)


def _gaps(results: xr.Dataset) -> np.ndarray:
    runs = results["baseline"].sel(metric="logit_diff")
    return (runs.sel(run="clean") - runs.sel(run="conflict")).values.astype(np.float64)


@st.composite
def odd_samples(draw: st.DrawFn) -> tuple[float, float, np.ndarray]:
    """Baselines pointing the wrong way, or the right way with a gap under 5% of the median."""
    median = float(np.median(_gaps(BASE)))
    if draw(st.booleans()):  # wrong way: the clean run does not prefer the audio answer, or
        clean = draw(st.floats(-20, 0))  # the conflict run already does
        conflict = draw(st.floats(-20, 20))
        if draw(st.booleans()):
            clean, conflict = draw(st.floats(-20, 20)), draw(st.floats(0, 20))
    else:
        gap = draw(st.floats(1e-9, 0.0499 * median))
        conflict = -draw(st.floats(1e-3, 5.0))
        clean = conflict + gap
        if clean <= 0:
            clean, conflict = gap / 2, -gap / 2
    return clean, conflict, _patched(draw, 50.0)


@settings(max_examples=60, deadline=None)
@given(odd_samples())
def test_an_odd_sample_changes_neither_profile_nor_windows(odd) -> None:
    clean, conflict, patched = odd
    added = _with_sample(BASE, clean, conflict, patched)
    coverage = sample_coverage(added)
    assert (coverage.used, coverage.total) == (24, 25)
    assert set(coverage.excluded) <= {WRONG_DIRECTION, GAP_TOO_SMALL}
    options = {"n_resamples": 100, "seed": 1}
    before, after = layer_profile(BASE, **options), layer_profile(added, **options)
    np.testing.assert_allclose(after["mean"], before["mean"], rtol=0, atol=1e-9)
    found, expected = locate(added, **options), locate(BASE, **options)
    for key in ("status", "start_layer", "end_layer", "peak_layer"):
        np.testing.assert_array_equal(found[key].values, expected[key].values)


@settings(max_examples=60, deadline=None)
@given(
    gap=st.floats(1e-4, 1.0),
    conflict=st.floats(-5.0, -1e-3),
    data=st.data(),
)
def test_one_sample_moves_the_ratio_of_means_by_at_most_its_share_of_the_gap(
    gap: float, conflict: float, data: st.DataObject
) -> None:
    """Bound without any exclusion (min_relative_gap 0): Δ ≤ (|patched − conflict| + |R|·g) / G,
    G the summed gaps with the sample. The mean of ratios has no such bound: its change grows as
    1 / g."""
    clean = max(conflict + gap, gap / 2)
    conflict = clean - gap
    patched = _patched(data.draw, 10.0)
    added = _with_sample(BASE, clean, conflict, patched)
    options = {"n_resamples": 20, "min_relative_gap": 0.0}
    before = layer_profile(BASE, **options)["mean"].values
    after = layer_profile(added, **options)["mean"].values
    total = _gaps(added).sum()
    bound = (np.abs(patched - conflict) + np.abs(before) * gap) / total
    assert (np.abs(after - before) <= bound * (1 + 1e-5) + 1e-6).all()


def test_a_small_gap_is_excluded_by_default_and_counted_when_asked() -> None:
    median = float(np.median(_gaps(BASE)))
    patched = np.full((N_LAYERS, 4, 3), 3.0)
    added = _with_sample(BASE, 0.01 * median, -0.01 * median, patched)
    assert dict(sample_coverage(added).excluded) == {GAP_TOO_SMALL: ("extra",)}
    # its gap is 2% of the median
    assert sample_coverage(added, min_relative_gap=0.03).used == 24
    assert sample_coverage(added, min_relative_gap=0.01).used == 25
    ratio = layer_profile(added, n_resamples=20, min_relative_gap=0.0)
    means = layer_profile(added, n_resamples=20, min_relative_gap=0.0, estimator="mean_of_ratios")
    # the tiny-gap sample's ratio is ~150: it drags the mean of ratios, not the ratio of means
    assert float(abs(ratio["mean"]).max()) < 1.5 < float(abs(means["mean"]).max())


def test_the_stored_studys_analysis_section_sets_the_defaults() -> None:
    results = BASE.copy()
    results.attrs["study"] = (
        "name: s\nanalysis: {estimator: mean_of_ratios, min_relative_gap: 0.2}\n"
    )
    profile = layer_profile(results, n_resamples=20)
    assert (profile.attrs["estimator"], profile.attrs["min_relative_gap"]) == (
        "mean_of_ratios",
        0.2,
    )
    assert (
        layer_profile(results, n_resamples=20, estimator="ratio_of_means").attrs["estimator"]
        == "ratio_of_means"
    )
    with pytest.raises(Exception, match="estimator"):
        layer_profile(results, estimator="median")
