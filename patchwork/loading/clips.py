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

import csv
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from patchwork import files
from patchwork.errors import DataError, PatchworkError

if TYPE_CHECKING:
    from patchwork.loading.model import LoadedModel

#: Suffixes of the video containers a folder's clips may have.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi"})


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
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            dropped.append(Dropped(entry, "", "not in a label folder"))
            continue
        for path in sorted(p for p in entry.rglob("*") if not p.is_dir()):
            if any(part.startswith(".") for part in path.relative_to(entry).parts):
                continue
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


def _csv_clips(table: Path) -> tuple[list[Clip], list[Dropped]]:
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{table}: cannot read it as UTF-8 text ({error})") from None
    reader = csv.DictReader(text.splitlines())
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    if "path" not in columns or "label" not in columns:
        raise DataError(f"{table}:1: needs columns path and label, has {reader.fieldnames}")
    clips, dropped = [], []
    for row in reader:
        where = f"{table.name}:{reader.line_num}"
        value = (row.get(columns["path"]) or "").strip()
        label = (row.get(columns["label"]) or "").strip()
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
    if not path.is_file():
        raise DataError(f"{path}: word map not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({error})") from None
    if path.suffix.lower() == ".csv":
        words = {}
        for line, row in enumerate(csv.reader(text.splitlines()), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells) or (line == 1 and [c.lower() for c in cells] == ["label", "word"]):
                continue
            if len(cells) != 2 or not all(cells):
                raise DataError(f"{path}:{line}: expected label,word; got {row}")
            words[cells[0]] = cells[1]
        return words
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        loaded = YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise DataError(f"{path}: not YAML ({' '.join(str(error).split())})") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(value, str | int | float) and not isinstance(value, bool)
        for value in loaded.values()
    ):
        raise DataError(f"{path}: expected a mapping of label: word")
    return {str(label): str(word).strip() for label, word in loaded.items()}


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
