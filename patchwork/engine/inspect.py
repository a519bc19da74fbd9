"""What the model receives for one sample and run (``patchwork inspect``).

The sample is built by the engine's own loader (:func:`~patchwork.engine.runner.load_samples`,
the path every run takes) and the forward's keyword arguments by the adapter's
``forward_kwargs``, as every method calls it — so an inspection cannot disagree with a run. The
model is built from its config on the meta device (as ``validate`` does): no weights are read.

From those tensors alone it recovers what a reader wants to see: the positions of each position
group, the frames the vision tower is shown (un-patched and un-normalized, after every resize
and frame choice) with their times, and the log-mel the audio encoder hears.
:func:`patchwork.analysis.input_figures.write_inspection` writes them as files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchwork.data import media
from patchwork.data.sample import RunMedia, Sample
from patchwork.data.unpatch import frames_from_patches
from patchwork.engine.runner import load_samples
from patchwork.errors import DataError
from patchwork.loading.model import LoadedModel, load_model
from patchwork.models.adapter import ModelAdapter
from patchwork.study.schema import Study

Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RunInputs:
    """One run of one sample as the model's forward receives it, and views of it.

    ``forward``: the forward's keyword arguments (tensors under the processor's key names, and
    flags such as ``use_audio_in_video``); ``positions``: position group → (first, last)
    inclusive spans of its positions; ``videos``: uint8 frames (n, H, W, 3) per video, as the
    vision tower sees them; ``frame_times``: per video, each frame's time (s) in its source clip,
    as the decoder took it (None where the sample was not built from media files);
    ``grid_seconds``: per video, the seconds one temporal grid step stands for in the model's
    positions (``video_second_per_grid``); ``mels``: log-mel (mel bins, frames) per audio clip,
    ``mel_seconds`` apart.
    """

    study: str
    sample_id: str
    run: str
    runs: tuple[str, ...]
    same_layout: tuple[str, ...]
    audio_answer: str
    visual_answer: str
    forward: Mapping[str, Any]
    positions: Mapping[str, Spans]
    videos: tuple[np.ndarray, ...] = ()
    frame_times: tuple[tuple[float, ...] | None, ...] = ()
    grid_seconds: tuple[float | None, ...] = ()
    temporal_patch: int = 2
    video_tokens: tuple[int, ...] = ()
    mels: tuple[np.ndarray, ...] = ()
    mel_seconds: float = media.HOP_LENGTH / media.SAMPLING_RATE

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The forward's tensor arguments, by key."""
        return {k: v for k, v in self.forward.items() if isinstance(v, torch.Tensor)}

    @property
    def flags(self) -> dict[str, Any]:
        """The forward's other arguments (e.g. ``use_audio_in_video``)."""
        return {k: v for k, v in self.forward.items() if not isinstance(v, torch.Tensor)}

    @property
    def audio_seconds(self) -> tuple[float, ...]:
        """Seconds of audio the model hears, per clip."""
        return tuple(mel.shape[1] * self.mel_seconds for mel in self.mels)

    def save_tensors(self, path: str | Path) -> Path:
        """Write :attr:`tensors` as safetensors; the flags, sample, run and study go in its
        metadata (``forward_flags`` as JSON)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        metadata = {
            "study": self.study,
            "sample": self.sample_id,
            "run": self.run,
            "forward_flags": json.dumps(self.flags),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    def describe(self) -> list[str]:
        """The token layout in a few lines: positions per group, frames and their times,
        seconds of audio."""
        others = f"; same token layout as {', '.join(self.same_layout)}" if self.same_layout else ""
        lines = [
            f"sample {self.sample_id}, run {self.run} (runs: {', '.join(self.runs)}{others})",
            f"answers: audio {self.audio_answer!r}, visual {self.visual_answer!r}",
        ]
        total = _count(self.positions.get("all", ()))
        groups = [
            f"{name} {_count(spans)}" + (f" ({_spans_text(spans)})" if spans else "")
            for name, spans in self.positions.items()
            if name != "all"
        ]
        lines.append(f"positions: {total} — " + ", ".join(groups))
        for index, frames in enumerate(self.videos):
            times = _at(self.frame_times, index)
            when = f" at {_times_text(times)} s of the clip" if times else ""
            if times is not None and len(frames) > len(times):
                when += f" (+{len(frames) - len(times)} repeating the last, to fill a grid step)"
            step = _at(self.grid_seconds, index)
            per_step = f"; {step:g} s per grid step in the model's positions" if step else ""
            lines.append(
                f"video {index}: {len(frames)} frames of {frames.shape[2]}×{frames.shape[1]} px"
                f"{when} → {_at(self.video_tokens, index)} video tokens{per_step}"
            )
        for index, mel in enumerate(self.mels):
            lines.append(
                f"audio {index}: {self.audio_seconds[index]:.2f} s ({mel.shape[1]} mel frames "
                f"of {self.mel_seconds * 1000:g} ms, {mel.shape[0]} mel bins)"
            )
        if self.flags:
            lines.append("flags: " + ", ".join(f"{k}={v}" for k, v in self.flags.items()))
        return lines

    def frame_labels(self, video: int) -> list[str]:
        """A label per frame of ``video``: its time in the source clip; a frame repeated to
        fill the last grid step says so; without source times, the time the grid gives it."""
        count = len(self.videos[video])
        times = _at(self.frame_times, video)
        if times is not None:
            return [f"{t:.2f} s" for t in times[:count]] + ["repeat"] * (count - len(times))
        step = _at(self.grid_seconds, video)
        if step is None:
            return [f"frame {k}" for k in range(count)]
        # a grid step holds `temporal_patch` frames taken evenly within it
        return [f"{k * step / self.temporal_patch:.2f} s (grid)" for k in range(count)]


def inspect_inputs(study: Study | str | Path, sample_id: str, run: str | None = None) -> RunInputs:
    """The inputs one run of one sample feeds the model, without reading its weights.

    ``study``: a :class:`~patchwork.study.schema.Study` or a study file; ``run``: a run of the
    sample (default: its first). A sample whose runs differ in token layout is inspected all the
    same — seeing why is what this is for.

    Raises:
        patchwork.errors.DataError: no such sample or run (the message lists the ones there are).
    """
    if not isinstance(study, Study):
        from patchwork.study import load_study

        study = load_study(Path(study))
    torch.manual_seed(study.execution.seed)  # as a run starts
    loaded = load_model(study.model, study.where("model"), weights=False)
    samples = load_samples(study, loaded)
    ids = [info.sample_id for info in samples.infos]
    if sample_id not in ids:
        shown = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        raise DataError(
            f"{study.where('dataset')}: no sample {sample_id!r} among the study's {len(ids)} "
            f"samples ({shown})"
        )
    index = ids.index(sample_id)
    with _recorded_media(loaded.adapter) as decoded:
        sample = samples.load(index, index + 1)[0]
    runs = tuple(sample.runs)
    run = run if run is not None else runs[0]
    if run not in sample.runs:
        raise DataError(f"sample {sample_id}: has no run {run!r}; its runs: {', '.join(runs)}")
    # built from media files, the runs were decoded one by one, in order
    media_runs = dict(zip(runs, decoded, strict=True)) if len(decoded) == len(runs) else {}
    return run_inputs(loaded, study.name, sample, run, media_runs.get(run))


def run_inputs(
    loaded: LoadedModel,
    study_name: str,
    sample: Sample,
    run: str,
    decoded: RunMedia | None = None,
) -> RunInputs:
    """:class:`RunInputs` of ``sample``'s ``run`` for ``loaded``'s model; ``decoded``: the run's
    media as the loader decoded them (their frames' source times), where known."""
    adapter = loaded.adapter
    inputs = sample.runs[run]
    forward = adapter.forward_kwargs(inputs)
    ids = inputs["input_ids"]
    same = tuple(
        other
        for other, values in sample.runs.items()
        if other != run
        and values["input_ids"].shape == ids.shape
        and torch.equal(values["input_ids"], ids)
    )
    positions = {
        name: _spans(mask.reshape(-1)) for name, mask in adapter.position_groups(ids).items()
    }
    videos, tokens = _videos(adapter, forward)
    seconds = forward.get("video_second_per_grid")
    grid_seconds = tuple(
        float(seconds.reshape(-1)[index]) if seconds is not None else None
        for index in range(len(videos))
    )
    source_times = getattr(decoded, "frame_times", ())
    frame_times = tuple(
        tuple(float(t) for t in source_times) if source_times and len(videos) == 1 else None
        for _ in videos
    )
    vision = getattr(adapter.config, "vision_config", None)
    return RunInputs(
        study=study_name,
        sample_id=sample.sample_id,
        run=run,
        runs=tuple(sample.runs),
        same_layout=same,
        audio_answer=sample.audio_answer,
        visual_answer=sample.visual_answer,
        forward=forward,
        positions=positions,
        videos=videos,
        frame_times=frame_times,
        grid_seconds=grid_seconds,
        temporal_patch=int(getattr(vision, "temporal_patch_size", 2)),
        video_tokens=tokens,
        mels=_mels(forward),
        mel_seconds=media.HOP_LENGTH / adapter.sampling_rate,
    )


@contextmanager
def _recorded_media(adapter: ModelAdapter) -> Iterator[list[RunMedia]]:
    """Record the decoded media every run is built from while the block is loaded (the adapter
    was built for this inspection alone; its method is restored after)."""
    decoded: list[RunMedia] = []
    build = adapter.build_inputs

    def recording(text_ids: Sequence[int], media_run: RunMedia) -> dict[str, torch.Tensor]:
        decoded.append(media_run)
        return build(text_ids, media_run)

    setattr(adapter, "build_inputs", recording)  # noqa: B010 - this instance only, undone below
    try:
        yield decoded
    finally:
        del adapter.build_inputs


def _videos(
    adapter: ModelAdapter, forward: Mapping[str, Any]
) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Frames per video from Qwen-VL patches, and each video's token count."""
    if "pixel_values_videos" not in forward or "video_grid_thw" not in forward:
        return (), ()
    vision = adapter.config.vision_config
    merge = int(vision.spatial_merge_size)
    mean, std = _pixel_statistics(adapter)
    grids = forward["video_grid_thw"].tolist()
    videos = frames_from_patches(
        forward["pixel_values_videos"].detach().cpu().float().numpy(),
        grids,
        int(vision.patch_size),
        int(vision.temporal_patch_size),
        merge,
        mean,
        std,
    )
    return tuple(videos), tuple(t * h * w // merge**2 for t, h, w in grids)


def _pixel_statistics(adapter: ModelAdapter) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the adapter normalized pixels with: the checkpoint's where its
    preprocessor config names them, else the family's."""
    settings = getattr(adapter, "_vision_settings", None)
    if isinstance(settings, Mapping) and "mean" in settings and "std" in settings:
        return tuple(settings["mean"]), tuple(settings["std"])
    return (
        tuple(getattr(adapter, "pixel_mean", media.CLIP_MEAN)),
        tuple(getattr(adapter, "pixel_std", media.CLIP_STD)),
    )


def _mels(forward: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """Log-mel (mel bins, frames) per audio clip, the frames its mask marks: Qwen's
    ``input_features`` (clips, bins, frames) with ``feature_attention_mask``, Gemma 3n's (clips,
    frames, bins) with ``input_features_mask``."""
    features = forward.get("input_features")
    if not isinstance(features, torch.Tensor):
        return ()
    values = features.detach().cpu().float().numpy()
    if "input_features_mask" in forward:
        masks = forward["input_features_mask"].detach().cpu().numpy().astype(bool)
        return tuple(clip[mask].T for clip, mask in zip(values, masks, strict=True))
    mask_tensor = forward.get("feature_attention_mask")
    if mask_tensor is None:
        return tuple(values)
    masks = mask_tensor.detach().cpu().numpy().astype(bool)
    return tuple(clip[:, mask] for clip, mask in zip(values, masks, strict=True))


def _spans(mask: torch.Tensor) -> Spans:
    """(first, last) inclusive runs of True in a boolean (seq,) mask."""
    positions = torch.nonzero(mask).reshape(-1).tolist()
    spans: list[tuple[int, int]] = []
    for position in positions:
        if spans and spans[-1][1] == position - 1:
            spans[-1] = (spans[-1][0], position)
        else:
            spans.append((position, position))
    return tuple(spans)


def _at(values: tuple[Any, ...], index: int) -> Any:
    return values[index] if index < len(values) else None


def _count(spans: Spans) -> int:
    return sum(last - first + 1 for first, last in spans)


def _spans_text(spans: Spans, shown: int = 4) -> str:
    parts = [f"{a}" if a == b else f"{a}–{b}" for a, b in spans[:shown]]
    if len(spans) > shown:
        parts.append(f"… {len(spans)} spans")
    return ", ".join(parts)


def _times_text(times: tuple[float, ...], shown: int = 8) -> str:
    if len(times) <= shown:
        return ", ".join(f"{t:.2f}" for t in times)
    head = ", ".join(f"{t:.2f}" for t in times[: shown - 2])
    return f"{head}, …, {times[-1]:.2f}"
