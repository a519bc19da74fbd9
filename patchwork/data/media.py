"""Read media files and turn them into the thinker's inputs: log-mel audio features, video patches.

The same code serves the testbed's synthetic world and users' own data:

- audio: :func:`load_audio` reads a sound file (soundfile) as mono float32 at 16 kHz, as
  ``librosa.load`` reads it (:mod:`patchwork.data.conventions`);
  :func:`audio_features` makes Whisper-style log-mel features with transformers'
  ``WhisperFeatureExtractor`` → ``input_features`` (n_audios, n_mels, T_mel) and
  ``feature_attention_mask`` (n_audios, T_mel), one mel frame per 10 ms (hop 160 samples).
- frames: :func:`load_frames` reads images (Pillow) as uint8 RGB (n_frames, H, W, 3);
  :func:`video_patches` cuts them into the Qwen2-VL patch layout → ``pixel_values_videos``
  (t·h·w, 3·temporal·patch·patch) and ``video_grid_thw`` (1, 3).

Missing or unreadable files raise :class:`patchwork.errors.DataError` naming the path.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from patchwork import files
from patchwork.errors import DataError

SAMPLING_RATE = 16_000
HOP_LENGTH = 160  # samples per mel frame (10 ms at 16 kHz)
#: Per-channel mean and standard deviation of CLIP, which Qwen2-VL's image processor uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def soundfile_reads(path: str | Path) -> bool:
    """Whether soundfile (libsndfile) knows the format of ``path`` (read from its header)."""
    import soundfile

    try:
        with native_stderr_silenced():
            soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
        return False
    return True


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at ``/dev/null`` while libsndfile probes a file: the libmpg123
    inside it prints its own warnings there (``a one-frame stream? Duh...``), past Python, on top
    of the one line that names the file."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def media_file(path: Path, what: str) -> Path:
    """``path`` when it is a regular file; else a :class:`DataError` saying what it is (``video
    file x not found``, ``… is a directory, not a file``, ``… is a FIFO (named pipe), not a
    regular file``), found from ``stat`` alone, before a decoder opens it and waits on a FIFO."""
    problem = files.not_regular(path)
    if problem == "not found":
        raise DataError(f"{what} file not found: {path}")
    if problem is not None:
        raise DataError(f"{what} file {path} {problem}")
    return path


def load_audio(
    path: str | Path,
    sampling_rate: int = SAMPLING_RATE,
    max_seconds: float | None = None,
    seconds: float | None = None,
) -> np.ndarray:
    """A sound file as a mono float32 waveform (n_samples,) at ``sampling_rate`` Hz, as
    ``librosa.load(path, sr=sampling_rate)`` reads it: channels averaged, another rate resampled
    with soxr (:func:`patchwork.data.conventions.resample`).

    The length is read from the header first: a file claiming more than ``max_seconds`` is
    refused before a sample is decoded; with ``seconds`` only that much is read.
    """
    import soundfile

    from patchwork.data import conventions

    path = media_file(Path(path), "audio")
    check_wav_header(path)
    try:
        with native_stderr_silenced():
            info = soundfile.info(str(path))
        file_rate, claimed = int(info.samplerate), int(info.frames)
        check_stream(path, file_rate, int(info.channels))
        limit = seconds if seconds is not None else max_seconds
        if seconds is None and max_seconds is not None and claimed > max_seconds * file_rate:
            raise DataError(
                f"{path}: the audio lasts {claimed / file_rate:.1f} s by its header, over the "
                f"dataset's max_seconds ({max_seconds:g}); cut it with the run's 'seconds'"
            )
        wanted = claimed if limit is None else min(claimed, math.ceil(limit * file_rate) + 1)
        # block by block: memory follows the samples really read, not the header's claim
        blocks = list(
            soundfile.blocks(
                str(path), blocksize=1 << 16, frames=wanted, dtype="float32", always_2d=True
            )
        )
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as error:
        raise DataError(f"cannot read audio file {path}: {error}") from None
    if not blocks:
        raise DataError(f"{path} holds no audio samples")
    mono = conventions.to_mono(np.concatenate(blocks))
    return conventions.resample(mono, file_rate, sampling_rate)


#: The WAV data size that streaming writers leave when the length is not known yet.
_UNKNOWN_WAV_SIZE = 0xFFFFFFFF


def check_wav_header(path: Path) -> None:
    """Refuse a RIFF WAVE file whose header does not describe its bytes, which libsndfile would
    otherwise repair without a word: a ``data`` chunk claiming more bytes than the file holds (a
    file cut short, or a sparse file whose header claims millions of samples: the audio would be
    silently shorter), or a PCM or float ``fmt`` whose bits per sample disagree with its bytes
    per frame (the samples would be read in another width). Other files are left to the
    decoder."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return
        position = 12
        for _ in range(64):  # a few chunks come before the samples
            handle.seek(position)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return  # no data chunk: the decoder says so
            name, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"fmt ":
                _check_wav_format(path, handle.read(min(length, 16)))
            elif name == b"data":
                held = size - position - 8
                if length > held and length != _UNKNOWN_WAV_SIZE:
                    raise DataError(
                        f"audio file {path} is truncated or damaged: its header claims "
                        f"{length:,} bytes of samples, the file holds {held:,}"
                    )
                return
            position += 8 + length + (length & 1)  # chunks are padded to an even size


def _check_wav_format(path: Path, fmt: bytes) -> None:
    if len(fmt) < 16:
        raise DataError(f"audio file {path} is damaged: its fmt chunk is cut short")
    tag, channels, _, _, block_align, bits = struct.unpack("<HHIIHH", fmt)
    if tag in (1, 3) and (bits == 0 or block_align != channels * -(-bits // 8)):  # PCM, float
        raise DataError(
            f"audio file {path} is damaged: its header gives {bits} bits a sample but "
            f"{block_align} bytes a frame of {channels} channel(s)"
        )


#: Highest sampling rate and most channels a sound file may declare.
MAX_FILE_RATE = 768_000
MAX_CHANNELS = 32


def check_stream(path: Path, rate: int, channels: int) -> None:
    """Refuse a header's sampling rate or channel count outside what real audio uses."""
    if not 0 < rate <= MAX_FILE_RATE:
        raise DataError(f"audio file {path}: its header names {rate} Hz (1 … {MAX_FILE_RATE})")
    if not 0 < channels <= MAX_CHANNELS:
        raise DataError(
            f"audio file {path}: its header names {channels} channels (1 … {MAX_CHANNELS})"
        )


def save_audio(path: str | Path, waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> Path:
    """Write a mono waveform (n_samples,), values in [-1, 1], as 16-bit PCM wav."""
    import io

    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # encoded in memory, written by Python: a full disk is an OSError with its errno (libsndfile
    # says only "System error")
    encoded = io.BytesIO()
    clipped = np.clip(waveform, -1.0, 1.0)
    soundfile.write(encoded, clipped, sampling_rate, subtype="PCM_16", format="WAV")
    path.write_bytes(encoded.getvalue())
    return path


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """A mono waveform (n_samples,) resampled with soxr as librosa does
    (:func:`patchwork.data.conventions.resample`)."""
    from patchwork.data import conventions

    return conventions.resample(waveform, from_rate, to_rate)


def resize_frames(frames: np.ndarray, height: int, width: int, mode: str = "round") -> np.ndarray:
    """Frames (n, H, W, 3) resized to ``height`` × ``width`` with torch's antialiased bicubic,
    as torchvision resizes video tensors. ``mode``: ``"round"`` computes in float, then rounds
    and clips to uint8 (torchvision's v1 ``resize``, what qwen-omni-utils calls); ``"uint8"``
    uses torch's native uint8 kernel (torchvision's v2 ``resize`` on CPU, what the transformers
    video processor calls; up to tens of levels apart from ``"round"`` on noisy frames);
    ``"float"`` keeps float32 values in [0, 255] unrounded."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    if mode != "uint8":
        tensor = tensor.to(torch.float32)
    resized = torch.nn.functional.interpolate(
        tensor, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    if mode == "round":
        resized = resized.clamp(0, 255).round().to(torch.uint8)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


@lru_cache(maxsize=8)
def _feature_extractor(n_mels: int, n_fft: int, hop_length: int = HOP_LENGTH):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=SAMPLING_RATE,
        hop_length=hop_length,
        chunk_length=30,
        n_fft=n_fft,
        padding_value=0.0,
        return_attention_mask=True,
    )


def audio_features(
    waveforms: Sequence[np.ndarray], n_mels: int = 32, mel_frames: int = 40, n_fft: int = 400
) -> dict[str, torch.Tensor]:
    """Whisper log-mel features of 16 kHz mono waveforms, padded or cut to ``mel_frames`` frames.

    Returns ``input_features`` float32 (n_audios, n_mels, mel_frames) and
    ``feature_attention_mask`` int64 (n_audios, mel_frames), 1 where a frame holds real audio.
    """
    if len(waveforms) == 0:
        raise DataError("audio_features needs at least one waveform")
    extractor = _feature_extractor(n_mels, n_fft)
    batch = extractor(
        [np.asarray(w, dtype=np.float32) for w in waveforms],
        sampling_rate=SAMPLING_RATE,
        padding="max_length",
        max_length=mel_frames * HOP_LENGTH,
        truncation=True,
        return_attention_mask=True,
        return_tensors="np",
    )
    features = torch.from_numpy(np.ascontiguousarray(batch["input_features"], dtype=np.float32))
    mask = torch.from_numpy(np.asarray(batch["attention_mask"], dtype=np.int64))
    return {"input_features": features, "feature_attention_mask": mask[:, :mel_frames]}


def clip_features(
    waveform: np.ndarray,
    n_mels: int,
    max_samples: int | None,
    n_fft: int = 400,
    hop_length: int = HOP_LENGTH,
) -> dict[str, torch.Tensor]:
    """Whisper log-mel features of one 16 kHz clip exactly as the Qwen-Omni processors make them.

    - ``max_samples`` given (Qwen2.5-Omni): the processor pads every clip with zeros to that
      many samples (the extractor's ``n_samples``), computes the features of the padded clip, and
      the model keeps the ⌈n / hop⌉ frames its ``feature_attention_mask`` marks. A frame depends
      only on the samples under its window and the frames past the clip sit at the floor of the
      log clamp, so padding just past the last window gives the same kept frames at a fraction of
      the cost. A longer clip raises :class:`DataError` (the processor would silently cut it).
    - ``max_samples=None`` (Qwen3-Omni): the clip as it is, unpadded and uncut: ⌊n / hop⌋ frames.

    Both are tested against the feature extractor called as the processors call it.
    Returns ``input_features`` float32 (1, n_mels, frames) and ``feature_attention_mask`` int64
    (1, frames), all ones.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1 or len(waveform) <= n_fft // 2:
        raise DataError(
            f"a clip must be a mono waveform of more than {n_fft // 2} samples "
            f"({n_fft // 2 / SAMPLING_RATE * 1000:g} ms), got shape {waveform.shape}"
        )
    extractor = _feature_extractor(n_mels, n_fft, hop_length)
    if max_samples is None:
        batch = extractor(
            [waveform],
            sampling_rate=SAMPLING_RATE,
            padding="longest",
            truncation=False,
            return_tensors="np",
        )
        frames = batch["input_features"].shape[-1]
    else:
        if len(waveform) > max_samples:
            raise DataError(
                f"the clip lasts {len(waveform) / SAMPLING_RATE:.1f} s; the model's feature "
                f"extractor reads at most {max_samples / SAMPLING_RATE:g} s and would silently "
                "cut the rest: shorten it"
            )
        frames = -(-len(waveform) // hop_length)
        # the last frame whose window reaches into the clip, two more, and room for its window
        padded = min(max_samples, (-(-(len(waveform) + n_fft) // hop_length) + 2) * hop_length)
        batch = extractor(
            [waveform],
            sampling_rate=SAMPLING_RATE,
            padding="max_length",
            max_length=padded,
            truncation=True,
            return_tensors="np",
        )
    features = np.ascontiguousarray(batch["input_features"][:, :, :frames], dtype=np.float32)
    return {
        "input_features": torch.from_numpy(features),
        "feature_attention_mask": torch.ones(1, frames, dtype=torch.long),
    }


def load_frames(paths: Sequence[str | Path], max_side: int = 4096) -> np.ndarray:
    """Images as uint8 RGB frames (n_frames, H, W, 3); all must have the same size, and no side
    over ``max_side`` (checked from the header, before the pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    frames = []
    for path in map(Path, paths):
        media_file(path, "image")
        try:
            with warnings.catch_warnings():  # max_side decides, not Pillow's pixel-count warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)
            with image:
                if max(image.size) > max_side:
                    raise DataError(
                        f"image file {path} is {image.size[0]}x{image.size[1]} pixels, over "
                        f"max_frame_side ({max_side})"
                    )
                frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot read image file {path}: {error}") from None
    if not frames:
        raise DataError("load_frames needs at least one path")
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise DataError(f"frames differ in size {sorted(sizes)}: {[str(p) for p in paths]}")
    return np.stack(frames)


def save_frame(path: str | Path, frame: np.ndarray) -> Path:
    """Write one uint8 RGB frame (H, W, 3) as png."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(frame, dtype=np.uint8), mode="RGB").save(path)
    return path


def video_patches(
    frames: np.ndarray,
    patch_size: int = 4,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> dict[str, torch.Tensor]:
    """Cut uint8 RGB frames (n_frames, H, W, 3) into Qwen2-VL video patches.

    Pixels are scaled to [0, 1] and normalized with ``mean``/``std`` (default CLIP's, as
    Qwen2-VL's processor); the frame count is padded
    to a multiple of ``temporal_patch_size`` by repeating the last frame. H and W must be
    multiples of ``patch_size · merge_size`` (no resizing here). Patches are ordered so that each
    ``merge_size × merge_size`` block of neighbours is contiguous, as the vision merger expects.

    Returns ``pixel_values_videos`` float32 (t·h·w, 3·temporal·patch·patch) and
    ``video_grid_thw`` int64 (1, 3) = [[t, h, w]] in patches.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"frames must be (n_frames, H, W, 3), got shape {frames.shape}")
    n_frames, height, width, _ = frames.shape
    unit = patch_size * merge_size
    if height % unit or width % unit:
        raise DataError(f"frame size {height}x{width} is not a multiple of {unit} (patch·merge)")
    scaled = frames.astype(np.float32) / 255.0
    normalized = (scaled - np.array(mean, np.float32)) / np.array(std, np.float32)
    pixels = normalized.transpose(0, 3, 1, 2)  # (n_frames, 3, H, W)
    if n_frames % temporal_patch_size:
        repeat = temporal_patch_size - n_frames % temporal_patch_size
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], repeat, axis=0)])
    grid_t = pixels.shape[0] // temporal_patch_size
    grid_h, grid_w = height // patch_size, width // patch_size
    blocks = pixels.reshape(
        grid_t,
        temporal_patch_size,
        3,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    # -> (t, block_row, block_col, row_in_block, col_in_block, channel, time, py, px)
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = blocks.reshape(grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2)
    return {
        "pixel_values_videos": torch.from_numpy(np.ascontiguousarray(flat)),
        "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.long),
    }
