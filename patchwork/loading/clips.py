"""A user's labelled clips, found and measured: the input of ``patchwork pairs``.

Clips come from a folder with one sub-folder per label (``clips/dog/a.mp4``, ``clips/cat/b.mkv``;
files deeper down belong to their first-level folder's label) or from a CSV with ``path`` and
``label`` columns (paths relative to the CSV). Each is measured from its container's header with
PyAV — frame size, frame rate, how long its picture and its soundtrack last — without decoding
it. A clip that cannot serve is not an error: it is :class:`Dropped` with the reason, and the
report lists it. An optional map gives each label its answer word (YAML ``label: word``, or CSV
``label,word``); without one, a label is its own word. Given a model, each word must be one token
of its tokenizer, and a different one for every label.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from patchwork import files
from patchwork.errors import DataError, PatchworkError
from patchwork.loading.manifest_files import csv_cells

if TYPE_CHECKING:
    from patchwork.loading.model import LoadedModel

#: Suffixes of the video containers a folder's clips may have.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi"})
#: Most files a source folder is searched through (a label folder linked to ``/`` would
#: otherwise walk the whole disk), and most bytes a source CSV or word map is read to.
MAX_SOURCE_FILES = 100_000
MAX_TABLE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Clip:
    """One labelled clip and what its header says: frame ``width`` × ``height`` in pixels,
    ``fps`` frames per second, ``seconds`` it lasts (the shorter of its picture and its
    soundtrack: what both runs can use)."""

    path: Path
    label: str
    width: int = 0
    height: int = 0
    fps: float = 0.0
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """``label/file``, for reports and sample ids."""
        return f"{self.label}/{self.path.name}"


@dataclass(frozen=True)
class Dropped:
    """A clip (or a file that is not one) left out, and why."""

    path: Path
    label: str
    reason: str

    @property
    def name(self) -> str:
        return f"{self.label}/{self.path.name}" if self.label else str(self.path)


def find_clips(source: str | Path) -> tuple[list[Clip], list[Dropped]]:
    """The labelled clips of a folder or CSV (unmeasured), and the files left out."""
    source = Path(source)
    if source.is_dir():
        return _folder_clips(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _csv_clips(source)
    if source.is_file():
        raise DataError(f"{source}: give a folder of label folders or a CSV with path,label")
    problem = files.not_regular(source)
    if problem == "not found":
        raise DataError(f"{source}: no such folder or CSV")
    raise DataError(f"{source}: {problem}; give a folder of label folders or a CSV")


def _folder_clips(folder: Path) -> tuple[list[Clip], list[Dropped]]:
    clips, dropped = [], []
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        raise DataError(f"{folder}: cannot list it ({error.strerror or error})") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            dropped.append(Dropped(entry, "", "not in a label folder"))
            continue
        for path in _label_files(folder, entry, dropped):
            problem = files.not_regular(path)  # a FIFO would make the decoder wait for ever
            if problem is not None:
                dropped.append(Dropped(path, entry.name, f"the path {problem}"))
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                clips.append(Clip(path, entry.name))
            else:
                dropped.append(Dropped(path, entry.name, "not a video file"))
    if not clips and not dropped:
        raise DataError(f"{folder}: no label folders in it")
    return clips, dropped


def _label_files(folder: Path, label_folder: Path, dropped: list[Dropped]) -> list[Path]:
    """The files below ``label_folder`` (hidden ones left out; links to folders listed, never
    followed below it), sorted; a folder that cannot be listed is :class:`Dropped`.

    Raises:
        patchwork.errors.DataError: more than :data:`MAX_SOURCE_FILES` entries below it.
    """
    found, seen = [], 0
    folders = [label_folder]
    while folders:
        current = folders.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError as error:
            reason = f"the folder cannot be listed ({error.strerror or error})"
            dropped.append(Dropped(current, label_folder.name, reason))
            continue
        seen += len(entries)
        if seen > MAX_SOURCE_FILES:
            raise DataError(
                f"{folder}: label folder {label_folder.name!r} holds over {MAX_SOURCE_FILES:,} "
                "files and folders; give a folder of label folders of clips"
            )
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif not os.path.isdir(entry.path):  # a link to a folder is not followed
                found.append(Path(entry.path))
    return sorted(found)


def _table_text(path: Path, what: str) -> str:
    """The text of a CSV or YAML file given to ``pairs``, read to at most
    :data:`MAX_TABLE_BYTES`."""
    try:
        return files.read_bounded(path, MAX_TABLE_BYTES).decode("utf-8-sig")
    except files.Unreadable as error:
        raise DataError(f"{path}: {what} {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None


def _csv_clips(table: Path) -> tuple[list[Clip], list[Dropped]]:
    rows = csv_cells(table, io.StringIO(_table_text(table, "the CSV of clips"), newline=""))
    line, header = next(((line, cells) for line, cells in rows if any(cells)), (1, []))
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    if "path" not in columns or "label" not in columns:
        raise DataError(f"{table}:{line}: needs columns path and label, has {header}")
    clips, dropped = [], []
    for line, cells in rows:
        if not any(cells):
            continue
        where = f"{table.name}:{line}"
        row = dict(enumerate(cells))
        value = row.get(columns["path"], "").strip()
        label = row.get(columns["label"], "").strip()
        path = table.parent / value
        if not value:
            dropped.append(Dropped(Path(where), label, "row names no path"))
        elif not label:
            dropped.append(Dropped(path, "", f"{where}: row has no label"))
        elif (problem := files.not_regular(path)) is not None:
            problem = "file not found" if problem == "not found" else f"the path {problem}"
            dropped.append(Dropped(path, label, f"{where}: {problem}"))
        else:
            clips.append(Clip(path, label))
    return clips, dropped


def measure(clip: Clip, max_side: int = 4096) -> Clip | Dropped:
    """``clip`` with its size, rate and usable length read from its header; :class:`Dropped`
    when it cannot be read, lacks a picture or a soundtrack, or is cut short or damaged (its
    video packets are counted, not decoded: :func:`~patchwork.data.containers.scan_video`)."""
    import av

    from patchwork.data import containers

    try:
        with av.open(str(clip.path)) as container:
            if not container.streams.video:
                return Dropped(clip.path, clip.label, "no video stream")
            if not container.streams.audio:
                return Dropped(clip.path, clip.label, "no soundtrack (its sound is the sample)")
            video, audio = container.streams.video[0], container.streams.audio[0]
            whole = container.duration / 1e6 if container.duration else 0.0
            fps = float(video.average_rate or video.guessed_rate or 0)
            if video.frames and fps:
                picture = video.frames / fps
            else:
                picture = _stream_seconds(video) or whole
            sound = _stream_seconds(audio) or whole
            width, height = int(video.width or 0), int(video.height or 0)
    except (av.FFmpegError, OSError, ValueError) as error:
        return Dropped(clip.path, clip.label, f"unreadable ({error})")
    if not (width and height):
        return Dropped(clip.path, clip.label, "its header gives no frame size")
    if not (picture and sound):
        return Dropped(clip.path, clip.label, "its header gives no duration")
    try:
        containers.scan_video(clip.path, max_side)
    except DataError as error:
        return Dropped(clip.path, clip.label, str(error).removeprefix(f"{clip.path}: "))
    return replace(clip, width=width, height=height, fps=fps, seconds=min(picture, sound))


def _stream_seconds(stream: object) -> float:
    duration, base = getattr(stream, "duration", None), getattr(stream, "time_base", None)
    return float(duration * base) if duration and base else 0.0


def read_words(path: str | Path) -> dict[str, str]:
    """Label → answer word from a YAML mapping or a two-column CSV (``label,word``; a header row
    of exactly those names is skipped)."""
    path = Path(path)
    text = _table_text(path, "the word map")
    if path.suffix.lower() == ".csv":
        words = {}
        for line, row in csv_cells(path, io.StringIO(text, newline="")):
            cells = [cell.strip() for cell in row]
            if not any(cells) or (line == 1 and [c.lower() for c in cells] == ["label", "word"]):
                continue
            if len(cells) != 2 or not all(cells):
                raise DataError(f"{path}:{line}: expected label,word; got {row}")
            words[cells[0]] = cells[1]
        return words
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:  # every scalar as written: "dog: 0x10" is the word 0x10, "010: …" the label 010
        loaded = YAML(typ="base", pure=True).load(text)
    except YAMLError as error:
        raise DataError(f"{path}: not YAML ({' '.join(str(error).split())})") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(item, str) for pair in loaded.items() for item in pair
    ):
        raise DataError(f"{path}: expected a mapping of label: word")
    return {label: word.strip() for label, word in loaded.items()}


def answer_words(
    clips: list[Clip],
    dropped: list[Dropped],
    words: str | Path | Mapping[str, str] | None,
    loaded: LoadedModel | None,
) -> tuple[dict[str, str], list[Clip], list[Dropped]]:
    """Each label's answer word (``words``: a map or its file; default: the label), and the
    clips kept: a label's clips are left out when its word is missing, is not one token of
    ``loaded``'s tokenizer, or is the same token as an earlier label's (labels in sorted
    order)."""
    given = read_words(words) if isinstance(words, str | Path) else words
    label_words: dict[str, str] = {}
    refused: dict[str, str] = {}
    token_of: dict[object, str] = {}
    for label in sorted({clip.label for clip in clips}):
        word = label if given is None else given.get(label)
        if not word:
            refused[label] = f"label {label!r} has no word in the word map"
            continue
        problem = _answer_problem(word)
        if problem is not None:  # what a manifest would refuse is never written into one
            refused[label] = f"answer word of label {label!r}: {problem}"
            continue
        token: object = word
        if loaded is not None:
            try:
                token = loaded.answer_id(word)
            except PatchworkError as error:
                refused[label] = f"answer word {word!r} of label {label!r}: {error}"
                continue
        if token in token_of:
            refused[label] = (
                f"answer word {word!r} of label {label!r} is the same token as label "
                f"{token_of[token]!r}'s"
            )
            continue
        token_of[token] = label
        label_words[label] = word
    kept = [clip for clip in clips if clip.label in label_words]
    dropped += [Dropped(c.path, c.label, refused[c.label]) for c in clips if c.label in refused]
    return label_words, kept, dropped


def _answer_problem(word: str) -> str | None:
    """Why a manifest would refuse ``word`` as an answer (too long, not plain text); else None."""
    from pydantic import TypeAdapter, ValidationError

    from patchwork.loading.manifest_schema import Answer, describe

    try:
        TypeAdapter(Answer).validate_python(word)
    except ValidationError as error:
        return describe(error.errors()[0])
    return None
