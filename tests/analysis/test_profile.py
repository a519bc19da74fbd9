from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from patchwork.analysis import (
    AnalysisError,
    check_results,
    done_samples,
    layer_changes,
    layer_profile,
    noise_floor,
    select_metric,
    synthetic_results,
)


def test_profile_has_named_dims_and_uses_only_done_samples(results: xr.Dataset) -> None:
    profile = layer_profile(results, n_resamples=200)
    assert profile["mean"].dims == ("layer", "position_group", "component")
    assert set(profile.data_vars) == {"mean", "ci_low", "ci_high", "n_samples"}
    assert (profile["n_samples"] == int(results["done"].sum())).all()
    done = results.isel(sample=results["done"].values)
    # ratio of means (default): Σ(patched − conflict) / Σ(clean − conflict) of the logit difference
    logit = done["effect"].sel(metric="logit_diff").values.astype("float64")
    clean, conflict = done["baseline"].sel(metric="logit_diff").values.astype("float64").T
    expected = (logit - conflict[:, None, None, None]).sum(0) / (clean - conflict).sum()
    np.testing.assert_allclose(profile["mean"].values, expected, rtol=0, atol=1e-5)
    assert profile.attrs["estimator"] == "ratio_of_means"
    # mean of ratios: the plain mean of per-sample normalized effects
    plain = layer_profile(results, n_resamples=50, estimator="mean_of_ratios")
    expected = done["effect"].sel(metric="normalized_effect").mean("sample")
    np.testing.assert_allclose(plain["mean"], expected.transpose(*plain["mean"].dims), atol=1e-6)
    assert profile.attrs["study_name"] == "synthetic"
    assert profile.attrs["metric"] == "normalized_effect"


def test_profile_intervals_bracket_the_mean_and_are_seeded(results: xr.Dataset) -> None:
    first = layer_profile(results, n_resamples=200, seed=7)
    assert (first["ci_low"] <= first["mean"]).all() and (first["mean"] <= first["ci_high"]).all()
    xr.testing.assert_identical(first, layer_profile(results, n_resamples=200, seed=7))
    assert not first.equals(layer_profile(results, n_resamples=200, seed=8))


def test_done_samples_and_checks(results: xr.Dataset) -> None:
    assert done_samples(results).sizes["sample"] == 24
    with pytest.raises(AnalysisError, match="no sample"):
        done_samples(results.assign(done=results["done"] & False))
    with pytest.raises(AnalysisError, match="no 'effect'"):
        check_results(results.drop_vars("effect"))
    with pytest.raises(AnalysisError, match="lacks the dimension"):
        check_results(results.isel(layer=0, drop=True))
    with pytest.raises(AnalysisError, match="xarray.Dataset"):
        check_results(results["effect"])  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match="metric must be one of"):
        select_metric(results, "accuracy")


def test_layer_changes_are_labelled_with_the_later_layer() -> None:
    values = xr.DataArray([[0.0, 0.1, 0.9]], dims=("sample", "layer"), coords={"layer": [2, 4, 6]})
    changes = layer_changes(values)
    assert list(changes["layer"].values) == [4, 6]
    np.testing.assert_allclose(changes.values, [[0.1, 0.8]])
    with pytest.raises(AnalysisError, match="two layers"):
        layer_changes(values.isel(layer=[0]))


def test_noise_floor_grows_with_noise_and_needs_the_null() -> None:
    """The null's largest change between layers, bootstrapped: grows with its noise."""
    quiet = noise_floor(synthetic_results(noise=0.05, seed=1), n_resamples=200)
    loud = noise_floor(synthetic_results(noise=0.3, seed=1), n_resamples=200)
    assert quiet.dims == ("position_group", "component")
    assert (quiet > 0).all() and (loud > quiet).all()
    with pytest.raises(AnalysisError, match="no null_effect"):
        noise_floor(synthetic_results(null=False))
