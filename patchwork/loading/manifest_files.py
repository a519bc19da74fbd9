"""A manifest file read into validated rows, each with the line it starts on.

JSONL holds one JSON object a line (blank lines are skipped). CSV holds a header, then one row a
sample, every field of :class:`~patchwork.loading.manifest_schema.ManifestRow` as a column: the
row's own fields by name (``id``, ``audio_answer``, ``visual_answer``, ``question``), a run's as
``RUN.FIELD`` (``clean.audio``, ``conflict.frame_size``). A CSV cell spells what JSON writes as a
list, a number or a flag:

- ``frames``: paths separated by ``;`` (spaces around a ``;`` are ignored);
- ``frame_size``: ``HEIGHTxWIDTH`` (``252x448``; ``252 448``, ``252;448`` and ``[252, 448]``
  read the same);
- ``fps``, ``seconds``, ``max_frames``: the number as written (``2``, ``1.5``);
- ``audio_in_video``: ``true`` or ``false`` (any case);
- an empty cell: the field is not given.

Both formats are then validated by the one schema, so a JSONL manifest and its CSV twin give the
same rows. Every mistake is a :class:`~patchwork.errors.DataError` naming ``file:line`` (the line a
JSONL row is on; the first physical line of a CSV row), the sample when its id is readable, and
the field. Bounds, so that no row can exhaust memory or the stack: a file of at most
:data:`MAX_MANIFEST_BYTES` (from its size, before reading), read a line at a time, each line of
at most :data:`MAX_LINE_CHARS` characters (a file that never ends a line is read no further),
JSON nested no deeper than Python's recursion limit, integers of at most 18 digits, CSV cells of
at most 131,072 characters (the csv module's limit), and the schema's bounds on each field.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from patchwork import files
from patchwork.errors import DataError
from patchwork.loading.manifest_schema import (
    MAX_INT_DIGITS,
    REQUIRED,
    ROW_FIELDS,
    RUN_FIELDS,
    HugeNumber,
    ManifestRow,
    RowLimits,
    describe,
    readable_id,
)
from patchwork.study.messages import first_error, suggestion

#: Longest line (characters): room for a question and a thousand frame paths.
MAX_LINE_CHARS = 1 << 20
#: Largest manifest file (bytes): some millions of rows, each decoded at validation.
MAX_MANIFEST_BYTES = 1 << 30
#: A line of more bytes than this holds over MAX_LINE_CHARS characters (UTF-8: 4 bytes at most).
_MAX_LINE_BYTES = 4 * MAX_LINE_CHARS
# ASCII digits only: int() and float() also read "１" or "٣", which JSON would not take
_SIZE = re.compile(r"\[?\s*(\d{1,18})\s*(?:[xX×,;]|\s)\s*(\d{1,18})\s*\]?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,18}", re.ASCII)
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


class NumberedRow(NamedTuple):
    """A validated row and the line of the manifest it starts on."""

    line: int
    row: ManifestRow


def read_manifest(path: Path, limits: RowLimits | None = None) -> list[NumberedRow]:
    """Every row of the manifest at ``path`` (JSONL, or CSV by its suffix), validated against the
    row schema with the study's ``limits``; ids must be unique and there must be a row."""
    is_csv = path.suffix.lower() == ".csv"
    raw_rows = _csv_rows(path, _lines(path)) if is_csv else _jsonl_rows(path, _lines(path))
    rows: list[NumberedRow] = []
    seen: dict[str, int] = {}
    for line, raw in raw_rows:
        row = validate_row(raw, f"{path}:{line}", limits or RowLimits(), is_csv)
        if row.id in seen:
            raise DataError(
                f"{path}:{line}: sample {row.id}: id: already used on line {seen[row.id]}; "
                "every sample needs its own id"
            )
        seen[row.id] = line
        rows.append(NumberedRow(line, row))
    if not rows:
        raise DataError(f"{path}: the manifest lists no samples")
    return rows


def validate_row(
    raw: dict[str, Any], label: str, limits: RowLimits, is_csv: bool = False
) -> ManifestRow:
    """``raw`` (a parsed JSON object or CSV row) as a :class:`ManifestRow`; a mistake is one
    line: ``label: sample ID: FIELD: what was expected, got what was given``."""
    sample = f"sample {raw['id']}: " if readable_id(raw.get("id")) else ""
    missing = [key for key in REQUIRED if _empty(raw.get(key))]
    if missing:
        for key in raw:  # a misspelt field explains a missing one better than its absence
            if key not in ROW_FIELDS and suggestion(ManifestRow, (key,)) in missing:
                error = {"type": "extra_forbidden", "loc": (key,)}
                raise DataError(f"{label}: {sample}{describe(error, is_csv)}")
        named = f" (sample {raw['id']})" if sample else ""
        raise DataError(f"{label}: row lacks field(s) {missing}{named}")
    try:
        return ManifestRow.model_validate(raw, context={"limits": limits})
    except ValidationError as error:
        first = first_error(error.errors(), ManifestRow)
        raise DataError(f"{label}: {sample}{describe(first, is_csv)}") from None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of the manifest at ``path``, numbered from 1, each with its ``"\\n"``: read one
    at a time, so that a huge file or one without line ends (a sparse file of zeros) is refused
    after at most one line's bytes. A byte-order mark at the start is not part of a field."""
    try:
        handle = files.open_regular(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read the manifest ({error.strerror or error})") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise DataError(
                f"{path}: a manifest of {size:,} bytes; a manifest holds at most "
                f"{MAX_MANIFEST_BYTES:,}"
            )
        offset = 0
        for number in itertools.count(1):
            try:
                raw = handle.readline(_MAX_LINE_BYTES + 2)
            except OSError as error:
                raise DataError(f"{path}: cannot read the manifest ({error.strerror})") from None
            if not raw:
                return
            start = 3 if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            if len(raw.rstrip(b"\n")) - start > _MAX_LINE_BYTES:
                raise DataError(
                    f"{path}:{number}: a line of over {_MAX_LINE_BYTES:,} bytes; a row has at "
                    f"most {MAX_LINE_CHARS:,} characters"
                )
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte {offset + start + error.start}); save "
                    "the manifest as UTF-8"
                ) from None
            length = len(line.rstrip("\n"))
            if length > MAX_LINE_CHARS:
                raise DataError(
                    f"{path}:{number}: a line of {length:,} characters; a row has at most "
                    f"{MAX_LINE_CHARS:,}"
                )
            offset += len(raw)
            yield number, line


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _DuplicateKey(key)
        mapping[key] = value
    return mapping


def _json_integer(digits: str) -> int | HugeNumber:
    count = len(digits.lstrip("-"))
    return int(digits) if count <= MAX_INT_DIGITS else HugeNumber(count)


def _jsonl_rows(
    path: Path, lines: Iterable[tuple[int, str]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in lines:
        if not line.strip():
            continue
        label = f"{path}:{number}"
        try:
            row = json.loads(line, parse_int=_json_integer, object_pairs_hook=_json_object)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{label}: not a JSON object ({error.msg} at column {error.colno})"
            ) from None
        except RecursionError:
            raise DataError(
                f"{label}: JSON nested too deeply (a row nests 4 levels: row, runs, run, frames)"
            ) from None
        except _DuplicateKey as error:
            raise DataError(f"{label}: key {error.key!r} appears twice in one object") from None
        if not isinstance(row, dict):
            raise DataError(f'{label}: not a JSON object ({{"id": …, "runs": …}})')
        yield number, row


def csv_cells(path: Path, pieces: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Each row of the CSV text ``pieces`` (its lines, or one ``io.StringIO`` of it) with the
    line it starts on; a malformed row, or a cell over the csv module's limit, one line naming
    ``path`` and that line."""
    reader = csv.reader(pieces)
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines: the row starts here
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                limit = csv.field_size_limit()
                raise DataError(f"{path}:{start}: a cell over {limit:,} characters") from None
            raise DataError(f"{path}:{start}: malformed CSV ({error})") from None
        yield start, cells


def _csv_rows(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    # the csv module counts a lone "\r" as a line end too, as when it reads a file itself
    pieces = (piece for _, line in lines for piece in io.StringIO(line, newline=""))
    header: list[str] | None = None
    for start, cells in csv_cells(path, pieces):
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = _header(f"{path}:{start}", cells)
            continue
        if len(cells) != len(header):
            raise DataError(
                f"{path}:{start}: {len(cells)} cells, but the header names {len(header)} columns"
            )
        yield start, _csv_row(f"{path}:{start}", header, cells)


def _header(label: str, cells: list[str]) -> list[str]:
    """The header's column names, each checked: a row field, ``RUN.FIELD``, or unnamed."""
    names = [cell.strip() for cell in cells]
    for index, name in enumerate(names):
        if name and name in names[:index]:
            raise DataError(f"{label}: column {name!r} appears twice")
        if not name:
            continue
        run, dot, field = name.partition(".")
        if not dot:
            if name == "runs":
                raise DataError(
                    f"{label}: column 'runs': write each run field as its own column, RUN.FIELD "
                    "(e.g. clean.audio)"
                )
            if name not in ROW_FIELDS:
                error: dict[str, Any] = {"type": "extra_forbidden", "loc": (name,)}
                raise DataError(f"{label}: column {describe(error, csv=True)}")
        elif not _RUN_NAME.fullmatch(run):
            raise DataError(
                f"{label}: column {name!r}: a run name is letters, digits, '_' and '-' (at most "
                "64 characters)"
            )
        elif field not in RUN_FIELDS:
            error = {"type": "extra_forbidden", "loc": ("runs", run, field)}
            raise DataError(f"{label}: column {describe(error, csv=True)}")
    return names


def _csv_row(label: str, header: list[str], cells: list[str]) -> dict[str, Any]:
    """One CSV row as the nested mapping a JSONL line holds (empty cells: fields not given)."""
    row: dict[str, Any] = {}
    runs: dict[str, dict[str, Any]] = {}
    for column, (name, cell) in enumerate(zip(header, cells, strict=True), start=1):
        if not cell.strip():
            continue
        if not name:
            raise DataError(f"{label}: a value in column {column}, which the header leaves unnamed")
        run, dot, field = name.partition(".")
        if dot:
            runs.setdefault(run, {})[field] = csv_value(field, cell)
        else:
            row[name] = cell
    if runs:
        row["runs"] = runs
    return row


def csv_value(field: str, cell: str) -> Any:
    """A run field's CSV cell as JSON would give it; a cell that does not read as its field's
    kind is returned as written, for the schema to refuse with the text given."""
    stripped = cell.strip()
    if field == "frames":
        return [part.strip() for part in cell.split(";")]
    if field == "frame_size":
        match = _SIZE.fullmatch(stripped)
        return [int(match[1]), int(match[2])] if match else cell
    if field in ("fps", "seconds") and len(stripped) <= 64 and "_" not in stripped:
        if not stripped.isascii():
            return cell
        try:  # float() reads "0_1" as 1 (digit groups): such a cell is left for the schema
            return float(stripped)
        except ValueError:
            return cell
    if field == "max_frames" and _INTEGER.fullmatch(stripped):
        return int(stripped)
    if field == "audio_in_video":
        return {"true": True, "false": False}.get(stripped.lower(), cell)
    return cell
