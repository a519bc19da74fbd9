"""Controls that can fail and grades that refuse to pass on too few clips: the ``control``
organism (``testbed-windowed`` patched at its audio positions, which come before the picture)
has every clip usable and grades ``nothing`` for exact patching, and ``spurious`` once a step is
planted in its own stored results; a grade from fewer than ``MIN_USABLE`` usable clips is
``untestable`` — for a perfect window as for a control."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from patchwork.analysis import synthetic_results
from patchwork.bench import MIN_USABLE, SUITE, Organism, grade

from .conftest import CLIPS, stored

CONTROL = next(organism for organism in SUITE if organism.name == "control")
HEADS = next(organism for organism in SUITE if organism.heads is not None)


def with_step(results: xr.Dataset, group: str, layer: int, size: float) -> xr.Dataset:
    """``results`` with a planted, spurious rise: patching ``group``'s residual stream at
    ``layer`` and after restores ``size`` more of each clip's clean − conflict gap (logit
    difference and normalized effect alike)."""
    doctored = results.copy(deep=True)
    runs = doctored["baseline"].sel(metric="logit_diff")
    gap = runs.sel(run="clean") - runs.sel(run="conflict")
    rise = xr.where(doctored["layer"] >= layer, size, 0.0)
    cell = {"position_group": group, "component": "residual"}
    for metric, added in (("normalized_effect", rise), ("logit_diff", rise * gap)):
        where = {**cell, "metric": metric}
        doctored["effect"].loc[where] = doctored["effect"].loc[where] + added
    return doctored


@pytest.mark.parametrize("method", ["exact", "attribution", "attribution+verify"])
def test_the_control_finds_nothing_with_every_clip_usable(bench_run, method):
    results, _ = bench_run
    row = results.sel(organism="control", technique=method)
    assert str(row["status"].values) == "nothing"
    assert int(row["samples_used"]) == int(row["samples_total"]) == CLIPS


def test_the_control_grades_a_planted_spurious_step_spurious(bench_run):
    _, out = bench_run
    exact = stored(out, "control", "exact")
    profile = exact["effect"].sel(
        position_group="audio", component="residual", metric="normalized_effect"
    )
    assert float(abs(profile).max()) == 0.0  # the null holds exactly: nothing to patch
    assert grade(CONTROL, "exact", exact)["status"] == "nothing"
    assert grade(CONTROL, "exact", with_step(exact, "audio", 5, 0.8))["status"] == "spurious"
    # a step below the floor (a tenth of the gap) is no finding
    assert grade(CONTROL, "exact", with_step(exact, "audio", 5, 0.05))["status"] == "nothing"


def test_the_grader_reads_the_controls_group_from_synthetic_profiles():
    flat = synthetic_results(steps={("audio", "residual"): (0.0, 0.0)}, null=False)
    stepped = synthetic_results(steps={("audio", "residual"): (0.0, 1.0)}, null=False)
    assert grade(CONTROL, "exact", flat)["status"] == "nothing"
    assert grade(CONTROL, "exact", stepped)["status"] == "spurious"
    window = Organism("window", window=(5, 5))
    answer = synthetic_results(steps={("answer", "residual"): (0.0, 1.0)}, null=False)
    graded = grade(window, "exact", answer)
    assert (graded["status"], graded["error_layers"]) == ("located", 0)
    assert graded["auroc"] >= 0.9
    assert grade(Organism("early", window=(1, 2)), "exact", answer)["error_layers"] >= 3


def with_usable(results: xr.Dataset, usable: int) -> xr.Dataset:
    """``results`` whose conflict runs already prefer the sound in all but ``usable`` clips."""
    doctored = results.copy(deep=True)
    cell = {"run": "conflict", "metric": "logit_diff"}
    conflict = doctored["baseline"].loc[cell].values
    conflict[usable:] = np.abs(conflict[usable:]) + 1.0
    doctored["baseline"].loc[cell] = conflict
    return doctored


def test_too_few_usable_clips_grade_untestable_never_a_pass():
    stepped = synthetic_results(
        n_samples=12, steps={("answer", "residual"): (0.0, 1.0)}, null=False
    )
    window = Organism("window", window=(5, 5))
    enough = grade(window, "exact", with_usable(stepped, MIN_USABLE))
    assert (enough["status"], enough["samples_used"], enough["samples_total"]) == (
        "located",
        MIN_USABLE,
        12,
    )
    few = grade(window, "exact", with_usable(stepped, MIN_USABLE - 1))
    assert (few["status"], few["samples_used"], few["samples_total"]) == (
        "untestable",
        MIN_USABLE - 1,
        12,
    )
    assert np.isnan(few["error_layers"]) and np.isnan(few["auroc"])
    # a control with no usable clip (the old control: every conflict run prefers the sound) is
    # untestable, not "nothing", however its profile looks
    for profile in (stepped, synthetic_results(n_samples=12, steps={}, null=False)):
        assert grade(CONTROL, "exact", with_usable(profile, 0))["status"] == "untestable"


def test_head_grades_below_the_stated_number_of_clips_are_untestable(bench_run):
    _, out = bench_run
    patched = stored(out, "heads 4:1 4:3", "head_patching")
    assert grade(HEADS, "head_patching", patched)["first_planted"] == 1.0
    graded = grade(HEADS, "head_patching", patched, min_usable=CLIPS - 1)
    assert (graded["status"], graded["samples_used"]) == ("untestable", CLIPS - 2)
    assert np.isnan(graded["first_planted"]) and np.isnan(graded["planted_share"])
