"""How many samples an analysis used of all, and which it left out and why."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from patchwork.analysis import (
    AnalysisError,
    SampleCoverage,
    layer_profile,
    locate,
    locate_table,
    noise_floor,
    plot_components,
    plot_heatmap,
    plot_layer_profile,
    sample_coverage,
    synthetic_results,
)
from patchwork.analysis.results import (
    MIN_GAP,
    UNFINISHED,
    WRONG_DIRECTION,
    used_samples,
)

from .conftest import ZERO_GAP_SAMPLE, with_zero_gap

UNFINISHED_IDS = tuple(f"s{i:04d}" for i in range(24, 32))


def test_a_partial_store_counts_unfinished_and_undefined_samples(
    flagged_results: xr.Dataset,
) -> None:
    coverage = sample_coverage(flagged_results)
    assert (coverage.used, coverage.total) == (23, 32)
    assert dict(coverage.excluded) == {
        UNFINISHED: UNFINISHED_IDS,
        WRONG_DIRECTION: (ZERO_GAP_SAMPLE,),
    }
    assert coverage.partial
    assert str(coverage) == (
        "23 of 32 samples (partial: 8 unfinished, 1 clean run not preferring the audio answer, "
        "or conflict run already preferring it)"
    )
    assert (
        coverage.describe(reasons=False) == "23 of 32 samples (partial: 8 unfinished, 1 excluded)"
    )
    assert coverage.short() == "n = 23 of 32 (partial, 1 excluded)"


def test_the_gap_matters_only_to_the_normalized_effect(flagged_results: xr.Dataset) -> None:
    coverage = sample_coverage(flagged_results, "logit_diff")
    assert (coverage.used, coverage.total) == (24, 32)
    assert dict(coverage.excluded) == {UNFINISHED: UNFINISHED_IDS}
    assert str(coverage) == "24 of 32 samples (partial: 8 unfinished)"
    assert coverage.short() == "n = 24 of 32 (partial)"


def test_a_finished_store_uses_every_sample() -> None:
    coverage = sample_coverage(synthetic_results(n_samples=6, n_layers=3))
    assert coverage == SampleCoverage(6, 6, {})
    assert not coverage.partial
    assert str(coverage) == "6 of 6 samples" and coverage.short() == "n = 6"


def test_a_done_sample_without_values_is_excluded_with_its_own_reason() -> None:
    results = synthetic_results(n_samples=6, n_layers=3)
    results["effect"].loc[{"sample": "s0004", "metric": "logit_diff"}] = np.nan
    coverage = sample_coverage(results, "logit_diff")
    assert dict(coverage.excluded) == {"without a logit_diff value": ("s0004",)}
    assert str(coverage) == "5 of 6 samples (excluded: 1 without a logit_diff value)"
    assert coverage.short() == "n = 5 of 6 (1 excluded)"
    # Its other metrics are stored: it is used for them.
    assert sample_coverage(results, "normalized_effect").used == 6


def test_a_store_with_nothing_done_yet_has_a_coverage_but_no_analysis() -> None:
    results = synthetic_results(n_samples=4, n_layers=3, done_fraction=0.0)
    coverage = sample_coverage(results)
    assert (coverage.used, coverage.total) == (0, 4)
    assert str(coverage) == "0 of 4 samples (partial: 4 unfinished)"
    with pytest.raises(AnalysisError, match="no sample in the store is marked done"):
        used_samples(results)


def test_no_usable_sample_is_an_error_naming_the_coverage() -> None:
    results = synthetic_results(n_samples=2, n_layers=3)
    for sample in ("s0000", "s0001"):
        results = with_zero_gap(results, sample)
    with pytest.raises(
        AnalysisError, match=r"no done sample has a usable normalized_effect: 0 of 2"
    ):
        locate(results, n_resamples=20)


def test_excluded_samples_are_left_out_of_the_bootstrap(flagged_results: xr.Dataset) -> None:
    """Same answer as on the store without the excluded sample: the resamples draw only used
    samples (drawing an all-NaN one would shrink some resamples and change the intervals)."""
    without = flagged_results.drop_sel(sample=[ZERO_GAP_SAMPLE])
    options = {"n_resamples": 200, "seed": 4}
    found, expected = locate(flagged_results, **options), locate(without, **options)
    xr.testing.assert_identical(found.drop_attrs(), expected.drop_attrs())
    xr.testing.assert_identical(
        layer_profile(flagged_results, **options).drop_attrs(),
        layer_profile(without, **options).drop_attrs(),
    )
    xr.testing.assert_identical(
        noise_floor(flagged_results, **options), noise_floor(without, **options)
    )


def test_locate_and_its_table_carry_the_coverage(flagged_results: xr.Dataset) -> None:
    located = locate(flagged_results, n_resamples=50)
    assert (located.attrs["n_used"], located.attrs["n_total"]) == (23, 32)
    assert SampleCoverage.from_attrs(located.attrs) == sample_coverage(flagged_results)
    assert int(located["n_samples"].max()) == 23
    table = locate_table(located)
    assert (table.attrs["n_used"], table.attrs["n_total"]) == (23, 32)
    assert SampleCoverage.from_attrs(table.attrs) == sample_coverage(flagged_results)
    assert SampleCoverage.from_attrs({}) is None


@pytest.mark.parametrize(
    ("flag", "label"),
    [(False, "n = 24 of 32 (partial)"), (True, "n = 23 of 32 (partial, 1 excluded)")],
)
def test_figure_titles_state_the_samples_used_of_all(
    results: xr.Dataset, flagged_results: xr.Dataset, flag: bool, label: str
) -> None:
    small = (flagged_results if flag else results).isel(component=[0], position_group=[1, 3])
    profile = layer_profile(small, n_resamples=50)
    assert (profile.attrs["n_used"], profile.attrs["n_total"]) == (23 + (not flag), 32)
    for figure in (plot_heatmap(profile), plot_layer_profile(profile), plot_components(profile)):
        subtitle = figure.get_suptitle().splitlines()[-1]
        assert subtitle == f"synthetic · synthetic-model, ratio of means, {label}"


def test_a_complete_store_says_n_without_of() -> None:
    results = synthetic_results(n_samples=6, n_layers=3, position_groups=("answer",))
    profile = layer_profile(results.isel(component=[0]), n_resamples=20)
    assert plot_heatmap(profile).get_suptitle().endswith("synthetic-model, ratio of means, n = 6")


def test_min_gap_is_the_one_the_metrics_use() -> None:
    from patchwork.patching import metrics

    assert metrics.MIN_GAP == MIN_GAP
