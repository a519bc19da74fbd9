from __future__ import annotations

import numpy as np

from patchwork.analysis import synthetic_results
from patchwork.analysis.results import EFFECT_DIMS, METRICS


def test_synthetic_results_follow_the_store_contract() -> None:
    results = synthetic_results(n_samples=10, n_layers=6, step_layer=3, done_fraction=0.6, seed=1)
    assert results["effect"].dims == EFFECT_DIMS
    assert results["null_effect"].dims == EFFECT_DIMS
    assert results["baseline"].dims == ("sample", "run", "metric")
    assert list(results["metric"].values) == list(METRICS)
    assert list(results["run"].values) == ["clean", "conflict"]
    assert results["effect"].dtype == np.float32
    done = results["done"].values
    assert done.sum() == 6
    assert results["effect"].isel(sample=~done).isnull().all()
    assert results["effect"].isel(sample=done).notnull().all()
    assert {"audio_answer", "visual_answer"} <= set(results.coords)
    assert results.attrs["study_name"] == "synthetic"


def test_synthetic_metrics_agree_with_the_baselines() -> None:
    """normalized = (patched − conflict) / (clean − conflict) of the logit difference."""
    results = synthetic_results(n_samples=8, seed=2).isel(layer=[0, 6])
    effect, baseline = results["effect"], results["baseline"]
    clean = baseline.sel(run="clean", metric="logit_diff")
    conflict = baseline.sel(run="conflict", metric="logit_diff")
    normalized = (effect.sel(metric="logit_diff") - conflict) / (clean - conflict)
    np.testing.assert_allclose(normalized, effect.sel(metric="normalized_effect"), atol=1e-4)
    np.testing.assert_allclose(baseline.sel(run="clean", metric="normalized_effect"), 1.0)


def test_synthetic_steps_are_where_asked() -> None:
    results = synthetic_results(
        n_samples=64, step_layer=2, steps={("text", "mlp"): (0.0, 0.5)}, noise=0.01, null=False
    )
    assert "null_effect" not in results
    mean = results["effect"].sel(metric="normalized_effect").mean("sample")
    np.testing.assert_allclose(
        mean.sel(position_group="text", component="mlp"),
        [0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        atol=0.01,
    )
    assert float(abs(mean.sel(position_group="answer", component="residual")).max()) < 0.01
