"""The logit lens and path patching, graded against planted truth: on ``window 4-5`` the picture's
answer becomes decodable at the answer position exactly at the window's first layer (before it the
clean and conflict runs' residual streams there are the same), and on ``heads 4:1 4:3`` the
picture's paths into the answer run through the planted heads; each grader fails a profile or a
ranking that puts the truth elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from patchwork.analysis import ground_truth
from patchwork.bench import SUITE, grade
from patchwork.bench.lens import lens_departure, lens_pair
from patchwork.bench.suite import study_text

from .conftest import CLIPS, stored

WINDOW = next(organism for organism in SUITE if organism.name == "window 4-5")
HEADS = next(organism for organism in SUITE if organism.name == "heads 4:1 4:3")


def lens_results(out, organism: str = "window 4-5") -> xr.Dataset:
    """The clean and conflict lens studies ``run_bench`` stored, joined as it grades them."""
    return lens_pair(
        stored(out, organism, "logit_lens-clean"), stored(out, organism, "logit_lens-conflict")
    )


def test_the_logit_lens_finds_the_picture_decodable_from_the_windows_first_layer(bench_run):
    results, out = bench_run
    row = results.sel(organism="window 4-5", technique="logit_lens")
    assert float(row["lens_error"]) == 0.0
    assert (float(row["lens_error_low"]), float(row["lens_error_high"])) == (0.0, 0.0)
    assert int(row["samples_used"]) == int(row["samples_total"]) == CLIPS
    lens = lens_results(out)
    assert (lens_departure(lens).values == 4).all()
    # before the window the two runs' answer positions are the same residual stream: equal lens
    before = lens["lens_probability"].sel(lens_layer=[0, 1, 2, 3])
    assert float(abs(before.sel(lens_run="clean") - before.sel(lens_run="conflict")).max()) == 0.0


def test_a_lens_departing_at_the_wrong_layer_grades_an_error(bench_run):
    _, out = bench_run
    lens = lens_results(out)
    early = lens.copy(deep=True)  # the picture decodable from layer 2, two layers too early
    probability = early["lens_probability"]
    for layer in (2, 3):
        probability.loc[{"lens_run": "conflict", "lens_layer": layer}] = probability.sel(
            lens_run="conflict", lens_layer=4
        )
    assert grade(WINDOW, "logit_lens", early)["lens_error"] == 2.0
    late = lens.copy(deep=True)  # ... or only from layer 6
    probability = late["lens_probability"]
    for layer in (4, 5):
        probability.loc[{"lens_run": "conflict", "lens_layer": layer}] = probability.sel(
            lens_run="clean", lens_layer=layer
        )
    graded = grade(WINDOW, "logit_lens", late)
    assert graded["lens_error"] == graded["lens_error_low"] == 2.0
    assert grade(WINDOW, "logit_lens", lens)["lens_error"] == 0.0


def test_a_float_sized_lens_difference_is_no_departure(bench_run):
    """Differences at float32 resolution before the window (other kernels, other batches) do not
    count: the tolerance has an absolute floor, never a relative one around 0."""
    _, out = bench_run
    lens = lens_results(out)
    jittered = lens.copy(deep=True)
    probability = jittered["lens_probability"]
    where = {"lens_run": "conflict", "lens_layer": [0, 1, 2, 3], "lens_answer": "visual"}
    probability.loc[where] = probability.loc[where] * np.float32(1 + 1e-5)
    assert float(abs(jittered["lens_probability"] - lens["lens_probability"]).max()) > 0
    assert (lens_departure(jittered).values == 4).all()


def test_path_patching_routes_the_picture_through_the_planted_heads(bench_run):
    results, out = bench_run
    row = results.sel(organism="heads 4:1 4:3", technique="path_patching")
    assert float(row["first_planted"]) == 1.0
    assert float(row["planted_share"]) >= 0.9
    assert float(row["planted_share_low"]) <= float(row["planted_share"])
    assert int(row["samples_used"]) == CLIPS - 2  # the same clips as head patching
    paths = ground_truth.paths_restoration(stored(out, "heads 4:1 4:3", "path_patching"))
    # every sender layer 0-3 of the video positions into every head of a later layer
    assert paths.sizes["path"] == sum(4 * (8 - 1 - sender) for sender in range(4))


def test_path_patching_with_an_unplanted_path_first_grades_a_miss(bench_run):
    _, out = bench_run
    results = stored(out, "heads 4:1 4:3", "path_patching")
    doctored = results.copy(deep=True)
    runs = doctored["path_baseline"].sel(metric="logit_diff")
    toward = np.sign(runs.isel(path_run=0) - runs.isel(path_run=1))
    cell = {
        "sender": "residual",
        "sender_layer": 1,
        "receiver_layer": 6,
        "receiver_head": 2,
        "receiver_input": "values",
        "metric": "logit_diff",
    }  # an unplanted path restoring 100 logits in every clip
    doctored["path_effect"].loc[cell] = doctored["path_effect"].loc[cell] + 100.0 * toward
    graded = grade(HEADS, "path_patching", doctored)
    assert graded["first_planted"] == 0.0
    assert graded["planted_share"] < 0.6  # the planted paths hold about 12 logits each


def test_the_truth_as_paths_starts_at_every_sender_before_the_last_planted_head(tmp_path):
    two_layers = next(organism for organism in SUITE if organism.name == "heads 2:1 5:3")
    text = study_text(two_layers, tmp_path, "path_patching", 8)
    assert "sender_layers: [0, 1, 2, 3, 4]" in text and "sender_group: video" in text
    values = np.zeros((1, 2, 3, 2))  # (sample, sender_layer, layer, head)
    values[0, 0, 1, 0] = 1.0  # sender 0 → head 1:0, planted
    values[0, 1, 2, 1] = 3.0  # sender 1 → head 2:1, not
    cells = xr.DataArray(values, dims=("sample", "sender_layer", "layer", "head"))
    cells = cells.assign_coords(sample=["a"], sender_layer=[0, 1], layer=[0, 1, 2], head=[0, 1])
    paths = cells.stack(path=("sender_layer", "layer", "head"))
    paths = paths.isel(path=paths["layer"].values > paths["sender_layer"].values)
    graded = ground_truth.planted_path_recovery(paths, [(1, 0)])
    assert graded["first_planted"].tolist() == [False]
    np.testing.assert_allclose(graded["planted_share"], [0.25])
    with pytest.raises(ValueError, match="no path"):
        ground_truth.planted_path_recovery(paths, [(0, 0)])
