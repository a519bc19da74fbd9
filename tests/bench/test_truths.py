"""The kinds of planted truth beyond one video window: windows from layer 0 (the audio side),
separated windows, sound-swap studies, and a suite of at least ten organisms of four kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from patchwork.analysis import synthetic_results
from patchwork.bench import SUITE, Organism, grade
from patchwork.bench.suite import study_text

AUDIO = Organism("audio 0-1", window=(0, 1), swap="sound", position_group="text_and_answer")
SEPARATED = Organism("windows 1+5-6", window=((1, 1), (5, 6)))


def test_a_window_that_starts_at_layer_0_is_located():
    """The rise of a window at layer 0 lies before the first stored layer: the grade reads it
    from the embeddings (patched there, nothing changes), not as "none"."""
    results = synthetic_results(
        step_layer=0,
        steps={("text_and_answer", "residual"): (0.0, 1.0)},
        position_groups=("text_and_answer",),
        components=("residual",),
        null=False,
    )
    graded = grade(AUDIO, "exact", results)
    assert (graded["status"], graded["error_layers"]) == ("located", 0)
    late = Organism("audio 3", window=(3, 3), position_group="text_and_answer")
    assert grade(late, "exact", results)["error_layers"] == 3


@pytest.mark.parametrize(("step_layer", "error"), [(5, 0), (1, 0), (3, 1)])
def test_separated_windows_count_located_layers_outside_every_span(step_layer, error):
    """A located window in either span is exact; the layers between the spans count as error."""
    results = synthetic_results(
        step_layer=step_layer, steps={("answer", "residual"): (0.0, 1.0)}, null=False
    )
    graded = grade(SEPARATED, "exact", results)
    assert (graded["status"], graded["error_layers"]) == ("located", error)


def test_sound_side_and_separated_studies(tmp_path):
    from patchwork.study import load_study

    text = study_text(AUDIO, tmp_path, "exact", 8)
    assert "conflict: {audio: other_category, picture: blank}" in text
    assert "position_groups: [text_and_answer]" in text
    knockout = study_text(AUDIO, tmp_path, "knockout", 8)
    assert "keys: [audio], layers: [0, 1]}" in knockout
    separated = study_text(SEPARATED, tmp_path, "knockout", 8)
    assert "keys: [video], layers: [1, 5, 6]}" in separated
    assert "keys: [video], layers: [0, 2, 3, 4, 7]}" in separated
    for number, study in enumerate((text, knockout, separated)):
        path = tmp_path / f"study{number}.yaml"
        path.write_text(study.replace(f"checkpoint: {tmp_path}", "checkpoint: testbed"))
        load_study(path)


def test_the_suite_has_ten_organisms_of_four_kinds_of_truth():
    names = [organism.name for organism in SUITE]
    assert len(set(names)) == len(names) >= 10
    kinds = {
        (organism.swap, "heads" if organism.heads else len(organism.spans))
        for organism in SUITE
        if organism.heads or organism.window
    }
    assert {("picture", 1), ("picture", 2), ("picture", "heads"), ("sound", 1)} <= kinds
    trained = {organism.name for organism in SUITE if organism.train}
    assert all(o.model_of in trained for o in SUITE if o.model_of is not None)
    assert all("time_budget" not in organism.train for organism in SUITE)


def test_every_grade_read_from_clips_has_an_interval_over_them(bench_run):
    results, out = bench_run
    stored_grades = xr.open_zarr(out / "bench.zarr").load()
    for organism, method, name in [
        ("window 4-5", "exact", "auroc"),
        ("window 4-5", "knockout", "inside"),
        ("audio 0-2", "knockout", "outside"),
        ("heads 4:1 4:3", "head_patching", "first_planted"),
        ("heads 4:1 4:3", "head_knockout", "planted_share"),
    ]:
        row = stored_grades.sel(organism=organism, technique=method)
        low, value, high = (float(row[key]) for key in (f"{name}_low", name, f"{name}_high"))
        assert low <= value <= high, (organism, method, name)
    row = stored_grades.sel(organism="window 4-5", technique="exact")
    assert float(row["auroc_high"]) - float(row["auroc_low"]) < 0.2


def test_the_table_shows_each_interval_beside_its_grade():
    import io

    from rich.console import Console

    from patchwork.bench.run import _dataset
    from patchwork.bench.suite import GRADES
    from patchwork.cli.bench import bench_table, print_uncut

    grades = {**dict.fromkeys(GRADES, float("nan")), "status": "located", "error_layers": 0.0}
    grades.update(auroc=0.875, auroc_low=0.8125, auroc_high=0.9375, samples_used=16)
    grades["samples_total"] = 16
    buffer = io.StringIO()
    print_uncut(
        Console(file=buffer),
        bench_table(_dataset({("w", "exact"): grades}, ["w"]), "t", out=Path("out")),
    )
    assert "0.875 [0.812, 0.938]" in buffer.getvalue()
