"""Fuzzing manifest rows (issue 28 item 1): arbitrary JSON values and CSV cells in every field of
JSONL and CSV manifests. Every case either loads or fails with exactly one PatchworkError whose
message is one line naming the file — never another exception. Rows that load read the same from
their CSV twin.

Budget (CI): 200 JSONL cases, 200 CSV cases and 25 cases decoded through the whole loader (media
and a tiny random-init model); about 15 s on one core here. The hostile rows found so far are kept
as fixed regression cases in ``test_manifest_rows.py``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from patchwork.errors import PatchworkError
from patchwork.loading.manifest_files import NumberedRow, read_manifest
from patchwork.loading.manifest_schema import ROW_FIELDS, RUN_FIELDS

from .test_manifest import make_media, study_with_manifest
from .test_manifest_rows import csv_text

FIELDS = [*ROW_FIELDS, *RUN_FIELDS, "visul_answer", "fsp", "clean", "conflict"]
TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates and controls too
NEAR_MISSES = st.sampled_from(
    ["dog.wav", "cat.png", "32x32", "32 32", "true", "TRUE", "yes", "", " ", "NaN", "1e999",
     "-1", "0", "2.5", "a.b", "clean", "cat.png;", ";", "[32, 32]", "9" * 40]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    TEXT,
    NEAR_MISSES,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
PLACES = [(), ("runs",), ("runs", "clean"), ("runs", "conflict")]
WORDS = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=12)
PATHS = WORDS | st.sampled_from(["a b/c,d.wav", 'say "hi".png', "x;y.png", " lead.png", "é/ü.mp4"])
#: Values the schema accepts (mostly) for each field: a fuzzed row often loads.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "id": WORDS,
    "audio_answer": WORDS,
    "visual_answer": WORDS,
    "question": st.text(min_size=1, max_size=30),
    "audio": PATHS,
    "video": PATHS,
    "image_features": PATHS,
    "frames": PATHS | st.lists(PATHS, min_size=1, max_size=3),
    "fps": st.floats(min_value=1e-3, max_value=120) | st.integers(1, 120),
    "seconds": st.floats(min_value=1e-3, max_value=600),
    "max_frames": st.integers(1, 1024),
    "audio_in_video": st.booleans(),
    "frame_size": st.lists(st.integers(1, 4096), min_size=2, max_size=2),
    "clean": st.fixed_dictionaries({"audio": PATHS}),
}


def base_row(sample_id: str = "s1", media: str = "") -> dict[str, Any]:
    run = {"audio": f"{media}dog.wav", "frames": [f"{media}cat.png"]}
    return {
        "id": sample_id,
        "audio_answer": "woof",
        "visual_answer": "meow",
        "runs": {"clean": dict(run), "conflict": copy.deepcopy(run)},
    }


@st.composite
def mutated_rows(
    draw: st.DrawFn, values: st.SearchStrategy[Any] = JSON_VALUES, media: str = ""
) -> list[dict]:
    """One or two rows, each a valid row with a few fields set to a value the field accepts,
    set to one of ``values``, removed, or added under another name."""
    rows = [base_row(f"s{index}", media) for index in range(draw(st.integers(1, 2)))]
    for row in rows:
        for _ in range(draw(st.integers(1, 3))):
            place = draw(st.sampled_from(PLACES))
            target: Any = row
            for key in place:
                target = target.get(key) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                continue
            names = RUN_FIELDS if len(place) == 2 else ROW_FIELDS if not place else ("clean",)
            action = draw(st.sampled_from(["valid"] * 5 + ["value", "delete", "unknown"]))
            key = draw(
                st.sampled_from(FIELDS) | TEXT if action == "unknown" else st.sampled_from(names)
            )
            if action == "delete":
                target.pop(key, None)
            elif action == "valid" and key in VALID:
                target[key] = draw(VALID[key])
            else:
                target[key] = draw(values)
    return rows


def loads_or_fails_in_one_line(path: Path) -> list[NumberedRow] | None:
    """The manifest's rows, or None after checking its one PatchworkError."""
    try:
        entries = read_manifest(path)
    except PatchworkError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path)), message
        event(f"refused: {type(error).__name__}")
        return None
    event("loaded")
    return entries


def csv_expressible(entries: list[NumberedRow]) -> bool:
    """Whether CSV can spell these rows: frame paths without ';' or surrounding spaces."""
    return all(
        ";" not in frame and frame == frame.strip()
        for entry in entries
        for run in entry.row.runs.values()
        for frame in run.frames or ()
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=mutated_rows(),
    raw_tail=st.sampled_from([None] * 4) | st.binary(max_size=20) | TEXT,
    ascii_only=st.booleans(),
)
def test_any_jsonl_manifest_loads_or_fails_in_one_line(
    rows: list[dict], raw_tail: Any, ascii_only: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        lines = (json.dumps(row, ensure_ascii=ascii_only) for row in rows)
        content = "\n".join(lines).encode("utf-8", "surrogatepass")
        if raw_tail is not None:
            tail = raw_tail if isinstance(raw_tail, bytes) else raw_tail.encode("utf-8", "replace")
            content += b"\n" + tail
        path.write_bytes(content)
        entries = loads_or_fails_in_one_line(path)
        if entries is None or not csv_expressible(entries):
            return
        # a row that loads reads the same from its CSV twin
        dumped = [entry.row.model_dump(mode="json", exclude_none=True) for entry in entries]
        twin = Path(folder) / "m.csv"
        twin.write_text(csv_text(dumped), encoding="utf-8")
        assert [entry.row for entry in read_manifest(twin)] == [entry.row for entry in entries]


COLUMNS = [
    "id", "audio_answer", "visual_answer", "question", "runs", "audio", "",
    *(f"{run}.{field}" for run in ("clean", "conflict") for field in RUN_FIELDS),
    "clean.fsp", "a b.audio", ".audio", "clean.",
]  # fmt: skip
CELLS = st.one_of(TEXT, NEAR_MISSES, st.just(""))


def spelled(field: str, value: Any) -> str:
    """A fuzzed value as a CSV cell: the documented spelling where it has one, else its text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if field == "frame_size" and isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    return repr(value) if isinstance(value, float) else str(value)


@st.composite
def csv_tables(draw: st.DrawFn) -> list[list[str]]:
    """A header and rows: fuzzed rows flattened into columns (RUN.FIELD), or cells at random
    under columns at random."""
    if draw(st.booleans()):
        header = draw(st.lists(st.sampled_from(COLUMNS) | TEXT, min_size=1, max_size=10))
        return [header, *draw(st.lists(st.lists(CELLS, max_size=11), max_size=3))]
    flat = []
    for row in draw(mutated_rows()):
        runs = row.pop("runs", {})
        cells = {key: spelled(key, value) for key, value in row.items()}
        if isinstance(runs, dict):
            for run, fields in runs.items():
                if not isinstance(fields, dict):
                    fields = {"audio": fields}
                cells |= {f"{run}.{key}": spelled(key, value) for key, value in fields.items()}
        else:
            cells["runs"] = spelled("runs", runs)
        flat.append(cells)
    header = list(dict.fromkeys(column for cells in flat for column in cells))
    return [header, *([cells.get(column, "") for column in header] for cells in flat)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=csv_tables(), quoted=st.booleans())
def test_any_csv_manifest_loads_or_fails_in_one_line(table: list[list[str]], quoted: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.csv"
        if quoted:  # the csv module's own quoting
            out = io.StringIO()
            csv.writer(out).writerows(table)
            text = out.getvalue()
        else:  # cells as typed, stray quotes and all
            text = "\n".join(",".join(cells) for cells in table)
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        entries = loads_or_fails_in_one_line(path)
        if entries is None:
            return
        # a row that loads reads the same from its JSONL twin
        twin = Path(folder) / "m.jsonl"
        dumped = (entry.row.model_dump(mode="json", exclude_none=True) for entry in entries)
        twin.write_text("\n".join(json.dumps(row) for row in dumped), encoding="utf-8")
        assert [entry.row for entry in read_manifest(twin)] == [entry.row for entry in entries]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """A study over a manifest in a folder with media, and its tiny model, made once."""
    from patchwork import load_study
    from patchwork.loading.model import load_model

    folder = tmp_path_factory.mktemp("fuzz")
    make_media(folder / "media")
    path = study_with_manifest(folder, [base_row("s0", "media/"), base_row("s1", "media/")])
    study = load_study(path)
    return study, load_model(study.model), folder / "samples.jsonl"


MEDIA_VALUES = st.one_of(
    st.sampled_from(
        ["media/dog.wav", "media/bird.wav", "media/cat.png", "media/blank.png", "media",
         "samples.jsonl", "study.yaml", "media/none.wav", ["media/cat.png", "media/dog.wav"],
         ["media/fish.png"] * 3, [16, 16], [32, 16], 0.5, 0.01, 1, 3, True]
    ),
    JSON_VALUES,
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=mutated_rows(MEDIA_VALUES, "media/"))
def test_any_row_builds_or_fails_with_one_patchwork_error(
    world: tuple[Any, Any, Path], rows: list[dict]
) -> None:
    """Through the whole loader: rows are read, their media decoded and turned into inputs."""
    from patchwork.loading.manifest import load_manifest

    study, loaded, manifest = world
    manifest.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    try:
        samples = load_manifest(study, loaded)
    except PatchworkError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(manifest)), message
        event(f"refused: {type(error).__name__}")
        return
    event("built")
    assert [sample.sample_id for sample in samples] == [row["id"] for row in rows]
