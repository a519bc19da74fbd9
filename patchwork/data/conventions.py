"""Input conventions: which frames of a video, how many pixels per frame and which audio samples
a family's official route gives the model.

Two routes exist for the Qwen-Omni families, and a study picks one (``inputs.convention``):

- ``model_card`` (default): what the model cards do, ``qwen_omni_utils.process_mm_info`` (0.0.9)
  and then the processor. Frames: n = floor-to-even(clamp(total / source_fps · fps, 4,
  min(768, total))) at ``linspace(0, total − 1, n).round()``; frames fitted to multiples of 28
  with 128·28²–768·28² pixels each and at most 0.9 · 128000 · 28² · 2 / n (the total cap);
  the processor is called without ``fps`` (as the model cards call it), so the grid's seconds
  follow the processor's default rate, not the sampled one.
- ``transformers``: the processor's own ``do_sample_frames`` with ``fps``: the same count (no
  total cap), frames at ``arange(0, total, total / n).int()``, the grid's seconds from ``fps``.

Audio is read the same way on both routes, as ``librosa.load(sr=16000)`` reads it: channels
averaged, resampled with soxr (``HQ``) and fixed to ⌈n · 16000 / rate⌉ samples; a container's
soundtrack passes through 16-bit PCM first, as ffmpeg hands it to librosa through audioread.

Index rules use torch's own ``linspace``/``arange`` so that they are the references' exactly.
What cannot be equal here is written down in docs/own-clips.md ("Conventions").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from patchwork.errors import DataError

Convention = Literal["model_card", "transformers"]
CONVENTIONS: tuple[Convention, ...] = ("model_card", "transformers")


def _floor_to(value: float, factor: int) -> int:
    return math.floor(value / factor) * factor


def _ceil_to(value: float, factor: int) -> int:
    return math.ceil(value / factor) * factor


@dataclass(frozen=True)
class VideoSampling:
    """How a family's official route samples and sizes video frames.

    ``unit`` is the multiple frame sides are fitted to (patch · merge of the route's first
    resize); ``min_tokens``/``max_tokens`` bound each frame in ``unit``² blocks (None: no lower
    bound, for vision towers other than the published one); ``total_tokens`` caps the whole
    clip on the model-card route (None: no cap).
    """

    convention: Convention = "model_card"
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    frame_factor: int = 2
    unit: int = 28
    min_tokens: int | None = 128
    max_tokens: int = 768
    total_tokens: int | None = 128_000
    #: The rate the processor is told on the model-card route: the model cards call it without
    #: ``fps``, so its default (Qwen2.5-Omni 2.0, Qwen3-Omni 1.0); None: the sampled rate.
    processor_fps: float | None = 2.0

    def frame_count(
        self, total: int, source_fps: float, fps: float | None = None, max_frames: int | None = None
    ) -> int:
        """Frames taken from a clip of ``total`` frames at ``source_fps`` (always even, at least
        ``frame_factor``; ``fps``/``max_frames`` override the route's defaults)."""
        if total < 1 or not math.isfinite(source_fps) or source_fps <= 0:
            raise DataError(f"a video of {total} frames at {source_fps:g} fps cannot be sampled")
        fps = self.fps if fps is None else fps
        factor = self.frame_factor
        lowest = _ceil_to(self.min_frames, factor)
        cap = self.max_frames if max_frames is None else max_frames
        highest = _floor_to(min(cap, total), factor)
        wanted = total / source_fps * fps
        count = _floor_to(min(max(wanted, lowest), highest, total), factor)
        if not factor <= count <= total:
            raise DataError(
                f"a video of {total} frames gives {count} frames to sample; it needs at least "
                f"{factor}"
            )
        return count

    def frame_indices(self, total: int, count: int, first: int = 0) -> list[int]:
        """Indices (in presentation order) of the ``count`` frames taken from frames ``first``
        … ``first + total − 1``."""
        import torch

        if self.convention == "model_card":
            chosen = torch.linspace(first, first + total - 1, count).round().long()
        else:
            # float32 steps may add one index past the clip (arange(0, 99, 99 / 98) ends at 99),
            # where the processor's decoder fails: dropped here
            chosen = torch.arange(0, total, total / count).int()
            chosen = chosen[chosen < total] + first
        return [int(index) for index in chosen.tolist()]

    def grid_fps(
        self, count: int, total: int, source_fps: float, fps: float | None = None
    ) -> float:
        """Frames per second the processor is told (video_second_per_grid = temporal patch / it):
        on the model-card route the processor's default (or the sampled rate), on transformers'
        the requested ``fps``."""
        if self.convention == "model_card":
            if self.processor_fps is not None:
                return self.processor_fps
            return count / max(total, 1e-6) * source_fps
        return self.fps if fps is None else fps

    def pixel_range(self, count: int) -> tuple[float, float]:
        """(min, max) pixels of each of ``count`` frames."""
        unit2 = self.unit * self.unit
        low = float(self.min_tokens * unit2) if self.min_tokens else 0.0
        high = float(self.max_tokens * unit2)
        if self.total_tokens is not None:
            total_pixels = self.total_tokens * unit2 * 0.9
            high = max(min(high, total_pixels / count * self.frame_factor), float(int(low * 1.05)))
        return low, high


def even_count(count: int, factor: int = 2) -> int:
    """Still frames are padded (last frame repeated) to a multiple of ``factor``."""
    return _ceil_to(count, factor)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n, channels) → (n,) float32, the channels' mean (librosa's ``to_mono``): a stereo wav and
    a stereo soundtrack get the same gain."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples as ffmpeg's 16-bit PCM output reads back in librosa: round to nearest
    (``lrintf(x · 2¹⁵)``), clip, divide by 2¹⁵."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * np.float32(32768.0))
    return (np.clip(scaled, -32768, 32767) / np.float32(32768.0)).astype(np.float32)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 (n,) from ``from_rate`` to ``to_rate`` Hz as ``librosa.resample(res_type=
    "soxr_hq")`` does it: soxr's HQ filter, the result padded or cut to ⌈n · to / from⌉."""
    if from_rate <= 0 or to_rate <= 0:
        raise DataError(f"sampling rates must be positive, got {from_rate} -> {to_rate}")
    waveform = np.asarray(waveform, dtype=np.float32)
    if from_rate == to_rate:
        return waveform
    import soxr

    resampled = soxr.resample(waveform, from_rate, to_rate, quality="HQ")
    length = int(np.ceil(len(waveform) * float(to_rate) / from_rate))
    if len(resampled) < length:
        resampled = np.pad(resampled, (0, length - len(resampled)))
    return np.ascontiguousarray(resampled[:length], dtype=np.float32)
