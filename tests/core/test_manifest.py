"""Manifest datasets: media files through the users' loader into a sweep; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patchwork import DataError, open_results, run_study
from patchwork.data.media import save_audio, save_frame

from .helpers import study_text


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
