"""``patchwork pairs``: labelled clips → a counterfactual manifest that validates and runs."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from patchwork import DataError, load_study, open_results, run_study
from patchwork.cli import _register_subcommands, app
from patchwork.loading.clips import Clip, Dropped, find_clips, measure, read_words
from patchwork.loading.pairs import pair_clips

from .clips import labelled_folder, truncated_mp4, write_mp4
from .hostile import patchwork_main, refused

_register_subcommands()
cli = CliRunner()

STUDY = """\
name: pairs-tiny
model:
  family: qwen2_5_omni
  random_init: {layers: 1, hidden_size: 32, heads: 2, kv_heads: 1, seed: 1}
dataset:
  manifest: pairs.jsonl
interventions:
  - kind: activation_patching
    from: clean
    into: conflict
    components: [residual]
    layers: all
    position_groups: [audio, video, answer]
    noise_floor: mismatched
execution: {batch_size: 8, unit_size: 6, seed: 0}
"""


def command(*arguments: str | Path, code: int = 0) -> str:
    result = cli.invoke(app, [str(argument) for argument in arguments])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve labelled clips: 64×48, 80×48 and 48×64 px; 10, 25, 29.97 and 30 fps; 1.8–3 s;
    sound at 16, 22.05, 44.1 and 48 kHz, mono and stereo."""
    return labelled_folder(tmp_path_factory.mktemp("own") / "clips")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_twelve_mixed_clips_give_a_manifest_that_validates_and_runs(
    clips: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    manifest = tmp_path / "pairs.jsonl"
    report = command("pairs", clips, "--out", manifest, "--study", study, "--seed", "1")
    assert "12 rows, 4 per label" in report
    assert "single tokens of random_init" in report
    assert "frame_size [48, 64] (height, width): the most common (6 of 12 clips)" in report
    assert "seconds 1.5: the shortest usable clip (1.80 s)" in report
    assert "left out" not in report

    written = rows(manifest)
    assert len(written) == 12
    # one frame size and one length in every run: one token layout for every row
    settings = {
        (run["seconds"], tuple(run["frame_size"])) for r in written for run in r["runs"].values()
    }
    assert settings == {(1.5, (48, 64))}
    for row in written:
        clean, conflict = row["runs"]["clean"], row["runs"]["conflict"]
        assert conflict["audio"] == clean["video"] and conflict["video"] != clean["video"]
        assert row["audio_answer"] == Path(clean["video"]).parent.name
        assert row["visual_answer"] == Path(conflict["video"]).parent.name
        assert row["audio_answer"] != row["visual_answer"]
        assert (manifest.parent / clean["video"]).is_file()
    # balanced: every label is heard four times and seen four times, every clip is heard once
    assert Counter(r["audio_answer"] for r in written) == {"dog": 4, "cat": 4, "bird": 4}
    assert Counter(r["visual_answer"] for r in written) == {"dog": 4, "cat": 4, "bird": 4}
    assert len({r["runs"]["clean"]["video"] for r in written}) == 12

    assert "is valid for random_init (1 layers, 12 samples)" in command("validate", study)
    results = open_results(run_study(load_study(study), tmp_path / "store").store).load()
    assert results.sizes["sample"] == 12
    assert np.isfinite(results["effect"].values).all()
    # every row shares the layout, so every sample found noise-floor partners
    assert np.isfinite(results["null_effect"].values).all()


def test_pairs_are_seeded(clips: Path, tmp_path: Path) -> None:
    first, again, other = (tmp_path / f"{name}.jsonl" for name in ("first", "again", "other"))
    pair_clips(clips, first, seed=4)
    pair_clips(clips, again, seed=4)
    pair_clips(clips, other, seed=5)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_clips_that_cannot_serve_are_left_out_with_their_reason(tmp_path: Path) -> None:
    folder = labelled_folder(tmp_path / "clips", labels=("dog", "cat"))
    write_mp4(folder / "dog" / "short.mp4", 64, 48, 25.0, 0.6)
    write_mp4(folder / "cat" / "silent.mp4", 64, 48, 25.0, 2.5, audio_rate=None)
    (folder / "cat" / "broken.mp4").write_bytes(b"not a video at all")
    (folder / "cat" / "notes.txt").write_text("labels by hand")
    write_mp4(folder / "fish" / "fish0.mp4", 64, 48, 25.0, 2.5)
    (folder / "loose.mp4").write_bytes(b"")
    words = tmp_path / "words.yaml"
    words.write_text("dog: woof\ncat: meow\n")

    report = pair_clips(folder, tmp_path / "pairs.jsonl", words=words, per_label=9, seed=0)
    reasons = {dropped.name: dropped.reason for dropped in report.dropped}
    assert reasons["dog/short.mp4"].startswith("too short: 0.6")
    assert reasons["cat/silent.mp4"].startswith("no soundtrack")
    assert reasons["cat/broken.mp4"].startswith("unreadable")
    assert reasons["cat/notes.txt"] == "not a video file"
    assert reasons["fish/fish0.mp4"] == "label 'fish' has no word in the word map"
    assert any(name.endswith("loose.mp4") for name in reasons)
    assert report.rows == 8 and report.per_label == 4
    assert report.words == {"cat": "meow", "dog": "woof"}
    assert report.checked_with is None
    lines = "\n".join(report.lines())
    assert "not checked against a model" in lines
    assert "--per-label 9" in lines and "left out 6:" in lines
    assert {r["audio_answer"] for r in rows(tmp_path / "pairs.jsonl")} == {"woof", "meow"}


def test_words_are_checked_against_the_models_tokenizer(clips: Path, tmp_path: Path) -> None:
    """The testbed's word-level tokenizer: a word it lacks, and two labels sharing a word."""
    words = tmp_path / "words.csv"
    words.write_text("label,word\ndog,bark\ncat,xyzzy\nbird,bark\n")
    with pytest.raises(DataError, match="at least two labels, found \\['bird'\\]") as caught:
        pair_clips(clips, tmp_path / "pairs.jsonl", words=words, loaded=_testbed())
    assert "4 × answer word 'xyzzy' of label 'cat': ['xyzzy'] not in the model's vocabulary" in (
        str(caught.value)
    )
    words.write_text("label,word\ndog,bark\ncat,moo\nbird,bark\n")
    report = pair_clips(clips, tmp_path / "pairs.jsonl", words=words, loaded=_testbed())
    reasons = {dropped.label: dropped.reason for dropped in report.dropped}
    assert reasons == {
        "dog": "answer word 'bark' of label 'dog' is the same token as label 'bird''s"
    }
    assert report.checked_with == "testbed" and report.rows == 8


def _testbed():  # type: ignore[no-untyped-def]
    from patchwork.loading.pairs import checkpoint_model

    return checkpoint_model("testbed")


def test_a_csv_of_clips_and_given_choices(clips: Path, tmp_path: Path) -> None:
    table = tmp_path / "clips.csv"
    listed = sorted(clips.rglob("*.mp4"))
    table.write_text(
        "path,label\n"
        + "".join(f"{path},{path.parent.name}\n" for path in listed)
        + "gone.mp4,dog\n"
    )
    out = tmp_path / "out" / "pairs.jsonl"
    report = pair_clips(table, out, frame_size=(56, 72), seconds=2.0, fps=4.0, audio_in_video=True)
    assert [d.reason for d in report.dropped].count("clips.csv:14: file not found") == 1
    too_short = [d.name for d in report.dropped if d.reason.startswith("too short")]
    assert len(too_short) == 3  # the 1.8 s clips
    runs = [run for row in rows(out) for run in row["runs"].values()]
    assert {
        (tuple(r["frame_size"]), r["seconds"], r["fps"], r["audio_in_video"]) for r in runs
    } == {((56, 72), 2.0, 4.0, True)}
    assert all(not run["video"].startswith("/") for run in runs)  # relative to the manifest
    assert (out.parent / runs[0]["video"]).resolve().is_file()


def test_measure_reads_size_rate_and_usable_length(tmp_path: Path) -> None:
    clip = write_mp4(tmp_path / "a" / "x.mp4", 80, 48, 30000 / 1001, 2.5, audio_rate=48_000)
    measured = measure(Clip(clip, "a"))
    assert isinstance(measured, Clip)
    assert (measured.width, measured.height) == (80, 48)
    assert measured.fps == pytest.approx(29.97, abs=0.01)
    assert measured.seconds == pytest.approx(2.5, abs=0.1)
    assert isinstance(measure(Clip(tmp_path / "a" / "none.mp4", "a")), Dropped)


def test_word_maps_and_sources_are_read_or_refused(tmp_path: Path) -> None:
    yaml_map = tmp_path / "words.yaml"
    yaml_map.write_text("dog: woof\ncat: 7\n")
    assert read_words(yaml_map) == {"dog": "woof", "cat": "7"}
    yaml_map.write_text("- dog\n- cat\n")
    with pytest.raises(DataError, match="expected a mapping of label: word"):
        read_words(yaml_map)
    csv_map = tmp_path / "words.csv"
    csv_map.write_text("dog,woof,extra\n")
    with pytest.raises(DataError, match="words.csv:1: expected label,word"):
        read_words(csv_map)
    with pytest.raises(DataError, match="no such folder or CSV"):
        find_clips(tmp_path / "missing")
    bad = tmp_path / "clips.csv"
    bad.write_text("file,class\na.mp4,dog\n")
    with pytest.raises(DataError, match="clips.csv:1: needs columns path and label"):
        find_clips(bad)


def test_the_command_says_mistakes_in_one_line(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    assert "pairs writes a JSONL manifest" in command(
        "pairs", clips, "--out", tmp_path / "pairs.csv", code=2
    )
    assert "--frame-size: expected HEIGHTxWIDTH" in command(
        "pairs", clips, "--out", out, "--frame-size", "wide", code=2
    )
    assert "give --study or --checkpoint, not both" in command(
        "pairs", clips, "--out", out, "--study", "s.yaml", "--checkpoint", "testbed", code=2
    )
    assert "no config.json" in command(
        "pairs", clips, "--out", out, "--checkpoint", tmp_path, code=2
    )
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64)])
def test_seeds_out_of_bounds_are_refused_in_one_line(
    clips: Path, tmp_path: Path, seed: str
) -> None:
    """``pairs --seed -1`` was once accepted (Python's generator takes any integer)."""
    out = tmp_path / "pairs.jsonl"
    refused(patchwork_main("pairs", clips, "--out", out, "--seed", seed), "--seed")
    assert not out.exists()
    with pytest.raises(DataError, match=r"--seed must be an integer in \[0, "):
        pair_clips(clips, out, seed=int(seed))


def test_a_truncated_clip_is_left_out_without_a_model(tmp_path: Path) -> None:
    """Without --study or --checkpoint a clip cut short was written into the manifest as
    usable: its header still gave its whole length."""
    folder = labelled_folder(tmp_path / "clips", labels=("dog", "cat"))
    truncated_mp4(folder / "dog" / "cut.mp4", seconds=2.5)
    os.mkfifo(folder / "cat" / "pipe.mp4")
    report = pair_clips(folder, tmp_path / "pairs.jsonl", seed=0)
    reasons = {dropped.name: dropped.reason for dropped in report.dropped}
    assert reasons["dog/cut.mp4"].startswith("damaged or truncated")
    assert reasons["cat/pipe.mp4"] == "the path is a FIFO (named pipe), not a regular file"
    assert "cut.mp4" not in (tmp_path / "pairs.jsonl").read_text()


@pytest.mark.parametrize("kind", ["folder", "fifo", "below a file"])
def test_an_out_that_cannot_be_the_manifest_is_refused_before_the_clips_are_read(
    clips: Path, tmp_path: Path, kind: str
) -> None:
    """`--out` naming a folder or a file's child once ended in a traceback after the clips were
    measured; naming a FIFO, the FIFO was silently replaced by the manifest."""
    out = tmp_path / "pairs.jsonl"
    if kind == "folder":
        out.mkdir()
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "pairs.jsonl"
    expected = {
        "folder": f"--out: {out} is a directory",
        "fifo": f"--out: {out} is a FIFO",
        "below a file": f"{tmp_path / 'f'} is a file, not a folder",
    }[kind]
    refused(patchwork_main("pairs", clips, "--out", out), expected)


def test_a_full_disk_while_the_manifest_is_written_is_one_line(
    clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write of the manifest once ended in a traceback and left its draft behind."""
    import errno

    def full_disk(self: Path, *arguments: object, **options: object) -> None:
        self.write_bytes(b"{")  # part of a row, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(DataError, match="pairs.jsonl: cannot write the manifest .No space left"):
        pair_clips(clips, out, seed=0)
    assert sorted(tmp_path.iterdir()) == []


def test_csv_sources_and_word_maps_with_a_huge_cell_are_one_line(
    clips: Path, tmp_path: Path
) -> None:
    """A CSV cell over Python's field limit (131,072 characters) once ended in `_csv.Error`."""
    source = tmp_path / "clips.csv"
    source.write_text(f"path,label\n{clips}/dog/a.mp4,{'d' * 200_000}\n")
    with pytest.raises(DataError, match=r"clips.csv:2: a cell over 131,072 characters"):
        find_clips(source)
    words = tmp_path / "words.csv"
    words.write_text(f"label,word\ndog,woof\ncat,{'m' * 200_000}\n")
    with pytest.raises(DataError, match=r"words.csv:3: a cell over 131,072 characters"):
        read_words(words)


def test_a_label_folder_linked_to_a_large_tree_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A label folder linked to `/` was once walked until a folder could not be listed (a
    traceback), or across the whole disk; a loop of links inside one is left out."""
    from patchwork.loading import clips as clip_files

    folder = labelled_folder(tmp_path / "clips", labels=("dog", "cat"))
    (folder / "cat" / "loop.mp4").symlink_to("loop.mp4")
    _, dropped = find_clips(folder)
    assert {d.name: d.reason for d in dropped}["cat/loop.mp4"].startswith("the path cannot be")
    tree = tmp_path / "tree"
    for index in range(6):
        (tree / str(index)).mkdir(parents=True)
    (folder / "root").symlink_to(tree)
    monkeypatch.setattr(clip_files, "MAX_SOURCE_FILES", 5)
    with pytest.raises(DataError, match="label folder 'root' holds over 5 files and folders"):
        find_clips(folder)


def test_word_maps_keep_every_word_as_written(tmp_path: Path) -> None:
    """YAML numbers were once rewritten: `dog: 0x10` gave the word 16, `010:` the label 10."""
    words = tmp_path / "words.yaml"
    words.write_text("dog: 0x10\n010: 1e3\ncat: 7\nbird: [a]\n")
    with pytest.raises(DataError, match="expected a mapping of label: word"):
        read_words(words)
    words.write_text("dog: 0x10\n010: 1e3\ncat: 7\n")
    assert read_words(words) == {"dog": "0x10", "010": "1e3", "cat": "7"}


def test_an_answer_word_a_manifest_refuses_leaves_its_label_out(
    clips: Path, tmp_path: Path
) -> None:
    """A 5,000-character word was once written into a manifest that validate then refused."""
    words = tmp_path / "words.csv"
    words.write_text(f"label,word\ndog,{'w' * 5000}\ncat,meow\nbird,tweet\n")
    report = pair_clips(clips, tmp_path / "pairs.jsonl", words=words, seed=0)
    reasons = {d.label: d.reason for d in report.dropped}
    assert reasons["dog"] == "answer word of label 'dog': at most 256 characters, got 5,000"
    assert "dog" not in report.words


@pytest.mark.parametrize("seconds", ["-1", "nan", "601"])
def test_min_seconds_out_of_range_is_refused(clips: Path, tmp_path: Path, seconds: str) -> None:
    """`--min-seconds -1` was once accepted (and read as 0)."""
    out = tmp_path / "pairs.jsonl"
    refused(patchwork_main("pairs", clips, "--out", out, "--min-seconds", seconds), "--min-seconds")
    assert not out.exists()
