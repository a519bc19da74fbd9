"""Samples from a manifest of media files (JSONL or CSV), one row per sample.

JSONL rows::

    {"id": "dog-vs-cat", "audio_answer": "bark", "visual_answer": "meow",
     "runs": {"clean":    {"audio": "media/dog.wav", "frames": ["media/blank.png"]},
              "conflict": {"audio": "media/dog.wav", "frames": ["media/cat.png"]}}}

CSV has the same fields flattened: ``id,audio_answer,visual_answer,clean.audio,clean.frames,…``
with frame paths separated by ``;``. An optional ``question`` overrides the study's. Paths are
relative to the manifest; a run may give ``fps`` of its frames (default 2). Instead of
``frames`` a run may name a ``video`` container (its soundtrack is the audio unless ``audio``
names another file), and ``image_features`` precomputed for models whose vision tower cannot run
here; see :mod:`patchwork.data.video`. The model's adapter turns decoded media into inputs.
Every run of a row must yield the same token layout. Errors name the manifest line, the sample
and the file; nothing is written before every row has been read. The question is rendered by the
checkpoint's chat template (:mod:`patchwork.loading.chat`) or written with its turns by hand; a
question may hold ``{media}``: the text before it (e.g. a user turn) precedes the media
placeholders.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from patchwork.data import video
from patchwork.data.sample import Sample
from patchwork.data.source import SampleInfo, SampleSource, layout_digests
from patchwork.errors import DataError, PatchworkError
from patchwork.loading.chat import MEDIA_MARKER, chat_prompt
from patchwork.loading.model import LoadedModel
from patchwork.study.schema import Study

REQUIRED = ("id", "audio_answer", "visual_answer", "runs")


def load_manifest(study: Study, loaded: LoadedModel) -> list[Sample]:
    """Every row of the study's manifest as a :class:`Sample` (all in memory: for small
    manifests and tests; runs use :func:`manifest_source`)."""
    source = manifest_source(study, loaded)
    return source.load(0, len(source))


def manifest_source(
    study: Study, loaded: LoadedModel, check: Callable[[Sample], None] | None = None
) -> SampleSource:
    """The study's manifest as a lazy :class:`SampleSource`.

    Every row is read, built (its media decoded) and ``check``-ed now, so that a bad row is
    found before anything runs, with its line; only its metadata (id, answers, token layouts)
    is kept. A block's rows are built again when the block is loaded, so memory does not grow
    with the number of rows.
    """
    path = study.dataset.manifest
    assert path is not None
    if not path.is_file():
        raise DataError(f"{study.where('dataset', 'manifest')}: manifest not found: {path}")
    try:
        question = chat_prompt(loaded, study.question, study.chat)
    except PatchworkError as error:
        raise type(error)(f"{study.where('chat', 'template')}: {error}") from None

    def build(line: int, row: Mapping[str, Any]) -> Sample:
        label = f"{path}:{line}"
        try:
            sample = _sample(row, path.parent, question, loaded, study)
        except PatchworkError as error:
            raise type(error)(f"{label}: sample {row['id']}: {error}") from None
        return replace(sample, meta={**sample.meta, "manifest_line": label})

    rows: list[tuple[int, Mapping[str, Any]]] = []
    infos = []
    seen: dict[str, int] = {}
    for line, row in _rows(path):
        label = f"{path}:{line}"
        missing = [key for key in REQUIRED if not row.get(key)]
        if missing:
            named = f" (sample {row['id']})" if row.get("id") else ""
            raise DataError(f"{label}: row lacks field(s) {missing}{named}")
        sample_id = str(row["id"])
        if sample_id in seen:
            raise DataError(f"{label}: sample id {sample_id!r} repeats line {seen[sample_id]}")
        seen[sample_id] = line
        sample = build(line, row)
        if check is not None:
            check(sample)
        infos.append(
            SampleInfo(sample_id, sample.audio_answer, sample.visual_answer, layout_digests(sample))
        )
        rows.append((line, row))
    if not rows:
        raise DataError(f"{path}: the manifest lists no samples")
    return SampleSource(
        infos, lambda start, stop: [build(line, row) for line, row in rows[start:stop]]
    )


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a field
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {error.start}); save the manifest as UTF-8"
        ) from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        for row in reader:
            yield reader.line_num, _unflatten(row)
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a JSON object")
        yield number, row


def _unflatten(row: Mapping[str, str]) -> dict[str, Any]:
    nested: dict[str, Any] = {"runs": {}}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        if "." in key:
            run, field = key.split(".", 1)
            parts = value.split(";") if field == "frames" else value
            nested["runs"].setdefault(run, {})[field] = parts
        else:
            nested[key] = value
    return nested


def _sample(
    row: Mapping[str, Any], base: Path, question: str, loaded: LoadedModel, study: Study
) -> Sample:
    """One row's sample; ``question`` is the study's, rendered (a row's own is rendered here)."""
    adapter, dataset = loaded.adapter, study.dataset
    if row.get("question"):
        question = chat_prompt(loaded, str(row["question"]), study.chat)
    # "{media}" in the question splits it: the text before goes before the media placeholders
    # (e.g. a chat template's user turn), the text after follows them
    before, marker, after = question.rpartition(MEDIA_MARKER)
    prefix_ids = loaded.token_ids(before) if marker and before else []
    question = after if marker else question
    text_ids = loaded.token_ids(question)
    runs = {}
    if not isinstance(row["runs"], Mapping):
        raise DataError("'runs' must map run names to their media")
    for name, spec in row["runs"].items():
        if not isinstance(spec, Mapping):
            raise DataError(f"run {name!r} must be a mapping of media fields")
        if not {"audio", "video", "frames", "image_features"} & set(spec):
            raise DataError(
                f"run {name!r} names no media: give 'audio', 'video', 'frames' or 'image_features'"
            )
        media_run = video.run_media(
            spec, base, adapter.sampling_rate, question, dataset.max_seconds, dataset.max_frame_side
        )
        label = f"run {name!r} ({', '.join(_files(spec, base))})"
        try:
            inputs = adapter.build_inputs(text_ids, media_run)
        except PatchworkError as error:
            raise type(error)(f"{label}: {error}") from None
        if prefix_ids:
            inputs = _with_prefix(inputs, prefix_ids)
        adapter.check_inputs(inputs, label)
        runs[name] = inputs
    return Sample(
        sample_id=str(row["id"]),
        runs=runs,
        audio_answer=str(row["audio_answer"]),
        visual_answer=str(row["visual_answer"]),
        audio_answer_id=loaded.answer_id(str(row["audio_answer"])),
        visual_answer_id=loaded.answer_id(str(row["visual_answer"])),
    )


def _files(spec: Mapping[str, Any], base: Path) -> list[str]:
    """The media files a run names, as paths for messages."""
    listed = []
    for key in ("video", "audio", "image_features", "frames"):
        value = spec.get(key)
        for item in value if isinstance(value, list) else [value] if value else []:
            listed.append(str(base / item))
    return listed


def _with_prefix(inputs: dict[str, torch.Tensor], prefix_ids: list[int]) -> dict[str, torch.Tensor]:
    """``inputs`` with ``prefix_ids`` before the prompt (input_ids and attention_mask)."""
    prefix = torch.tensor([prefix_ids], dtype=inputs["input_ids"].dtype)
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([prefix, inputs["input_ids"]], dim=1)
    if "attention_mask" in inputs:
        ones = torch.ones_like(prefix, dtype=inputs["attention_mask"].dtype)
        extended["attention_mask"] = torch.cat([ones, inputs["attention_mask"]], dim=1)
    return extended
