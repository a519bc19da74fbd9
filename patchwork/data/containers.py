"""Decode real media for a manifest run: video containers, soundtracks, precomputed features.

A run of a manifest row may name (paths relative to the manifest):

- ``video``: a container (mp4, mkv, webm, …) decoded with PyAV; its frames are chosen by the
  study's input convention (:mod:`patchwork.data.conventions`: by default the model card's,
  ``fps`` 2 per second, an even count spread from the first frame to the last, at most
  ``max_frames``, 768 unless given); its soundtrack is the run's audio unless ``audio`` is given;
- ``audio``: a sound file (anything soundfile reads; else the first audio stream through PyAV),
  e.g. the swapped soundtrack of a counterfactual clip; 16 kHz mono as ``librosa.load`` makes it;
- ``frames``: still images instead of a video;
- ``image_features``: precomputed vision-tower outputs, ``.npy`` or ``.safetensors``
  (for families whose vision tower cannot run here, e.g. Gemma 3n);
- ``audio_in_video``: true when the soundtrack is interleaved with the frames (Qwen2.5-Omni);
- ``seconds``: the clip's length: audio cut or zero-padded to it, frames sampled within it;
  ``frame_size: [height, width]``: frames resized to it. Counterfactual pairs built from clips
  of different lengths or resolutions need both, since the runs of a sample must share one
  token layout.

Sizes are bounded from headers before anything is decoded (audio frames and rate, a video
stream's frame size and packet count, image sizes, ``.npy`` shapes, safetensors headers), so a
small file that claims a huge payload is refused at once. Every failure is a
:class:`~patchwork.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchwork.data import conventions, features, media
from patchwork.data.conventions import VideoSampling
from patchwork.data.sample import RunMedia
from patchwork.errors import DataError

#: Frames per second assumed for still frames unless a run gives ``fps``.
DEFAULT_FPS = 2.0
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
#: Past the header's duration, decoding stops this much later (headers may under-report).
_DECODE_SLACK_SECONDS = 1.0


def _too_long(path: Path, seconds: float, max_seconds: float) -> DataError:
    return DataError(
        f"{path}: the audio lasts {seconds:.1f} s by its header, over the dataset's max_seconds "
        f"({max_seconds:g}); cut it with the run's 'seconds'"
    )


def decode_audio(
    path: str | Path,
    sampling_rate: int,
    max_seconds: float | None = None,
    seconds: float | None = None,
) -> np.ndarray:
    """The first audio stream of ``path`` as mono float32 (n_samples,) at ``sampling_rate``, read
    as the model card reads a video's soundtrack: ffmpeg's 16-bit PCM at the stream's own rate,
    channels averaged, resampled with soxr. A stream whose header says it lasts over
    ``max_seconds`` is refused before decoding; ``seconds`` stops decoding once it is read."""
    import av

    path = media.media_file(Path(path), "audio")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(f"{path} has no audio stream")
            stream = container.streams.audio[0]
            codec = stream.codec_context
            if codec is None:
                raise DataError(f"{path}: no decoder for its audio stream")
            rate = int(codec.sample_rate or 0)
            media.check_stream(path, rate, int(codec.channels or 1))
            claimed = _stream_seconds(stream, container)
            if max_seconds is not None and seconds is None and claimed > max_seconds:
                raise _too_long(path, claimed, max_seconds)
            limit = seconds if seconds is not None else max_seconds
            budget = None if limit is None else int((limit + _DECODE_SLACK_SECONDS) * rate)
            kept = 0
            for frame in container.decode(stream):
                block = frame.to_ndarray()  # (channels, n) planar or (1, n·channels) packed
                channels = len(frame.layout.channels)
                media.check_stream(path, rate, channels)
                if frame.format.is_planar:
                    block = block.T
                else:
                    block = block.reshape(-1, channels)
                chunks.append(_as_float(block))
                kept += len(block)
                if budget is not None and kept > budget:
                    if seconds is None:
                        raise _too_long(path, kept / rate, float(max_seconds or 0))
                    break
    except av.FFmpegError as error:
        raise DataError(f"cannot decode audio of {path}: {error}") from None
    if not chunks or sum(len(chunk) for chunk in chunks) == 0:
        raise DataError(f"{path} holds no audio samples")
    samples = conventions.as_pcm16(np.concatenate(chunks))
    return conventions.resample(conventions.to_mono(samples), rate, sampling_rate)


def _as_float(block: np.ndarray) -> np.ndarray:
    """Decoded samples (n, channels) of any sample format as float32 in [-1, 1]."""
    if block.dtype.kind == "f":
        return block.astype(np.float32)
    if block.dtype == np.uint8:
        return (block.astype(np.float32) - 128.0) / 128.0
    scale = float(2 ** (8 * block.dtype.itemsize - 1))
    return (block.astype(np.float64) / scale).astype(np.float32)


def _stream_seconds(stream: Any, container: Any) -> float:
    """A stream's duration by its header (0 when it names none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def load_sound(
    path: str | Path,
    sampling_rate: int,
    max_seconds: float | None = None,
    seconds: float | None = None,
) -> np.ndarray:
    """A sound file or a container's soundtrack, mono float32 at ``sampling_rate``, read as
    ``librosa.load(sr=...)`` reads it: through soundfile when soundfile knows the format, else
    through ffmpeg (PyAV) as 16-bit PCM."""
    path = media.media_file(Path(path), "audio")
    if media.soundfile_reads(path):
        return media.load_audio(path, sampling_rate, max_seconds=max_seconds, seconds=seconds)
    return decode_audio(path, sampling_rate, max_seconds=max_seconds, seconds=seconds)


@dataclass(frozen=True)
class VideoInfo:
    """A video stream as the references count it: frames (packets of the stream), the average
    rate over their presentation span, and the frame size from the header."""

    frames: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class SampledVideo:
    """Frames taken from a video: uint8 RGB (n, H, W, 3), their indices and times (s), and the
    rate the processor is told (``video_second_per_grid`` = temporal patch / ``fps``)."""

    frames: np.ndarray
    indices: tuple[int, ...]
    times: tuple[float, ...]
    fps: float


def scan_video(path: str | Path, max_side: int = 4096) -> VideoInfo:
    """Count the first video stream's frames without decoding them (as torchcodec's exact scan
    does: packets, and the span from the first presentation time to the last one's end);
    frames with a side over ``max_side`` are refused from the header, a file cut short (fewer
    packets than its header counts, or one the file ends inside of) from its packets."""
    import av

    path = media.media_file(Path(path), "video")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise DataError(f"{path}: no decoder for its video stream")
            width, height = int(stream.width or 0), int(stream.height or 0)
            if max(width, height) > max_side:
                raise DataError(
                    f"{path}: frames of {width}x{height} pixels, over max_frame_side ({max_side})"
                )
            if min(width, height) < 1:
                raise DataError(f"{path}: the video stream names no frame size")
            count, begin, end = 0, None, None
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                if packet.is_corrupt:  # ffmpeg flags a packet the file ends inside of
                    raise DataError(f"{path}: damaged or truncated (frame {count} is cut off)")
                count += 1
                stop = packet.pts + (packet.duration or 0)
                begin = packet.pts if begin is None else min(begin, packet.pts)
                end = stop if end is None else max(end, stop)
            base = stream.time_base or Fraction(1, 1)
            known = begin is not None and end is not None
            span = float((end - begin) * base) if known else 0.0  # type: ignore[operator]
            rate = stream.average_rate
            claimed = int(stream.frames or 0)  # 0 where the container does not say
    except av.FFmpegError as error:
        raise DataError(f"cannot decode video {path}: {error}") from None
    if count == 0:
        raise DataError(f"{path} holds no video frames")
    if count < claimed:
        raise DataError(
            f"{path}: damaged or truncated (its header counts {claimed} frames, the file holds "
            f"{count})"
        )
    fps = count / span if span > 0 else float(rate or 0)
    if not math.isfinite(fps) or fps <= 0:
        raise DataError(f"{path}: the video stream's frame rate cannot be told")
    return VideoInfo(count, fps, width, height)


def sample_frames(
    path: str | Path,
    sampling: VideoSampling | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    seconds: float | None = None,
    max_side: int = 4096,
    max_seconds: float | None = None,
) -> SampledVideo:
    """The frames of ``path``'s first video stream that ``sampling``'s route takes (model card by
    default; ``fps``/``max_frames`` override its rate and cap; ``seconds`` keeps the frames
    before that time, as the model card's ``video_end``; a clip over ``max_seconds`` without it
    is refused from the packet count, before any frame is decoded)."""
    import av

    sampling = sampling or VideoSampling()
    info = scan_video(path, max_side)
    total = info.frames
    if seconds is None and max_seconds is not None and total / info.fps > max_seconds:
        raise DataError(
            f"{path}: the video lasts {total / info.fps:.1f} s, over the dataset's max_seconds "
            f"({max_seconds:g}); cut it with the run's 'seconds'"
        )
    if seconds is not None:
        # the model card's video_end: frames up to ⌊seconds · fps⌋, the last one included
        end = math.floor(min(seconds, info.frames / info.fps) * info.fps)
        total = min(end, info.frames - 1) + 1
    count = sampling.frame_count(total, info.fps, fps, max_frames)
    wanted = sampling.frame_indices(total, count)
    keep = {index: [] for index in wanted}  # type: dict[int, list[int]]
    for position, index in enumerate(wanted):
        keep[index].append(position)
    frames: list[np.ndarray | None] = [None] * count
    last = max(wanted)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                for position in keep.get(index, ()):
                    frames[position] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
    except av.FFmpegError as error:
        raise DataError(f"cannot decode video {path}: {error}") from None
    if any(frame is None for frame in frames):
        raise DataError(f"{path}: its header counts {info.frames} frames but fewer decode")
    times = tuple(index / info.fps for index in wanted)
    return SampledVideo(
        np.stack(frames),  # type: ignore[arg-type]
        tuple(wanted),
        times,
        sampling.grid_fps(count, total, info.fps, fps),
    )


def load_features(path: str | Path) -> torch.Tensor:
    """Precomputed features from ``.npy`` or ``.safetensors`` (one tensor) as float32; their
    headers are read and checked against the file's size before anything is loaded."""
    return features.load_features(media.media_file(Path(path), "image_features"))


def resize_frames(frames: np.ndarray, size: Any, max_side: int = 4096) -> np.ndarray:
    """Frames (n, H, W, 3) resized to ``size`` = [height, width], each in [1, ``max_side``]
    (bicubic with antialiasing, as the references resize video frames)."""
    if isinstance(size, str):
        size = size.replace("x", ",").split(",")
    try:
        height, width = (int(value) for value in size)
    except (TypeError, ValueError):
        raise DataError(f"frame_size must be [height, width], got {size!r}") from None
    if not (1 <= height <= max_side and 1 <= width <= max_side):
        raise DataError(f"frame_size sides must lie in [1, {max_side}], got {size!r}")
    return media.resize_frames(frames, height, width)


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
    sampling: VideoSampling | None = None,
) -> RunMedia:
    """Decode everything a manifest run names (paths relative to ``base``), refusing durations
    over ``max_seconds`` (from headers, before decoding), frame sides over ``max_side`` and
    non-finite audio. ``sampling`` is the family's video convention (default: Qwen2.5-Omni's
    model card)."""
    unknown = sorted(set(spec) - RUN_FIELDS)
    if unknown:
        raise DataError(f"unknown run field(s) {unknown}; expected some of {sorted(RUN_FIELDS)}")
    sampling = sampling or VideoSampling()
    fps = _bounded(spec, "fps", 0, 120)
    waveform = frames = image_features = None
    times: tuple[float, ...] = ()
    seconds = _bounded(spec, "seconds", 0, max_seconds)
    grid_fps = fps or DEFAULT_FPS
    if "video" in spec:
        max_frames = _bounded(spec, "max_frames", 0, 1024)
        video = sample_frames(
            base / spec["video"],
            sampling,
            fps,
            None if max_frames is None else int(max_frames),
            seconds,
            max_side,
            max_seconds,
        )
        frames, times, grid_fps = video.frames, video.times, video.fps
    elif "frames" in spec:
        listed = spec["frames"] if isinstance(spec["frames"], list) else [spec["frames"]]
        frames = media.load_frames([base / frame for frame in listed], max_side)
        times = tuple(index / grid_fps for index in range(len(frames)))
    sound = spec.get("audio") or (spec.get("video") if "audio" not in spec else None)
    if sound is not None:
        waveform = load_sound(base / sound, sampling_rate, max_seconds, seconds)
        if not np.isfinite(waveform).all():
            raise DataError(f"{base / sound}: the audio holds NaN or infinite samples")
        if seconds is None and len(waveform) > max_seconds * sampling_rate:
            raise DataError(
                f"{base / sound}: the audio lasts {len(waveform) / sampling_rate:.1f} s, over "
                f"the dataset's max_seconds ({max_seconds:g}); cut it with the run's 'seconds'"
            )
    if "image_features" in spec:
        image_features = load_features(base / spec["image_features"])
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
        fps=grid_fps,
        image_features=image_features,
        audio_in_video=audio_in_video,
        question=question,
        sampling=sampling,
        frame_times=times,
    )
