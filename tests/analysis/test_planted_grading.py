"""The grading rules of :mod:`patchwork.analysis.ground_truth` checked against definitions written
out here: the AUROC against a brute-force count of planted–unplanted pairs (a tie counts half),
average ranks against their definition, and the usable clips against
:func:`~patchwork.analysis.sample_coverage`."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.analysis import ground_truth, sample_coverage, synthetic_results
from patchwork.analysis.results import GAP_TOO_SMALL


def pairwise_auroc(scores: np.ndarray, planted: np.ndarray, tolerance: float = 0.0) -> float:
    """Share of (planted, unplanted) pairs the planted one wins, a tie (|difference| ≤
    ``tolerance``) counting half."""
    positive, negative = scores[planted][:, None], scores[~planted][None, :]
    ties = np.abs(positive - negative) <= tolerance
    wins = (positive > negative) & ~ties
    return float((wins + 0.5 * ties).mean())


labelled_scores = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda b: 0 < sum(b) < len(b)),
    )
)


@settings(max_examples=200, deadline=None)
@given(labelled_scores)
def test_auroc_equals_the_pairwise_count_with_ties_counting_half(data) -> None:
    scores, planted = (np.asarray(part) for part in data)
    planted = planted.astype(bool)
    # integer scores: many exact ties, and every distinct pair farther apart than the tolerance
    found = ground_truth.auroc(scores.astype(float) / 7, planted)
    assert found == pytest.approx(pairwise_auroc(scores.astype(float), planted), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-4, 4), min_size=1, max_size=15))
def test_average_ranks_follow_their_definition(values) -> None:
    scores = np.asarray(values, dtype=float)
    below = (scores[None, :] < scores[:, None]).sum(axis=1)
    equal = (scores[None, :] == scores[:, None]).sum(axis=1)
    np.testing.assert_allclose(ground_truth.average_ranks(scores), below + (equal + 1) / 2)


def test_a_float32_ramp_ties_its_equal_steps() -> None:
    """A linear ramp over 8 layers (float32, as stores keep it) has 7 equal steps up to rounding;
    with the window at layers 4-5 the planted steps beat one layer (0) and tie five: AUROC
    (2 + 0.5 · 10) / 12 = 0.583. Exact float equality breaks the ties by rounding error (0.708)."""
    ramp = np.linspace(0, 1, 8, dtype=np.float32).astype(np.float64)
    steps = np.diff(ramp, prepend=0.0)
    planted = np.isin(np.arange(8), [4, 5])
    assert ground_truth.auroc(steps, planted) == pytest.approx(7 / 12)
    assert pairwise_auroc(steps, planted) == pytest.approx(8.5 / 12)  # what exact equality gives
    assert pairwise_auroc(steps, planted, tolerance=1e-6) == pytest.approx(7 / 12)


def test_auroc_of_one_class_is_nan() -> None:
    assert np.isnan(ground_truth.auroc(np.arange(3.0), np.ones(3, dtype=bool)))


def test_usable_clips_are_the_clips_sample_coverage_keeps() -> None:
    results = synthetic_results(n_samples=12, null=False)
    runs = results["baseline"].sel(metric="logit_diff").copy()
    runs[0, 1] = 1.0  # conflict run already prefers the sound
    runs[1, 0] = -0.5  # clean run does not
    runs[2, 0], runs[2, 1] = 0.005, -0.005  # the right way, by far less than 5% of the median
    results["baseline"].loc[{"metric": "logit_diff"}] = runs
    usable = ground_truth.usable_clips(runs.sel(run="clean"), runs.sel(run="conflict"))
    coverage = sample_coverage(results)
    excluded = {sample for ids in coverage.excluded.values() for sample in ids}
    assert set(results["sample"].values[~usable.values]) == excluded == {"s0000", "s0001", "s0002"}
    assert int(usable.sum()) == coverage.used == 9
    assert coverage.excluded[GAP_TOO_SMALL] == ("s0002",)  # each rule was exercised


def test_usable_clips_of_no_suppression_are_none() -> None:
    clean = xr.DataArray([2.0, 3.0], dims="sample")
    assert not ground_truth.usable_clips(clean, clean + 1).any()
