"""Manifest rows (issue 28 item 1, issue 25): one schema for JSONL and CSV, the CSV spelling of
lists, flags and run fields, and one line naming file:line, sample and field for every hostile
row. The fuzzers below feed arbitrary JSON values and CSV cells into every field: each case loads
or fails with exactly one PatchworkError."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from patchwork.cli import app
from patchwork.data import containers
from patchwork.errors import DataError
from patchwork.loading.manifest_files import MAX_MANIFEST_BYTES, read_manifest
from patchwork.loading.manifest_schema import (
    ROW_FIELDS,
    RUN_FIELDS,
    RowLimits,
)

from .test_manifest import make_media, manifest_rows, study_with_manifest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "own-clips.md"


def documented_manifests() -> dict[str, str]:
    """The manifests of docs/own-clips.md by their caption (``samples.jsonl`` …)."""
    blocks = re.finditer(
        r"```\{code-block\} \w+\n:caption: (\S+)\n\n(.*?)```", DOCS.read_text(), re.S
    )
    return {match[1]: match[2] for match in blocks}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` (JSON rows) in the documented CSV spelling, written by the csv module."""

    def cell(field: str, value: Any) -> str:
        if field == "frames":
            return ";".join(value if isinstance(value, list) else [value])
        if field == "frame_size":
            return f"{value[0]}x{value[1]}"
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value) if isinstance(value, float) else str(value)

    flat = []
    for row in rows:
        cells = {key: str(value) for key, value in row.items() if key != "runs"}
        for run, fields in row["runs"].items():
            cells |= {f"{run}.{field}": cell(field, value) for field, value in fields.items()}
        flat.append(cells)
    columns = list(dict.fromkeys(column for cells in flat for column in cells))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, restval="")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


# --- one schema, two spellings --------------------------------------------------------------


@pytest.mark.parametrize("name", ["samples", "gemma"])
def test_the_documented_manifest_and_its_csv_twin_give_the_same_rows(
    tmp_path: Path, name: str
) -> None:
    manifests = documented_manifests()
    jsonl = read_manifest(write(tmp_path / f"{name}.jsonl", manifests[f"{name}.jsonl"]))
    from_csv = read_manifest(write(tmp_path / f"{name}.csv", manifests[f"{name}.csv"]))
    assert [entry.row for entry in jsonl] == [entry.row for entry in from_csv]
    assert [entry.line for entry in from_csv] == [entry.line + 1 for entry in jsonl]
    # what the rows hold is what json itself reads from the lines (None: a field not given)
    lines = manifests[f"{name}.jsonl"].splitlines()
    for entry, line in zip(jsonl, lines, strict=True):
        assert entry.row.model_dump(mode="json", exclude_none=True) == json.loads(line)


def test_the_documented_manifests_use_every_field() -> None:
    manifests = documented_manifests()
    rows = [json.loads(line) for name in manifests if name.endswith(".jsonl")
            for line in manifests[name].splitlines()]  # fmt: skip
    assert {key for row in rows for key in row} == set(ROW_FIELDS)
    used = {field for row in rows for run in row["runs"].values() for field in run}
    assert used == set(RUN_FIELDS)


def test_the_schema_and_the_decoder_know_the_same_run_fields() -> None:
    assert set(RUN_FIELDS) == containers.RUN_FIELDS


@pytest.mark.parametrize("spelling", ["32x32", "32 32", "32;32", "[32, 32]", " 32 X 32 "])
def test_csv_spellings_of_a_frame_size(tmp_path: Path, spelling: str) -> None:
    text = f'id,audio_answer,visual_answer,clean.audio,clean.frame_size\ns,a,b,x.wav,"{spelling}"\n'
    (entry,) = read_manifest(write(tmp_path / "m.csv", text))
    assert entry.row.runs["clean"].frame_size == (32, 32)


def test_a_jsonl_manifest_and_its_csv_twin_give_identical_samples(tmp_path: Path) -> None:
    """Through the whole loader: decoded media, tokens and answers, tensor for tensor."""
    from patchwork import load_study
    from patchwork.loading.manifest import load_manifest
    from patchwork.loading.model import load_model

    make_media(tmp_path / "media")
    rows = manifest_rows()
    rows[0]["question"] = "what,\n do you hear"
    for row in rows:
        for run in row["runs"].values():
            run |= {"fps": 1.5, "seconds": 0.5, "frame_size": [28, 56]}
    rows[1]["runs"]["conflict"]["frames"] = ["media/fish.png", "media/cat.png"]
    study_with_manifest(tmp_path, rows)
    study = load_study(tmp_path / "study.yaml")
    loaded = load_model(study.model)
    from_jsonl = load_manifest(study, loaded)
    write(tmp_path / "samples.csv", csv_text(rows))
    study_path = tmp_path / "study.yaml"
    study_path.write_text(study_path.read_text().replace("samples.jsonl", "samples.csv"))
    from_csv = load_manifest(load_study(study_path), loaded)
    assert len(from_jsonl) == len(from_csv) == 2
    for first, second in zip(from_jsonl, from_csv, strict=True):
        assert (first.sample_id, first.audio_answer_id) == (
            second.sample_id,
            second.audio_answer_id,
        )
        assert first.runs.keys() == second.runs.keys()
        for run, inputs in first.runs.items():
            assert inputs.keys() == second.runs[run].keys()
            for key, value in inputs.items():
                assert value.equal(second.runs[run][key]), (run, key)
    own_question = loaded.token_ids("what,\n do you hear")  # the row's own question is used
    assert from_csv[0].runs["clean"]["input_ids"][0, -len(own_question) :].tolist() == own_question


# --- hostile rows ---------------------------------------------------------------------------

RUN = {"audio": "dog.wav", "frames": ["cat.png"]}


def line(**changes: Any) -> str:
    """One JSONL row (``clean_FIELD=`` sets a field of the clean run; ``None`` drops a field)."""
    row: dict[str, Any] = {"id": "s1", "audio_answer": "woof", "visual_answer": "meow"}
    row["runs"] = {"clean": dict(RUN), "conflict": dict(RUN)}
    for key, value in changes.items():
        target = row["runs"]["clean"] if key.startswith("clean_") else row
        key = key.removeprefix("clean_")
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return json.dumps(row)


GOOD = line()
HEADER = "id,audio_answer,visual_answer,clean.audio,clean.frames,conflict.audio,conflict.frames"
CSV_ROW = "s1,woof,meow,dog.wav,cat.png,dog.wav,cat.png"
DEEP = "[" * 100_000 + "]" * 100_000
NULL_MEDIA = GOOD.replace('"audio": "dog.wav", "frames": ["cat.png"]}', '"audio": null}', 1)
HUGE_MAX_FRAMES = line(clean_max_frames=1).replace(": 1}", ": " + "9" * 5000 + "}")
NOT_UTF8 = (GOOD + "\n" + GOOD.replace("s1", "s2")).encode().replace(b"s2", b"s\xe9")
J, C = "m.jsonl", "m.csv"

# (name, file name, content, expected text: file:line, then what the message says)
HOSTILE: list[tuple[str, str, str | bytes, str]] = [
    ("a zero-width answer", J, line(audio_answer="\u200b"),
     "m.jsonl:1: sample s1: audio_answer: must not be blank"),
    ("an answer of format characters", J, line(visual_answer="\u2060\ufeff "),
     "m.jsonl:1: sample s1: visual_answer: must not be blank"),
    ("audio a number", J, line(clean_audio=3),
     "m.jsonl:1: sample s1: runs.clean.audio: expected text, got 3"),
    ("audio a list", J, line(clean_audio=["a"]),
     "runs.clean.audio: expected text, got ['a']"),
    ("video a mapping", J, line(clean_video={"a": 1}),
     "runs.clean.video: expected text, got {'a': 1}"),
    ("frames a number", J, line(clean_frames=3),
     "runs.clean.frames: expected a list, got 3"),
    ("frames a mapping", J, line(clean_frames={"a": 1}),
     "runs.clean.frames: expected a list, got {'a': 1}"),
    ("a frame a number", J, line(clean_frames=["a.png", 7]),
     "runs.clean.frames[1]: expected text, got 7"),
    ("no media left", J, line(clean_audio=None, clean_frames=None, clean_fps=2),
     "runs.clean: names no media: give 'audio', 'video', 'frames' or 'image_features'"),
    ("null media", J, NULL_MEDIA,
     "runs.clean: names no media"),
    ("video and frames", J, line(clean_video="a.mp4"),
     "runs.clean: gives both 'video' and 'frames'"),
    ("id a mapping", J, line(id={"a": 1}), "m.jsonl:1: id: expected text, got {'a': 1}"),
    ("id a number", J, line(id=17), "m.jsonl:1: id: expected text, got 17"),
    ("id blank", J, line(id="  "), "m.jsonl:1: id: must not be blank, got '  '"),
    ("id with NUL", J, line(id="a\x00b"), "id: must be plain text, without U+0000"),
    ("id a surrogate", J, line(id="\ud800"), "id: expected Unicode text, got '\\ud800'"),
    ("id too long", J, line(id="x" * 100_000), "id: at most 256 characters, got 100,000"),
    ("id of 5000 digits", J, GOOD.replace('"s1"', "1" * 5000),
     "m.jsonl:1: id: expected text, got a number of 5,000 digits (at most 18)"),
    ("max_frames of 5000 digits", J, HUGE_MAX_FRAMES,
     "runs.clean.max_frames: expected a whole number, got a number of 5,000 digits"),
    ("question a list", J, line(question=["a"]),
     "sample s1: question: expected text, got ['a']"),
    ("audio_in_video yes", J, line(clean_audio_in_video="yes"),
     "runs.clean.audio_in_video: expected true or false, got 'yes'"),
    ("audio_in_video 2", J, line(clean_audio_in_video=2),
     "runs.clean.audio_in_video: expected true or false, got 2"),
    ("fps a string", J, line(clean_fps="2"), "runs.clean.fps: expected a number, got '2'"),
    ("fps a flag", J, line(clean_fps=True), "runs.clean.fps: expected a number, got true"),
    ("seconds NaN", J, line(clean_seconds=float("nan")),
     "runs.clean.seconds: must lie in (0, 600], got NaN"),
    ("frame_size one side", J, line(clean_frame_size=[32]),
     "runs.clean.frame_size: expected [height, width], two whole numbers, got [32]"),
    ("frame_size floats", J, line(clean_frame_size=[32.0, 32]),
     "runs.clean.frame_size: expected [height, width], two whole numbers, got [32.0, 32]"),
    ("frame_size too big", J, line(clean_frame_size=[32, 5000]),
     "runs.clean.frame_size: sides must lie in [1, 4096], got [32, 5000]"),
    ("too many frames", J, line(clean_frames=["a.png"] * 1025),
     "runs.clean.frames: at most 1,024 entries, got 1,025"),
    ("misspelt field", J, line(visual_answer=None, visul_answer="meow"),
     "m.jsonl:1: sample s1: visul_answer: unknown field; did you mean 'visual_answer'?"),
    ("misspelt run field", J, line(clean_fsp=2),
     "runs.clean.fsp: unknown field; did you mean 'fps'?"),
    ("run field on the row", J, line(seconds=2),
     "seconds: unknown field; 'seconds' belongs to a run"),
    ("a missing field", J, line(visual_answer=None),
     "m.jsonl:1: row lacks field(s) ['visual_answer'] (sample s1)"),
    ("no runs", J, line(runs={}), "row lacks field(s) ['runs']"),
    ("runs a list", J, line(runs=[1]),
     "runs: expected a mapping of run names to their media fields, got [1]"),
    ("a run a string", J, line(runs={"clean": "x"}),
     "runs.clean: expected a mapping of media fields, got 'x'"),
    ("a run name with a dot", J, line(runs={"a.b": RUN}),
     "runs: a run name is letters, digits, '_' and '-'"),
    ("17 runs", J, line(runs={f"r{index}": RUN for index in range(17)}),
     "runs: at most 16 entries, got 17"),
    ("nested too deeply", J, GOOD + "\n" + DEEP + "\n", "m.jsonl:2: JSON nested too deeply"),
    ("nested deeply in a field", J, line(clean_frames=[[[[[[["a"]]]]]]]),
     "runs.clean.frames[0]: expected text, got [[…]]"),
    ("a line too long", J, line(question="x" * 1_100_000),
     "m.jsonl:1: a line of 1,1"),
    ("duplicate ids", J, GOOD + "\n\n" + GOOD,
     "m.jsonl:3: sample s1: id: already used on line 1"),
    ("duplicate key", J, GOOD.replace('{"id": "s1"', '{"id": "s1", "id": "s2"'),
     "m.jsonl:1: key 'id' appears twice in one object"),
    ("not an object", J, "[1, 2]\n", "m.jsonl:1: not a JSON object"),
    ("not JSON", J, GOOD + "\n{id: 1}\n", "m.jsonl:2: not a JSON object (Expecting"),
    ("empty", J, "", "m.jsonl: the manifest lists no samples"),
    ("blank lines only", J, "\n  \n\n", "the manifest lists no samples"),
    ("not UTF-8", J, NOT_UTF8,
     "m.jsonl:2: not UTF-8 text"),
    ("a BOM on line 2", J, GOOD + "\n\ufeff" + GOOD.replace("s1", "s2"),
     "m.jsonl:2: not a JSON object (Unexpected UTF-8 BOM"),
    ("csv: frame_size unreadable", C, f"{HEADER},clean.frame_size\n{CSV_ROW},big\n",
     "sample s1: clean.frame_size: expected [height, width], two whole numbers, got 'big'"),
    ("csv: audio_in_video yes", C, f"{HEADER},clean.audio_in_video\n{CSV_ROW},yes\n",
     "m.csv:2: sample s1: clean.audio_in_video: expected true or false, got 'yes'"),
    ("csv: fps not a number", C, f"{HEADER},conflict.fps\n{CSV_ROW},fast\n",
     "conflict.fps: expected a number, got 'fast'"),
    ("csv: max_frames of 5000 digits", C, f"{HEADER},clean.max_frames\n{CSV_ROW},{'9' * 5000}\n",
     "clean.max_frames: expected a whole number, got '999"),
    ("csv: an empty frame", C, HEADER + "\n" + CSV_ROW.replace("cat.png", "cat.png;", 1) + "\n",
     "clean.frames[1]: must not be empty"),
    ("csv: a huge cell", C, f"{HEADER}\n{CSV_ROW}\n" + CSV_ROW.replace("s1", "x" * 140_000),
     "m.csv:3: a cell over 131,072 characters"),
    ("csv: a long id", C, f"{HEADER}\n" + CSV_ROW.replace("s1", "x" * 1000),
     "m.csv:2: id: at most 256 characters, got 1,000"),
    ("csv: misspelt column", C, HEADER.replace("visual_answer", "visul_answer") + "\n" + CSV_ROW,
     "m.csv:1: column visul_answer: unknown field; did you mean 'visual_answer'?"),
    ("csv: misspelt run column", C, f"{HEADER},clean.fsp\n{CSV_ROW},2\n",
     "m.csv:1: column clean.fsp: unknown field; did you mean 'fps'?"),
    ("csv: a run field without its run", C, f"{HEADER},seconds\n{CSV_ROW},2\n",
     "column seconds: unknown field; 'seconds' belongs to a run: clean.seconds"),
    ("csv: a runs column", C, f"{HEADER},runs\n{CSV_ROW},x\n", "m.csv:1: column 'runs'"),
    ("csv: a bad run name", C, f"{HEADER},my run.fps\n{CSV_ROW},2\n",
     "column 'my run.fps': a run name is letters"),
    ("csv: a column twice", C, f"{HEADER},id\n{CSV_ROW},s2\n", "column 'id' appears twice"),
    ("csv: a value without a column", C, f"{HEADER},\n{CSV_ROW},x\n",
     "m.csv:2: a value in column 8, which the header leaves unnamed"),
    ("csv: too many cells", C, f"{HEADER}\n{CSV_ROW},x\n",
     "m.csv:2: 8 cells, but the header names 7 columns"),
    ("csv: a missing cell", C, f"{HEADER}\n{CSV_ROW.rsplit(',', 1)[0]}\n",
     "m.csv:2: 6 cells, but the header names 7 columns"),
    ("csv: the line a row starts on", "m.csv",
     f'{HEADER},question\n{CSV_ROW},"what do\nyou hear"\n{CSV_ROW.replace("s1", "s2")},"x"\n'
     + CSV_ROW + ",\n",
     "m.csv:5: sample s1: id: already used on line 2"),
    ("csv: duplicate ids", C, f"{HEADER}\n{CSV_ROW}\n\n{CSV_ROW}\n",
     "m.csv:4: sample s1: id: already used on line 2"),
    ("csv: a header only", C, HEADER + "\n", "m.csv: the manifest lists no samples"),
    ("csv: empty", C, b"", "the manifest lists no samples"),
    ("csv: not UTF-8", C, f"{HEADER}\n{CSV_ROW}\n".encode("utf-16"), "m.csv:1: not UTF-8 text"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_a_hostile_manifest_fails_in_one_line(
    tmp_path: Path, name: str, content: str | bytes, expected: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as caught:
        read_manifest(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}")
    assert expected in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("m.jsonl", "\ufeff" + GOOD + "\n"),  # a byte-order mark at the start
        ("m.csv", "\ufeff" + HEADER + "\r\n" + CSV_ROW + "\r\n"),
        ("m.jsonl", line(clean_video=None, clean_frames="cat.png")),  # a lone frame path
        ("m.jsonl", line(clean_seconds=600, clean_frame_size=[4096, 1], clean_fps=120)),
        ("m.csv", f"{HEADER},,\n{CSV_ROW},,\n,,,,,,,,\n"),  # unnamed empty columns, empty rows
    ],
)
def test_rows_at_the_edges_load(tmp_path: Path, name: str, content: str) -> None:
    (entry,) = read_manifest(write(tmp_path / name, content))
    assert entry.row.id == "s1" and entry.line == (2 if name.endswith(".csv") else 1)


@pytest.mark.parametrize("name", [J, C])
def test_a_manifest_without_line_ends_is_refused_after_one_line(tmp_path: Path, name: str) -> None:
    """A file of zeros (a sparse file) holds one endless line: refused after reading a bound's
    worth of it, never read whole (issue 28: a 20 GB sparse manifest hung validate)."""
    path = tmp_path / name
    with path.open("wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    with pytest.raises(DataError, match=r":1: a line of over 4,194,304 bytes; a row has at most"):
        read_manifest(path)


def test_a_manifest_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with path.open("wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing written
    with pytest.raises(DataError, match=r"m.jsonl: a manifest of 1,073,741,825 bytes; a manifest"):
        read_manifest(path)


def test_a_crlf_or_cr_csv_reads_as_a_lf_one(tmp_path: Path) -> None:
    rows = [
        read_manifest(write(tmp_path / f"{index}.csv", f"{HEADER}{end}{CSV_ROW}{end}"))
        for index, end in enumerate(["\n", "\r\n", "\r"])
    ]
    assert rows[0] == rows[1] == rows[2]


def test_the_study_sets_the_bounds_of_seconds_and_frame_size(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", line(clean_seconds=30, clean_frame_size=[64, 64]))
    assert read_manifest(path)[0].row.runs["clean"].seconds == 30
    with pytest.raises(DataError, match=r"runs.clean.seconds: must lie in \(0, 20\], got 30"):
        read_manifest(path, RowLimits(max_seconds=20))
    with pytest.raises(DataError, match=r"frame_size: sides must lie in \[1, 32\]"):
        read_manifest(path, RowLimits(max_frame_side=32))


def test_hostile_rows_end_in_one_line_from_the_command_line(tmp_path: Path) -> None:
    make_media(tmp_path / "media")
    rows = manifest_rows()
    rows[1]["runs"]["conflict"]["audio"] = {"a": 1}
    study = study_with_manifest(tmp_path, rows, "jsonl")
    result = CliRunner().invoke(app, ["validate", str(study)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert message.startswith(f"error: {tmp_path / 'samples.jsonl'}:2: sample bird-vs-fish: ")
    assert message.endswith("runs.conflict.audio: expected text, got {'a': 1}")


def test_runs_of_different_lengths_are_told_what_to_set(tmp_path: Path) -> None:
    """The layout error of a row says which of seconds and frame_size it leaves unset; setting
    them as it says makes the runs agree."""
    import numpy as np
    import soundfile

    make_media(tmp_path / "media")
    soundfile.write(tmp_path / "media/long.wav", np.zeros(32000, dtype=np.float32), 16000)
    rows = manifest_rows()
    rows[1]["runs"]["conflict"]["audio"] = "media/long.wav"
    rows[1]["runs"]["conflict"]["frame_size"] = [16, 16]
    study = study_with_manifest(tmp_path, rows)
    result = CliRunner().invoke(app, ["validate", str(study)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "samples.jsonl:2: sample bird-vs-fish: " in message
    assert "set 'frame_size' and 'seconds' in every run of the row" in message
    assert "(not set: clean.seconds, clean.frame_size, conflict.seconds)" in message
    assert message.endswith("the runs differ in frame_size")
    for run in rows[1]["runs"].values():
        run |= {"seconds": 0.4, "frame_size": [16, 16]}
    study = study_with_manifest(tmp_path, rows)
    result = CliRunner().invoke(app, ["validate", str(study)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("field", "cell"),
    [
        ("seconds", "0_1"),
        ("fps", "1_0"),
        ("max_frames", "1_6"),
        ("fps", "\uff11"),  # a fullwidth 1
        ("seconds", "\u0663"),  # an Arabic-Indic 3
        ("max_frames", "\uff11\uff16"),
        ("frame_size", "\uff11\uff16x16"),
    ],
)
def test_csv_number_cells_with_digit_groups_are_refused(
    tmp_path: Path, field: str, cell: str
) -> None:
    """Python's float() reads ``0_1`` as 1 and ``1_0`` as 10, ``１`` (fullwidth) as 1: a cell like
    it is refused, named (JSON reads none of them as a number)."""
    text = f"id,audio_answer,visual_answer,clean.audio,clean.{field}\ns,a,b,x.wav,{cell}\n"
    with pytest.raises(DataError, match=rf"m\.csv:2: sample s: .*clean\.{field}"):
        read_manifest(write(tmp_path / "m.csv", text))


@pytest.mark.parametrize(("field", "value"), [("seconds", "0_1"), ("fps", "1_0")])
def test_jsonl_numbers_written_as_text_with_digit_groups_are_refused(
    tmp_path: Path, field: str, value: str
) -> None:
    row = {"id": "s", "audio_answer": "a", "visual_answer": "b"}
    row["runs"] = {"clean": {"audio": "x.wav", field: value}}
    with pytest.raises(DataError, match=rf"m\.jsonl:1: sample s: .*{field}"):
        read_manifest(write(tmp_path / "m.jsonl", json.dumps(row) + "\n"))
