from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.analysis import AnalysisError, bootstrap_mean, bootstrap_weights, resampled_means


@given(n=st.integers(1, 50), resamples=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_weights_draw_whole_samples_and_are_seeded(n: int, resamples: int, seed: int) -> None:
    weights = bootstrap_weights(n, resamples, seed)
    assert weights.dims == ("resample", "sample")
    assert weights.shape == (resamples, n)
    assert (weights.sum("sample") == n).all()
    xr.testing.assert_equal(weights, bootstrap_weights(n, resamples, seed))


def test_weights_refuse_empty() -> None:
    with pytest.raises(AnalysisError, match="at least one sample"):
        bootstrap_weights(0)
    with pytest.raises(AnalysisError, match="n_resamples"):
        bootstrap_weights(3, 0)


def test_resampled_means_skip_nan_and_keep_other_dims() -> None:
    values = xr.DataArray(
        [[1.0, np.nan], [3.0, 4.0]], dims=("sample", "layer"), coords={"sample": ["a", "b"]}
    )
    identity = xr.DataArray([[1, 1]], dims=("resample", "sample"))
    means = resampled_means(values, identity)
    assert means.dims == ("resample", "layer")
    np.testing.assert_allclose(means.values, [[2.0, 4.0]])
    only_first = xr.DataArray([[2, 0]], dims=("resample", "sample"))
    assert np.isnan(resampled_means(values, only_first).values[0, 1])


def test_bootstrap_mean_is_the_plain_mean_inside_its_interval() -> None:
    rng = np.random.default_rng(0)
    values = xr.DataArray(rng.normal(size=(20, 5)), dims=("sample", "layer"))
    summary = bootstrap_mean(values, n_resamples=300, seed=1)
    np.testing.assert_allclose(summary["mean"], values.mean("sample"))
    assert (summary["ci_low"] <= summary["mean"]).all()
    assert (summary["mean"] <= summary["ci_high"]).all()
    assert (summary["n_samples"] == 20).all()
    xr.testing.assert_equal(summary, bootstrap_mean(values, n_resamples=300, seed=1))


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_bootstrap_mean_refuses_bad_confidence(confidence: float) -> None:
    values = xr.DataArray(np.zeros((3, 2)), dims=("sample", "layer"))
    with pytest.raises(AnalysisError, match="confidence"):
        bootstrap_mean(values, confidence=confidence)


@pytest.mark.parametrize(
    ("draw", "lowest"),
    [
        (lambda rng, size: rng.normal(0.3, 1.0, size), 0.91),
        (lambda rng, size: rng.exponential(1.0, size) - 1.0 + 0.3, 0.89),
    ],
    ids=["normal", "skewed"],
)
def test_intervals_cover_the_true_mean_at_close_to_nominal_rate(draw, lowest: float) -> None:
    """1,600 independent cells (8 seeds × 200 cells, 40 samples each), true mean 0.3."""
    covered = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        values = xr.DataArray(draw(rng, (40, 200)), dims=("sample", "cell"))
        summary = bootstrap_mean(values, confidence=0.95, n_resamples=400, seed=seed)
        covered.append(((summary["ci_low"] <= 0.3) & (0.3 <= summary["ci_high"])).values)
    coverage = np.concatenate(covered).mean()
    assert lowest <= coverage <= 0.98, coverage
