"""Samples from a manifest of media files (JSONL or CSV), one row per sample.

JSONL rows::

    {"id": "dog-vs-cat", "audio_answer": "bark", "visual_answer": "meow",
     "runs": {"clean":    {"audio": "media/dog.wav", "frames": ["media/blank.png"]},
              "conflict": {"audio": "media/dog.wav", "frames": ["media/cat.png"]}}}

CSV has the same fields flattened: ``id,audio_answer,visual_answer,clean.audio,clean.frames,…``
with frame paths separated by ``;`` (the row schema and both spellings:
:mod:`patchwork.loading.manifest_schema`, :mod:`patchwork.loading.manifest_files`; every row is
validated before any media is decoded). An optional ``question`` overrides the study's. Paths are
relative to the manifest; a run may give ``fps`` of its frames (default 2). Instead of
``frames`` a run may name a ``video`` container (its soundtrack is the audio unless ``audio``
names another file), and ``image_features`` precomputed for models whose vision tower cannot run
here; see :mod:`patchwork.data.containers`. The model's adapter turns decoded media into inputs.
Every run of a row must yield the same token layout (when a check finds runs of different
lengths, its error says which of ``seconds`` and ``frame_size`` the row leaves unset). Errors name
the manifest line, the sample and the file; nothing is written before every row has been read.
The question is rendered by the checkpoint's chat template (:mod:`patchwork.loading.chat`) or
written with its turns by hand; a question may hold ``{media}``: the text before it (e.g. a user
turn) precedes the media placeholders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from patchwork import files
from patchwork.data import containers
from patchwork.data.sample import Sample
from patchwork.data.source import SampleInfo, SampleSource, layout_digests
from patchwork.errors import DataError, PatchworkError
from patchwork.loading.chat import MEDIA_MARKER, chat_prompt
from patchwork.loading.manifest_files import read_manifest
from patchwork.loading.manifest_schema import ManifestRow, ManifestRun, RowLimits
from patchwork.loading.model import LoadedModel
from patchwork.study.schema import Study

#: Run fields that decide a run's token count; runs of one row should agree on them.
LAYOUT_FIELDS = ("seconds", "frame_size", "fps", "max_frames", "audio_in_video")


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
    problem = files.not_regular(path)
    if problem is not None:
        problem = "not found: " if problem == "not found" else f"{problem}: "
        raise DataError(f"{study.where('dataset', 'manifest')}: manifest {problem}{path}")
    try:
        question = chat_prompt(loaded, study.question, study.chat)
    except PatchworkError as error:
        raise type(error)(f"{study.where('chat', 'template')}: {error}") from None

    limits = RowLimits(study.dataset.max_seconds, study.dataset.max_frame_side)
    rows = read_manifest(path, limits)  # every row's fields, before any media is decoded

    def build(line: int, row: ManifestRow) -> Sample:
        label = f"{path}:{line}"
        try:
            sample = _sample(row, path.parent, question, loaded, study)
        except PatchworkError as error:
            raise type(error)(f"{label}: sample {row.id}: {error}") from None
        return replace(sample, meta={**sample.meta, "manifest_line": label})

    infos = []
    for line, row in rows:
        sample = build(line, row)
        if check is not None:
            try:
                check(sample)
            except DataError as error:
                hint = layout_hint(row, sample)
                if hint is None:
                    raise
                raise DataError(f"{error}; {hint}") from None
        infos.append(
            SampleInfo(row.id, sample.audio_answer, sample.visual_answer, layout_digests(sample))
        )
    return SampleSource(
        infos, lambda start, stop: [build(line, row) for line, row in rows[start:stop]]
    )


def layout_hint(row: ManifestRow, sample: Sample) -> str | None:
    """What to set so that the runs of ``row`` share one token layout, when they differ in
    length (None when they do not): the runs' lengths, the ``seconds`` and ``frame_size`` the
    row leaves unset, and the layout fields its runs disagree on."""
    lengths = {name: int(inputs["input_ids"].shape[-1]) for name, inputs in sample.runs.items()}
    if len(set(lengths.values())) <= 1:
        return None
    counted = " and ".join(f"{name!r} {length}" for name, length in lengths.items())
    hint = (
        f"the runs have {counted} tokens: set 'frame_size' and 'seconds' in every run of the row "
        "so that the runs share one token layout"
    )
    unset = [
        f"{name}.{field}"
        for name, run in row.runs.items()
        for field in ("seconds", "frame_size")
        if getattr(run, field) is None and _applies(field, run)
    ]
    disagree = [
        field
        for field in LAYOUT_FIELDS
        if len({repr(getattr(run, field)) for run in row.runs.values()}) > 1
    ]
    if unset:
        hint += f" (not set: {', '.join(unset)})"
    if disagree:
        hint += f"; the runs differ in {', '.join(disagree)}"
    return hint


def _applies(field: str, run: ManifestRun) -> bool:
    """Whether ``field`` changes the layout of ``run``: seconds cut sound and video, frame_size
    resizes pictures."""
    if field == "seconds":
        return bool(run.audio or run.video)
    return bool(run.video or run.frames)


def _sample(
    row: ManifestRow, base: Path, question: str, loaded: LoadedModel, study: Study
) -> Sample:
    """One row's sample; ``question`` is the study's, rendered (a row's own is rendered here)."""
    adapter, dataset = loaded.adapter, study.dataset
    if row.question:
        question = chat_prompt(loaded, row.question, study.chat)
    # "{media}" in the question splits it: the text before goes before the media placeholders
    # (e.g. a chat template's user turn), the text after follows them
    before, marker, after = question.rpartition(MEDIA_MARKER)
    prefix_ids = loaded.token_ids(before) if marker and before else []
    question = after if marker else question
    text_ids = loaded.token_ids(question)
    audio_answer_id = loaded.answer_id(row.audio_answer)
    visual_answer_id = loaded.answer_id(row.visual_answer)
    if audio_answer_id == visual_answer_id:  # every effect would be 0 (or NaN) without a word
        raise DataError(
            f"audio_answer {row.audio_answer!r} and visual_answer {row.visual_answer!r} are one "
            f"token (id {audio_answer_id}) for this model; a sample's two answers must differ"
        )
    runs = {}
    for name, run in row.runs.items():
        media_run = containers.run_media(
            run.media_spec(),
            base,
            adapter.sampling_rate,
            question,
            dataset.max_seconds,
            dataset.max_frame_side,
            sampling=adapter.video_sampling(study.inputs.convention),
        )
        label = f"run {name!r} ({', '.join(_files(run, base))})"
        try:
            if study.inputs.builder == "processor":  # files checked above, made officially here
                inputs = adapter.processor_inputs(
                    run.media_spec(), base, text_ids, study.inputs.convention
                )
            else:
                inputs = adapter.build_inputs(text_ids, media_run)
            if run.image_features and "image_features" not in inputs:  # else silently unused
                raise DataError(
                    f"image_features: {study.model.family} takes no precomputed image "
                    "features; its pictures come from 'frames' or 'video'"
                )
        except PatchworkError as error:
            raise type(error)(f"{label}: {error}") from None
        if prefix_ids:
            inputs = _with_prefix(inputs, prefix_ids)
        adapter.check_inputs(inputs, label)
        runs[name] = inputs
    return Sample(
        sample_id=row.id,
        runs=runs,
        audio_answer=row.audio_answer,
        visual_answer=row.visual_answer,
        audio_answer_id=audio_answer_id,
        visual_answer_id=visual_answer_id,
    )


def _files(run: ManifestRun, base: Path) -> list[str]:
    """The media files a run names, as paths for messages."""
    named = [run.video, run.audio, run.image_features, *(run.frames or ())]
    return [str(base / item) for item in named if item]


def _with_prefix(inputs: dict[str, torch.Tensor], prefix_ids: list[int]) -> dict[str, torch.Tensor]:
    """``inputs`` with ``prefix_ids`` before the prompt (input_ids and attention_mask)."""
    prefix = torch.tensor([prefix_ids], dtype=inputs["input_ids"].dtype)
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([prefix, inputs["input_ids"]], dim=1)
    if "attention_mask" in inputs:
        ones = torch.ones_like(prefix, dtype=inputs["attention_mask"].dtype)
        extended["attention_mask"] = torch.cat([ones, inputs["attention_mask"]], dim=1)
    return extended
