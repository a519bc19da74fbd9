"""The kinds of planted truth beyond one video window: windows from layer 0 (the audio side),
separated windows, sound-swap studies, and a suite of at least ten organisms of four kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from patchwork.analysis import synthetic_results
from patchwork.bench import SUITE, Organism, grade
from patchwork.bench.suite import study_text, window_error

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
    # located 3 layers before the planted layer 3, which it misses: 3 + 1
    assert grade(late, "exact", results)["error_layers"] == 4


@pytest.mark.parametrize(("step_layer", "error"), [(5, 1), (1, 2), (3, 4)])
def test_separated_windows_count_located_layers_outside_every_span(step_layer, error):
    """One step finds one window: the layers of the span it misses count as error (1 for the
    span 1, 2 for the span 5-6), and so do located layers outside every span (layer 3)."""
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


def test_interleaved_organisms_train_on_interleaved_clips():
    """The audio-in-video organisms' training options are a valid configuration that lays the
    clips out interleaved; their audio side studies the same model."""
    from patchwork.testbed.train import TrainConfig

    interleaved = [o for o in SUITE if o.train.get("audio_in_video")]
    assert [o.name for o in interleaved] == ["window 2-3 audio-in-video"]
    assert TrainConfig(**interleaved[0].train).audio_in_video is True
    audio = [o for o in SUITE if o.model_of == interleaved[0].name]
    assert [(o.swap, o.spans) for o in audio] == [("sound", ((0, 1),))]


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


def test_two_located_windows_recover_two_spans():
    """The located windows 1 and 5-6 are the planted spans exactly; bridging them costs the
    layers between; a window that reaches past a span costs its extra layers."""
    spans = ((1, 1), (5, 6))
    assert window_error([(1, 1), (5, 6)], spans) == 0
    assert window_error([(1, 5)], spans) == 3
    assert window_error([(1, 1), (5, 7)], spans) == 1
    assert window_error([(0, 1)], spans) == 3


def test_a_profile_with_both_steps_grades_exact():
    """0.8 of the gap comes back at layer 1 and the rest in layer 5 (as on the trained windows
    1+5-6, where layer 1 decides most clips): both spans are located, error 0."""
    results = synthetic_results(
        n_samples=32, step_layer=1, steps={("answer", "residual"): (0.0, 0.8)}, null=False
    )
    runs = results["baseline"].sel(metric="logit_diff")
    gap = runs.sel(run="clean", drop=True) - runs.sel(run="conflict", drop=True)
    later = {"position_group": "answer", "component": "residual", "layer": slice(5, None)}
    for metric, step in (("normalized_effect", 0.2), ("logit_diff", 0.2 * gap)):
        where = {**later, "metric": metric}
        results["effect"].loc[where] = results["effect"].loc[where] + step
    graded = grade(SEPARATED, "exact", results)
    assert (graded["status"], graded["error_layers"]) == ("located", 0)
