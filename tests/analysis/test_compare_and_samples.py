"""Activation patching per sample and per category pair, and ``patchwork compare``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from patchwork import open_results
from patchwork.analysis import mean_profile, sample_coverage, synthetic_results
from patchwork.analysis.compare import compare, summary_difference
from patchwork.analysis.patching_report import ActivationPatchingReport
from patchwork.analysis.sample_views import pair_profile, plot_pairs, plot_samples, sample_effects
from patchwork.cli import _register_subcommands, app

from .conftest import ZERO_GAP_SAMPLE, _write_store

_register_subcommands()


def test_sample_effects_hold_exactly_the_samples_the_profile_uses(flagged_results) -> None:
    per_sample = sample_effects(flagged_results, component="attention")
    coverage = sample_coverage(flagged_results)
    assert per_sample.sizes["sample"] == coverage.used
    excluded = {sample for ids in coverage.excluded.values() for sample in ids}
    assert ZERO_GAP_SAMPLE in excluded and not excluded & set(per_sample["sample"].values)
    stored = flagged_results["effect"].sel(metric="normalized_effect", component="attention")
    sample = str(per_sample["sample"].values[0])
    np.testing.assert_allclose(
        per_sample.sel(sample=sample).values,
        stored.sel(sample=sample).transpose("layer", "position_group").values,
    )
    pairs = list(
        zip(per_sample["audio_answer"].values, per_sample["visual_answer"].values, strict=True)
    )
    assert pairs == sorted(pairs)  # rows grouped by category pair
    figure = plot_samples(per_sample)
    assert len(figure.axes[0].get_yticklabels()) == coverage.used


@pytest.mark.parametrize("estimator", ["ratio_of_means", "mean_of_ratios"])
def test_the_profile_is_the_weighted_mean_of_the_pair_profiles(flagged_results, estimator) -> None:
    pairs = pair_profile(flagged_results, estimator=estimator)
    overall = mean_profile(flagged_results, estimator=estimator).sel(component="residual")
    assert int(pairs["n_samples"].sum()) == sample_coverage(flagged_results).used
    if estimator == "ratio_of_means":  # each pair weighs by its Σ(clean − conflict)
        used = flagged_results.sel(sample=sample_effects(flagged_results)["sample"].values)
        runs = used["baseline"].sel(metric="logit_diff")
        gap = (runs.sel(run="clean") - runs.sel(run="conflict")).values
        labels = [
            f"{a} / {v}"
            for a, v in zip(used["audio_answer"].values, used["visual_answer"].values, strict=True)
        ]
        weights = xr.DataArray(
            [gap[[label == pair for label in labels]].sum() for pair in pairs["pair"].values],
            dims="pair",
        )
    else:  # each pair weighs by its samples
        weights = pairs["n_samples"].astype(float)
    weighted = (pairs * weights).sum("pair") / weights.sum()
    np.testing.assert_allclose(
        weighted.transpose("layer", "position_group").values,
        overall.transpose("layer", "position_group").values,
        rtol=1e-5,  # the store's baselines are float32
    )
    figure = plot_pairs(pairs)
    assert len(figure.axes[0].get_yticklabels()) == pairs.sizes["pair"]


def test_the_report_draws_samples_and_pairs_of_the_first_component(flagged_results) -> None:
    figures = ActivationPatchingReport().figures(flagged_results, n_resamples=20)
    assert {"samples_residual", "pairs_residual"} <= set(figures)


def test_compare_subtracts_summaries_row_by_row() -> None:
    first = synthetic_results(n_samples=24, seed=1)
    second = synthetic_results(n_samples=24, seed=2, model_name="base-model")
    (comparison,) = compare(first, second)
    assert comparison.kind == "activation_patching" and not comparison.note
    keys = ["component", "layer"]
    expected = comparison.second.set_index(keys) - comparison.first.set_index(keys)
    difference = comparison.difference.set_index(keys)
    np.testing.assert_allclose(difference.to_numpy(), expected.to_numpy())
    assert "base-model" in comparison.difference.attrs["title"]
    # rows only one side holds are left out
    fewer = comparison.second[comparison.second["layer"] < 3]
    assert len(summary_difference(comparison.first, fewer, keys)) == 3 * 3


def test_compare_with_a_store_that_lost_an_array_gives_no_difference_and_says_why() -> None:
    # a store read without verification after its effect array was removed: what is left of the
    # kind is reported generically, whose summary lacks the rows a difference is keyed on
    first = synthetic_results(n_samples=16, seed=1)
    damaged = synthetic_results(n_samples=16, seed=2).drop_vars("effect")
    damaged.attrs["study"] = "interventions: [{kind: activation_patching}]"
    (comparison,) = compare(first, damaged)
    assert comparison.kind == "activation_patching"
    assert comparison.difference is None and comparison.first is not None
    assert "no difference" in comparison.note


def test_compare_shows_rankings_side_by_side_and_names_kinds_of_one_store(every_kind_store):
    every_kind = open_results(every_kind_store).load()
    comparisons = {c.kind: c for c in compare(every_kind, every_kind, metric="logit_diff")}
    assert comparisons["head_patching"].difference is None  # a ranking
    assert comparisons["head_patching"].first is not None
    probes = comparisons["probes"].difference
    assert probes is not None and (probes[["accuracy", "shuffled"]] == 0).all().all()
    synthetic = synthetic_results(n_samples=8, seed=3)
    only = {c.kind: c.note for c in compare(synthetic, every_kind, metric="logit_diff")}
    assert only["probes"] == "only in methods-tiny · random_init"


def test_compare_on_the_command_line(tmp_path: Path) -> None:
    first = _write_store(tmp_path / "a.zarr", synthetic_results(n_samples=16, seed=1))
    second = _write_store(tmp_path / "b.zarr", synthetic_results(n_samples=16, seed=2))
    result = CliRunner().invoke(app, ["compare", str(first), str(second)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "first: synthetic" in text and "second: synthetic" in text  # same study and model
    assert "activation_patching: second: synthetic · synthetic-model − first" in text
