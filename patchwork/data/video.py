"""Decode real media for a manifest run: video containers, soundtracks, precomputed features.

A run of a manifest row may name (paths relative to the manifest):

- ``video``: a container (mp4, mkv, webm, …) decoded with PyAV; frames are sampled at ``fps``
  (default 2 per second, at most ``max_frames``); its soundtrack is the run's audio unless
  ``audio`` is given;
- ``audio``: a sound file (wav/flac through soundfile, anything else through PyAV), e.g. the
  swapped soundtrack of a counterfactual clip; resampled to the model's rate (PyAV's resampler);
- ``frames``: still images instead of a video;
- ``image_features``: precomputed vision-tower outputs, ``.npy`` or ``.safetensors``
  (for families whose vision tower cannot run here, e.g. Gemma 3n);
- ``audio_in_video``: true when the soundtrack is interleaved with the frames (Qwen2.5-Omni);
- ``seconds``: the clip's length: audio cut or zero-padded to it, frames sampled within it;
  ``frame_size: [height, width]``: frames resized to it. Counterfactual pairs built from clips
  of different lengths or resolutions need both, since the runs of a sample must share one
  token layout.

Every failure is a :class:`~patchwork.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchwork.data import media
from patchwork.data.sample import RunMedia
from patchwork.errors import DataError

#: Frames per second sampled from a video (or assumed for still frames) unless a run gives ``fps``.
DEFAULT_FPS = 2.0
DEFAULT_MAX_FRAMES = 32
RUN_FIELDS = {
    "audio",
    "video",
    "frames",
    "image_features",
    "fps",
    "max_frames",
    "audio_in_video",
    "seconds",
    "frame_size",
}
_SOUNDFILE_SUFFIXES = {".wav", ".flac"}


def _exists(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    return path


def decode_audio(path: str | Path, sampling_rate: int) -> np.ndarray:
    """The first audio stream of ``path`` as mono float32 (n_samples,) at ``sampling_rate``."""
    import av

    path = _exists(Path(path), "audio")
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(f"{path} has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            for frame in container.decode(audio=0):
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.FFmpegError as error:
        raise DataError(f"cannot decode audio of {path}: {error}") from None
    if not chunks or sum(len(chunk) for chunk in chunks) == 0:
        raise DataError(f"{path} holds no audio samples")
    return np.concatenate(chunks).astype(np.float32)


def load_sound(path: str | Path, sampling_rate: int) -> np.ndarray:
    """A sound file or a container's soundtrack, mono float32 at ``sampling_rate``."""
    path = Path(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        return media.load_audio(path, sampling_rate)
    return decode_audio(path, sampling_rate)


def sample_frames(
    path: str | Path,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_side: int = 4096,
) -> np.ndarray:
    """uint8 RGB frames (n, H, W, 3) of ``path``'s first video stream, one per 1/``fps`` s
    (frames with a side over ``max_side`` are refused before they are decoded)."""
    import av

    path = _exists(Path(path), "video")
    frames: list[np.ndarray] = []
    next_time = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} has no video stream")
            stream = container.streams.video[0]
            if max(stream.width or 0, stream.height or 0) > max_side:
                raise DataError(
                    f"{path}: frames of {stream.width}x{stream.height} pixels, over max_frame_side "
                    f"({max_side})"
                )
            for frame in container.decode(video=0):
                time = float(frame.time) if frame.time is not None else next_time
                if time + 1e-6 < next_time:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                next_time += 1.0 / fps
                if len(frames) >= max_frames:
                    break
    except av.FFmpegError as error:
        raise DataError(f"cannot decode video {path}: {error}") from None
    if not frames:
        raise DataError(f"{path} holds no video frames")
    return np.stack(frames)


def load_features(path: str | Path) -> torch.Tensor:
    """Precomputed features from ``.npy`` or ``.safetensors`` (one tensor) as float32."""
    path = _exists(Path(path), "image_features")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise DataError(f"{path} must hold exactly one tensor, holds {sorted(tensors)}")
            return next(iter(tensors.values())).to(torch.float32)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read features {path}: {error}") from None
    raise DataError(f"features must be .npy or .safetensors: {path}")


def resize_frames(frames: np.ndarray, size: Any, max_side: int = 4096) -> np.ndarray:
    """Frames (n, H, W, 3) resized (bicubic) to ``size`` = [height, width], each in
    [1, ``max_side``]."""
    if isinstance(size, str):
        size = size.replace("x", ",").split(",")
    try:
        height, width = (int(value) for value in size)
    except (TypeError, ValueError):
        raise DataError(f"frame_size must be [height, width], got {size!r}") from None
    if not (1 <= height <= max_side and 1 <= width <= max_side):
        raise DataError(f"frame_size sides must lie in [1, {max_side}], got {size!r}")
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
            for frame in frames
        ]
    )


def _bounded(spec: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    """``spec[key]`` as a finite number in (``low``, ``high``]; None when absent."""
    if spec.get(key) in (None, ""):
        return None
    try:
        value = float(spec[key])
    except (TypeError, ValueError):
        raise DataError(f"{key} must be a number, got {spec[key]!r}") from None
    if not math.isfinite(value) or not low < value <= high:
        raise DataError(f"{key} must lie in ({low:g}, {high:g}], got {spec[key]!r}")
    return value


def run_media(
    spec: Mapping[str, Any],
    base: Path,
    sampling_rate: int,
    question: str,
    max_seconds: float = 600.0,
    max_side: int = 4096,
) -> RunMedia:
    """Decode everything a manifest run names (paths relative to ``base``), refusing durations
    over ``max_seconds``, frame sides over ``max_side`` and non-finite audio."""
    unknown = sorted(set(spec) - RUN_FIELDS)
    if unknown:
        raise DataError(f"unknown run field(s) {unknown}; expected some of {sorted(RUN_FIELDS)}")
    fps = _bounded(spec, "fps", 0, 120) or DEFAULT_FPS
    waveform = frames = features = None
    seconds = _bounded(spec, "seconds", 0, max_seconds)
    if "video" in spec:
        max_frames = int(_bounded(spec, "max_frames", 0, 1024) or DEFAULT_MAX_FRAMES)
        if seconds is not None:
            max_frames = min(max_frames, max(1, math.ceil(seconds * fps - 1e-9)))
        frames = sample_frames(base / spec["video"], fps, max_frames, max_side)
    elif "frames" in spec:
        listed = spec["frames"] if isinstance(spec["frames"], list) else [spec["frames"]]
        frames = media.load_frames([base / frame for frame in listed], max_side)
    if "audio" in spec:
        waveform = load_sound(base / spec["audio"], sampling_rate)
    elif "video" in spec:
        waveform = decode_audio(base / spec["video"], sampling_rate)
    if "image_features" in spec:
        features = load_features(base / spec["image_features"])
    if waveform is not None:
        if not np.isfinite(waveform).all():
            raise DataError("the audio holds NaN or infinite samples")
        if seconds is None and len(waveform) > max_seconds * sampling_rate:
            raise DataError(
                f"the audio lasts {len(waveform) / sampling_rate:.1f} s, over the dataset's "
                f"max_seconds ({max_seconds:g}); cut it with the run's 'seconds'"
            )
    if seconds is not None and waveform is not None:
        length = int(round(seconds * sampling_rate))
        waveform = np.pad(waveform[:length], (0, max(0, length - len(waveform))))
    if spec.get("frame_size") and frames is not None:
        frames = resize_frames(frames, spec["frame_size"], max_side)
    audio_in_video = spec.get("audio_in_video", False)
    if not isinstance(audio_in_video, bool):
        audio_in_video = str(audio_in_video).strip().lower() in {"1", "true", "yes"}
    return RunMedia(
        waveform=waveform,
        frames=frames,
        fps=fps,
        image_features=features,
        audio_in_video=audio_in_video,
        question=question,
    )
