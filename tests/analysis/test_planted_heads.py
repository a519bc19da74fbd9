"""On ``testbed-heads``, whose answer reads the picture only through heads 4:1 and 4:3 (every other
text position never reads it), head patching, head knockout and path patching put the planted heads
first, clip by clip (:mod:`patchwork.analysis.ground_truth`), running the shipped
``studies/heads_planted.yaml``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import patchwork
from patchwork.analysis import ground_truth

PLANTED = [(4, 1), (4, 3)]

STUDY = Path(__file__).resolve().parents[2] / "studies" / "heads_planted.yaml"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    folder: Path = tmp_path_factory.mktemp("planted_heads")
    study = patchwork.load_study(STUDY)
    summary = patchwork.run_study(study, store_root=folder / "store")
    return patchwork.open_results(summary.store).load()


def test_head_patching_ranks_a_planted_head_first_and_gives_them_the_restoration(results):
    graded = ground_truth.planted_recovery(ground_truth.head_restoration(results), PLANTED)
    assert graded["first_planted"].mean() >= 0.9, graded
    assert (graded["planted_share"] >= 0.8).mean() >= 0.9, graded
    # Both planted heads in the top two: 26 of 32 clips. In the others one planted head alone
    # restores the whole gap (the other adds nothing there) or a late head outranks the weaker one.
    assert graded["planted_top"].mean() >= 0.75, graded


def test_head_knockout_ranks_a_planted_head_first_and_the_others_change_nothing(results):
    restored = ground_truth.knockout_restoration(results, "picture")
    assert restored.sizes == {"sample": 32, "layer": 8, "head": 4}
    graded = ground_truth.planted_recovery(restored, PLANTED)
    assert graded["first_planted"].mean() >= 0.9, graded
    assert (graded["planted_share"] >= 0.8).mean() >= 0.9, graded
    assert graded["planted_top"].mean() >= 0.75, graded
    unplanted = restored.stack(cell=("layer", "head"))
    keep = [cell not in PLANTED for cell in unplanted["cell"].values]
    gap = abs(results["knockout_baseline"].sel(metric="logit_diff").diff("knockout_run"))
    # The answer cannot read the picture through an unplanted head: blocking one changes nothing
    # beyond float error of a batched forward.
    assert float(abs(unplanted.isel(cell=keep)).max()) <= 1e-4 * float(gap.max())


@pytest.mark.parametrize("sender", [0, 1, 2, 3])
def test_path_patching_puts_the_restoration_through_the_planted_heads(results, sender):
    graded = ground_truth.planted_recovery(ground_truth.path_restoration(results, sender), PLANTED)
    assert (graded["planted_share"] >= 0.8).mean() >= 0.9, graded
    assert graded["first_planted"].mean() >= 0.9, graded


def test_planted_recovery_grades_clips():
    values = np.zeros((3, 2, 2))
    values[0, 1, 0], values[0, 0, 1] = 5.0, 1.0  # planted (1, 0) first, share 5/6
    values[1, 0, 0], values[1, 1, 0] = 2.0, 1.0  # an unplanted head first
    restoration = xr.DataArray(
        values, dims=("sample", "layer", "head"), coords={"sample": ["a", "b", "c"]}
    )
    graded = ground_truth.planted_recovery(restoration, [(1, 0)])
    assert graded["first_planted"].tolist() == [True, False, False]
    assert graded["planted_top"].tolist() == [True, False, False]
    np.testing.assert_allclose(graded["planted_share"].iloc[:2], [5 / 6, 1 / 3])
    assert np.isnan(graded["planted_share"].iloc[2])  # nothing restores: no share to grade
    with pytest.raises(ValueError, match=r"\(9, 9\)"):
        ground_truth.planted_recovery(restoration, [(9, 9)])


def test_the_noise_floor_lets_exactly_the_planted_heads_through(results):
    """Ranked with bootstrap intervals and the noise floor (a tenth of the gap, under a bound that
    holds for every head at once), exactly the planted heads carry the picture — by head patching,
    by single-head knockout and on every path from the picture."""
    from patchwork.analysis import method_figures

    heads = method_figures.rank_heads(results, "answer", n_resamples=300)
    carried = heads[heads["above_floor"]]
    assert set(zip(carried["layer"], carried["head"], strict=True)) == set(PLANTED)
    knocked = method_figures.rank_knockout_heads(results, "picture", n_resamples=300)
    carried = knocked[knocked["above_floor"]]
    assert set(zip(carried["first"], carried["head"].astype(int), strict=True)) == set(PLANTED)
    paths = method_figures.rank_paths(results, n_resamples=300)
    carried = paths[paths["above_floor"]]
    receivers = set(zip(carried["receiver_layer"], carried["receiver_head"], strict=True))
    assert receivers == set(PLANTED)
    assert len(carried) == 2 * 4  # into each planted head, from every sender layer 0-3
