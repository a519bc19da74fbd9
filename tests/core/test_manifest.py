"""Manifest datasets: media files through the users' loader into a sweep; clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from patchwork import DataError, open_results, run_study
from patchwork.data.media import save_audio, save_frame

from .clips import truncated_mp4
from .helpers import study_text
from .hostile import patchwork_main, refused


def make_media(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dog", "bird"):
        save_audio(folder / f"{name}.wav", 0.3 * rng.standard_normal(6400).astype(np.float32))
    for name in ("blank", "cat", "fish"):
        save_frame(folder / f"{name}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))


def manifest_rows() -> list[dict]:
    return [
        {
            "id": f"{sound}-vs-{picture}",
            "audio_answer": "woof",
            "visual_answer": "meow",
            "runs": {
                "clean": {"audio": f"media/{sound}.wav", "frames": ["media/blank.png"]},
                "conflict": {"audio": f"media/{sound}.wav", "frames": [f"media/{picture}.png"]},
            },
        }
        for sound, picture in (("dog", "cat"), ("bird", "fish"))
    ]


def study_with_manifest(tmp_path: Path, rows: list[dict], suffix: str = "jsonl") -> Path:
    manifest = tmp_path / f"samples.{suffix}"
    if suffix == "jsonl":
        manifest.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    else:
        header = (
            "id,audio_answer,visual_answer,clean.audio,clean.frames,conflict.audio,conflict.frames"
        )
        lines = [header] + [
            ",".join(
                [
                    r["id"],
                    r["audio_answer"],
                    r["visual_answer"],
                    r["runs"]["clean"]["audio"],
                    ";".join(r["runs"]["clean"]["frames"]),
                    r["runs"]["conflict"]["audio"],
                    ";".join(r["runs"]["conflict"]["frames"]),
                ]
            )
            for r in rows
        ]
        manifest.write_text("\n".join(lines) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text(
        study_text(layers=2, samples=2).replace("generator: random", f"manifest: samples.{suffix}")
    )
    return study


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_manifest_runs_end_to_end(tmp_path: Path, suffix: str) -> None:
    from patchwork import load_study

    make_media(tmp_path / "media")
    study = load_study(study_with_manifest(tmp_path, manifest_rows(), suffix))
    results = open_results(run_study(study, tmp_path / "store").store).load()
    assert list(results["sample"].values) == ["dog-vs-cat", "bird-vs-fish"]
    assert list(results["audio_answer"].values) == ["woof", "woof"]
    assert np.isfinite(results["effect"].values).all()


def test_a_missing_media_file_is_named_with_sample_and_line(tmp_path: Path) -> None:
    from patchwork import load_study

    make_media(tmp_path / "media")
    rows = manifest_rows()
    rows[1]["runs"]["conflict"]["frames"] = ["media/whale.png"]
    study = load_study(study_with_manifest(tmp_path, rows))
    with pytest.raises(DataError) as caught:
        run_study(study, tmp_path / "store")
    message = str(caught.value)
    assert "samples.jsonl:2" in message and "bird-vs-fish" in message
    assert str(tmp_path / "media" / "whale.png") in message
    assert not (tmp_path / "store" / "tiny.zarr").exists()


def test_a_row_missing_a_field_is_named(tmp_path: Path) -> None:
    from patchwork import load_study

    rows = manifest_rows()
    del rows[0]["visual_answer"]
    study = load_study(study_with_manifest(tmp_path, rows))
    with pytest.raises(
        DataError, match=r"samples.jsonl:1: row lacks field\(s\) \['visual_answer'\]"
    ):
        run_study(study, tmp_path / "store")


def test_an_unreadable_audio_file_is_named(tmp_path: Path) -> None:
    from patchwork import load_study

    make_media(tmp_path / "media")
    (tmp_path / "media" / "dog.wav").write_bytes(b"not a wav")
    study = load_study(study_with_manifest(tmp_path, manifest_rows()))
    with pytest.raises(
        DataError, match=r"(cannot read audio file|cannot decode audio of) .*dog\.wav"
    ):
        run_study(study, tmp_path / "store")


def test_a_row_question_overrides_the_study_question(tmp_path: Path) -> None:
    from patchwork import load_study
    from patchwork.loading.manifest import load_manifest
    from patchwork.loading.model import load_model

    make_media(tmp_path / "media")
    rows = manifest_rows()
    rows[1]["question"] = "what do you see now"
    study = load_study(study_with_manifest(tmp_path, rows))
    loaded = load_model(study.model)
    first, second = (s.runs["conflict"]["input_ids"] for s in load_manifest(study, loaded))
    question = loaded.token_ids("what do you see now")
    assert second[0, -len(question) :].tolist() == question
    assert first.shape[1] == second.shape[1] - 1


def test_the_same_manifest_study_spelled_another_way_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchwork import load_study
    from patchwork.study import study_hash

    make_media(tmp_path / "media")
    study_with_manifest(tmp_path, manifest_rows())
    monkeypatch.chdir(tmp_path)
    first = load_study(Path("study.yaml"))
    run_study(first, store_root=tmp_path / "store")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    again = load_study(Path("../sub/../study.yaml"))
    assert study_hash(again) == study_hash(first)
    summary = run_study(again, store_root=tmp_path / "store")
    assert summary.units_run == 0
    # its meaning changed: another row is another study
    before = study_hash(first)
    (tmp_path / "samples.jsonl").write_text(
        (tmp_path / "samples.jsonl").read_text().replace("woof", "meow", 1)
    )
    assert study_hash(load_study(tmp_path / "study.yaml")) != before


def _odd_path(path: Path, kind: str) -> None:
    """Make ``path`` a folder, a FIFO, a link to itself or a link to ``/dev/zero``."""
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":  # a manifest's once ended in a RuntimeError traceback (issue 28)
        path.symlink_to(path.name)
    else:
        path.symlink_to("/dev/zero")


ODD_PATHS = {
    "directory": "is a directory",
    "fifo": "is a FIFO (named pipe), not a regular file",
    "device": "is a character device, not a regular file",
    "loop": "cannot be read (Too many levels of symbolic links)",
}


@pytest.mark.parametrize("kind", sorted(ODD_PATHS))
@pytest.mark.parametrize("field", ["audio", "frames"])
def test_a_media_path_that_is_not_a_file_is_named_for_what_it_is(
    tmp_path: Path, kind: str, field: str
) -> None:
    """Such paths were reported as "not found" (and a FIFO could make a decoder wait)."""
    make_media(tmp_path / "media")
    _odd_path(tmp_path / "media" / "odd", kind)
    rows = manifest_rows()
    rows[1]["runs"]["conflict"][field] = ["media/odd"] if field == "frames" else "media/odd"
    outcome = patchwork_main("validate", study_with_manifest(tmp_path, rows))
    what = "audio" if field == "audio" else "image"
    refused(
        outcome, "samples.jsonl:2: sample bird-vs-fish", f"{what} file {tmp_path / 'media' / 'odd'}"
    )
    assert ODD_PATHS[kind] in outcome.line


@pytest.mark.parametrize("kind", sorted(ODD_PATHS))
def test_a_manifest_that_is_not_a_file_is_named_for_what_it_is(tmp_path: Path, kind: str) -> None:
    study = study_with_manifest(tmp_path, manifest_rows())
    (tmp_path / "samples.jsonl").unlink()
    _odd_path(tmp_path / "samples.jsonl", kind)
    refused(patchwork_main("validate", study), "dataset.manifest: manifest " + ODD_PATHS[kind])


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e300])
def test_image_features_that_are_not_finite_are_refused(
    tmp_path: Path, suffix: str, value: float
) -> None:
    """NaN or infinite features (a float64 beyond float32's range too) once passed validate."""
    from safetensors.numpy import save_file

    make_media(tmp_path / "media")
    features = np.zeros((1, 4, 8), np.float64)
    features[0, 2, 5] = value
    path = tmp_path / "media" / f"features{suffix}"
    if suffix == ".npy":
        np.save(path, features)
    else:
        save_file({"features": features}, str(path))
    rows = manifest_rows()
    rows[1]["runs"]["conflict"]["image_features"] = f"media/features{suffix}"
    study = study_with_manifest(tmp_path, rows)
    expected = ("samples.jsonl:2: sample bird-vs-fish", f"features {path} hold 1 NaN or infinite")
    refused(patchwork_main("validate", study), *expected)
    refused(patchwork_main("run", study, "--store", tmp_path / "store"), *expected)
    assert not (tmp_path / "store" / "tiny.zarr").exists()


@pytest.mark.parametrize("seconds", [1.0, None])
def test_a_truncated_video_is_refused_at_validate(tmp_path: Path, seconds: float | None) -> None:
    """An mp4 cut in half whose header still counts every frame once passed validate when the
    run used only the frames before the cut."""
    make_media(tmp_path / "media")
    clip = truncated_mp4(tmp_path / "media" / "clip.mp4")
    rows = manifest_rows()
    for row in rows:
        for run in row["runs"].values():
            del run["frames"]
            run["video"] = "media/clip.mp4"
            if seconds is not None:
                run["seconds"] = seconds
    refused(
        patchwork_main("validate", study_with_manifest(tmp_path, rows)),
        "samples.jsonl:1: sample dog-vs-cat",
        f"{clip}: damaged or truncated",
    )
