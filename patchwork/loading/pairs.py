"""Counterfactual pairs from labelled clips: the manifest ``patchwork pairs`` writes.

Each sample is one clip of label A: its **clean** run is the clip itself (its picture and its
sound, as the shipped counterfactual studies define it); its **conflict** run is the same sound
under the picture of a clip of another label B (``{"video": B, "audio": A}``). The audio answer
is A's word, the visual answer B's.

The runs of a sample must share one token layout, and samples of one layout can serve as each
other's noise-floor partners, so one frame size and one length are chosen for all rows and
written into every run (``frame_size`` and ``seconds``): the most common frame size and the
shortest clip's length (in whole frame steps), unless given. Given a model (its study or
checkpoint), every answer word is checked to be one token of its tokenizer, distinct from the
others', and every clip is built into the model's inputs once, by the loader a run uses, so a clip
whose layout still differs (a picture too short, an odd frame count) is left out rather than
failing the study later. Samples are balanced across labels and drawn with a seeded generator;
everything left out is reported with its reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchwork import plugins
from patchwork.data import containers
from patchwork.data.conventions import Convention
from patchwork.errors import DataError, PatchworkError
from patchwork.loading.clips import Clip, Dropped, answer_words, find_clips, measure
from patchwork.loading.model import LoadedModel
from patchwork.study.specs import MAX_SEED

#: Longest default length (s): the Qwen2.5-Omni and Gemma 3n feature extractors read 30 s.
LONGEST_DEFAULT_SECONDS = 30.0


@dataclass(frozen=True)
class PairsReport:
    """What :func:`pair_clips` wrote and why: the choices made and every clip left out."""

    manifest: Path
    rows: int
    per_label: int
    words: Mapping[str, str]
    checked_with: str | None
    frame_size: tuple[int, int]
    frame_size_reason: str
    seconds: float
    seconds_reason: str
    layout: str | None
    dropped: tuple[Dropped, ...]
    unused: tuple[Clip, ...]
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The report, a line per fact; one per clip left out."""
        labels = ", ".join(f"{label} → {word!r}" for label, word in self.words.items())
        checked = (
            f"single tokens of {self.checked_with}"
            if self.checked_with
            else "not checked against a model (give --study or --checkpoint)"
        )
        height, width = self.frame_size
        lines = [
            f"wrote {self.manifest}: {self.rows} rows, {self.per_label} per label",
            f"answer words: {labels} ({checked})",
            f"frame_size [{height}, {width}] (height, width): {self.frame_size_reason}",
            f"seconds {self.seconds:g}: {self.seconds_reason}",
        ]
        if self.layout:
            lines.append(f"token layout, checked on every clip: {self.layout}")
        lines += list(self.notes)
        if self.dropped:
            lines.append(f"left out {len(self.dropped)}:")
            lines += [f"  {dropped.name}: {dropped.reason}" for dropped in self.dropped]
        if self.unused:
            lines.append(f"not used, to balance the labels: {len(self.unused)} clips")
        return lines


def pair_clips(
    source: str | Path,
    out: str | Path,
    *,
    words: str | Path | Mapping[str, str] | None = None,
    seed: int = 0,
    per_label: int | None = None,
    loaded: LoadedModel | None = None,
    frame_size: tuple[int, int] | None = None,
    seconds: float | None = None,
    fps: float | None = None,
    min_seconds: float = 1.0,
    audio_in_video: bool = False,
    convention: Convention = "model_card",
    max_seconds: float = 600.0,
    max_side: int = 4096,
) -> PairsReport:
    """Write a counterfactual JSONL manifest at ``out`` from the labelled clips of ``source`` (a
    folder of label folders or a CSV of ``path,label``) and report what was done.

    ``words``: label → answer word (a mapping, or a YAML/CSV file); ``loaded``: the model to
    check words and token layouts against; ``frame_size`` (height, width) and ``seconds``: the
    choices to impose instead of deriving them; ``fps``: frames per second sampled (written into
    every run; the manifest's default otherwise); ``min_seconds``: shorter clips are left out;
    ``convention``: the input route layouts are checked by (a study's ``inputs.convention``).

    Raises:
        patchwork.errors.DataError: the source or map cannot be read, ``out`` is not ``.jsonl``
            or cannot be written, an option is out of bounds, or fewer than two labels keep a
            usable clip (the message counts the reasons).
    """
    out = Path(out)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise DataError(f"--seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if out.suffix.lower() != ".jsonl":
        raise DataError(f"{out}: pairs writes a JSONL manifest; name it *.jsonl")
    for name, value, high in (("seconds", seconds, max_seconds), ("fps", fps, 120.0)):
        if value is not None and not 0 < value <= high:
            raise DataError(f"--{name} must lie in (0, {high:g}], got {value:g}")
    if not 0 <= min_seconds <= max_seconds:  # NaN fails too
        raise DataError(f"--min-seconds must lie in [0, {max_seconds:g}], got {min_seconds:g}")
    if frame_size is not None and not all(1 <= side <= max_side for side in frame_size):
        raise DataError(f"--frame-size sides must lie in [1, {max_side}], got {frame_size}")
    found, dropped = find_clips(source)
    clips: list[Clip] = []
    for clip in found:
        measured = measure(clip, max_side)
        if isinstance(measured, Clip):
            clips.append(measured)
        else:
            dropped.append(measured)
    label_words, clips, dropped = answer_words(clips, dropped, words, loaded)
    step = 1.0 / (fps or containers.DEFAULT_FPS)
    clips, dropped, chosen_seconds, seconds_reason = _length(
        clips, dropped, seconds, min_seconds, step, max_seconds
    )
    chosen_size, size_reason = _frame_size(clips, frame_size)
    extra: dict[str, Any] = {"seconds": chosen_seconds, "frame_size": list(chosen_size)}
    if fps is not None:
        extra["fps"] = fps
    if audio_in_video:
        extra["audio_in_video"] = True
    layout = None
    if loaded is not None:
        limits = (max_seconds, max_side)
        clips, dropped, layout = _same_layout(clips, dropped, loaded, extra, convention, limits)
    by_label: dict[str, list[Clip]] = {}
    for clip in clips:
        by_label.setdefault(clip.label, []).append(clip)
    if len(by_label) < 2:
        reasons = Counter(d.reason for d in dropped).most_common()
        counted = "; ".join(f"{count} × {reason}" for reason, count in reasons[:3])
        counted += "; …" if len(reasons) > 3 else ""
        raise DataError(
            f"{source}: pairs needs usable clips of at least two labels, found "
            f"{sorted(by_label) or 'none'}" + (f" (left out: {counted})" if counted else "")
        )
    rng = random.Random(seed)
    fewest = min(len(group) for group in by_label.values())
    count = fewest if per_label is None else min(per_label, fewest)
    notes = []
    if per_label is not None and per_label > fewest:
        short = [label for label, group in by_label.items() if len(group) == fewest]
        notes.append(f"--per-label {per_label}: {short} keep only {fewest} usable clips each")
    chosen = {label: rng.sample(group, count) for label, group in sorted(by_label.items())}
    used = {clip.path for group in chosen.values() for clip in group}
    rows = _rows(chosen, label_words, extra, out.parent, rng)
    _write(out, rows)
    return PairsReport(
        manifest=out,
        rows=len(rows),
        per_label=count,
        words={label: label_words[label] for label in chosen},
        checked_with=loaded.name if loaded is not None else None,
        frame_size=chosen_size,
        frame_size_reason=size_reason,
        seconds=chosen_seconds,
        seconds_reason=seconds_reason,
        layout=layout,
        dropped=tuple(dropped),
        unused=tuple(clip for clip in clips if clip.path not in used),
        notes=tuple(notes),
    )


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    """Write the manifest through a draft beside it, so that ``out`` is whole or as it was."""
    partial = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        partial.replace(out)
    except OSError as error:  # a full disk, a read-only folder, a folder named like the manifest
        if partial.is_file():
            partial.unlink()
        raise DataError(f"{out}: cannot write the manifest ({error.strerror or error})") from None


def _length(
    clips: list[Clip],
    dropped: list[Dropped],
    seconds: float | None,
    min_seconds: float,
    step: float,
    max_seconds: float,
) -> tuple[list[Clip], list[Dropped], float, str]:
    """The length every run is cut to; clips shorter than it (or than ``min_seconds``) are left
    out."""
    floor = max(min_seconds, seconds or 0.0)
    kept = [clip for clip in clips if clip.seconds + 1e-6 >= floor]
    dropped += [
        Dropped(clip.path, clip.label, f"too short: {clip.seconds:.2f} s, under {floor:g} s")
        for clip in clips
        if clip.seconds + 1e-6 < floor
    ]
    if seconds is not None:
        return kept, dropped, seconds, "given"
    if not kept:
        return kept, dropped, 0.0, "no clip long enough"
    shortest = min(clip.seconds for clip in kept)
    cap = min(LONGEST_DEFAULT_SECONDS, max_seconds)
    chosen = math.floor(min(shortest, cap) / step + 1e-6) * step
    reason = (
        f"the shortest usable clip ({shortest:.2f} s), in whole steps of {step:g} s "
        f"(the frames sampled per second)"
    )
    if shortest > cap:
        reason = f"the longest default ({cap:g} s; the clips are longer: give --seconds)"
    return kept, dropped, round(chosen, 6), reason


def _frame_size(clips: list[Clip], given: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    """The (height, width) every frame is resized to: ``given``, or the most common one (ties:
    the larger)."""
    if given is not None:
        return given, "given"
    if not clips:
        return (0, 0), "no clips"
    sizes = Counter((clip.height, clip.width) for clip in clips)
    size, count = max(sizes.items(), key=lambda item: (item[1], item[0][0] * item[0][1]))
    reason = f"the most common ({count} of {len(clips)} clips)"
    if len(sizes) > 1:
        reason += "; the others are resized to it (aspect ratio not kept)"
    return size, reason


def _same_layout(
    clips: list[Clip],
    dropped: list[Dropped],
    loaded: LoadedModel,
    extra: Mapping[str, Any],
    convention: Convention,
    limits: tuple[float, int],
) -> tuple[list[Clip], list[Dropped], str | None]:
    """Build each clip's clean run into the model's inputs as a run would; keep the clips of
    the most common token layout. A conflict run has its clip's sound and another clip's
    frames, so when every clip gives one layout, every pair does."""
    adapter = loaded.adapter
    layouts: dict[Path, tuple[str, str]] = {}
    kept = []
    for clip in clips:
        spec = {"video": clip.path.name, **extra}
        try:
            media_run = containers.run_media(
                spec,
                clip.path.parent,
                adapter.sampling_rate,
                "",
                *limits,
                sampling=adapter.video_sampling(convention),
            )
            inputs = adapter.build_inputs([], media_run)
            adapter.check_inputs(inputs, clip.name)
        except PatchworkError as error:
            dropped.append(Dropped(clip.path, clip.label, f"the model cannot read it: {error}"))
            continue
        ids = inputs["input_ids"]
        digest = hashlib.sha256(repr(tuple(ids.shape)).encode() + ids.numpy().tobytes())
        groups = adapter.position_groups(ids)
        counts = ", ".join(
            f"{name} {int(groups[name].sum())}"
            for name in ("audio", "video", "image")
            if int(groups[name].sum())
        )
        layouts[clip.path] = (
            digest.hexdigest(),
            f"{ids.shape[-1]} positions before the question ({counts})",
        )
        kept.append(clip)
    if not kept:
        return kept, dropped, None
    common, _ = Counter(layouts[clip.path] for clip in kept).most_common(1)[0]
    for clip in kept:
        if layouts[clip.path] != common:
            reason = f"gives {layouts[clip.path][1]} where the others give {common[1]}"
            dropped.append(Dropped(clip.path, clip.label, reason))
    return [clip for clip in kept if layouts[clip.path] == common], dropped, common[1]


def _rows(
    chosen: Mapping[str, list[Clip]],
    words: Mapping[str, str],
    extra: Mapping[str, Any],
    folder: Path,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """One row per chosen clip: its sound under the picture of a clip of another label, the
    other labels taken in turn (from a seeded start) and their clips in turn, so that every
    label's pictures are used about equally."""
    labels = sorted(chosen)
    next_picture = dict.fromkeys(labels, 0)
    rows, ids = [], set()
    for label in labels:
        others = [other for other in labels if other != label]
        start = rng.randrange(len(others))
        for index, clip in enumerate(chosen[label]):
            other = others[(start + index) % len(others)]
            picture = chosen[other][next_picture[other] % len(chosen[other])]
            next_picture[other] += 1
            base = f"{label}-{clip.path.stem}-under-{other}-{picture.path.stem}"[:200]
            sample_id, repeat = base, 1
            while sample_id in ids:  # two files of one stem (a.mp4, a.mkv)
                repeat += 1
                sample_id = f"{base}-{repeat}"
            ids.add(sample_id)
            sound = _relative(clip.path, folder)
            rows.append(
                {
                    "id": sample_id,
                    "audio_answer": words[label],
                    "visual_answer": words[other],
                    "runs": {
                        "clean": {"video": sound, **extra},
                        "conflict": {
                            "video": _relative(picture.path, folder),
                            "audio": sound,
                            **extra,
                        },
                    },
                }
            )
    return rows


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to the manifest's folder, with forward slashes."""
    return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()


#: ``model_type`` of a checkpoint's config.json → the family that reads it.
FAMILY_OF_MODEL_TYPE = {
    "qwen2_5_omni": "qwen2_5_omni",
    "qwen2_5_omni_thinker": "qwen2_5_omni",
    "qwen3_omni_moe": "qwen3_omni",
    "qwen3_omni_moe_thinker": "qwen3_omni",
    "gemma3n": "gemma3n",
}


def checkpoint_model(checkpoint: str, family: str | None = None) -> LoadedModel:
    """A checkpoint's tokenizer and its model built on the meta device (no weights read), to
    check words and layouts against; ``family`` defaults to the one its config names."""
    from patchwork.loading.model import load_model
    from patchwork.study.specs import ModelSpec

    if family is None:
        family = "qwen2_5_omni"
        if not checkpoint.startswith("testbed"):
            config = Path(checkpoint) / "config.json"
            if not config.is_file():
                raise DataError(f"--checkpoint: no config.json in {checkpoint}")
            try:
                model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
            except (OSError, ValueError, AttributeError) as error:
                raise DataError(f"--checkpoint: cannot read {config} ({error})") from None
            if model_type not in FAMILY_OF_MODEL_TYPE:
                raise DataError(
                    f"--checkpoint: {config} names model_type {model_type!r}; give --family"
                )
            family = FAMILY_OF_MODEL_TYPE[model_type]
    installed = plugins.names(plugins.FAMILIES)
    if family not in installed or family == "generic":
        known = ", ".join(name for name in installed if name != "generic")
        raise DataError(f"--family: {family!r} is not a family pairs can check with ({known})")
    spec = ModelSpec(family=family, checkpoint=checkpoint)
    return load_model(spec, "--checkpoint", weights=False, config_only=True)
