"""Media files and studies for the family tests: a Matroska clip with lossless frames and a PCM
soundtrack, swapped soundtracks as wav or Ogg, precomputed Gemma 3n vision features, manifests and
study files over them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checkpoints import GEMMA_IMAGE_TOKENS, GEMMA_VISION_HIDDEN

SAMPLE_RATE = 16_000
FRAME = 32  # frame side in pixels (multiple of patch 4 × merge 2)


def tone(frequency: float, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    times = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * frequency * times)).astype(np.float32)


def frames(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, FRAME, FRAME, 3), dtype=np.uint8)


def write_clip(path: Path, pictures: np.ndarray, sound: np.ndarray, fps: int = 8) -> Path:
    """A Matroska clip: lossless FFV1 frames at ``fps`` and a 16-bit PCM mono soundtrack."""
    import av

    with av.open(str(path), mode="w") as container:
        video = container.add_stream("ffv1", rate=fps)
        video.width, video.height, video.pix_fmt = FRAME, FRAME, "bgr0"
        audio = container.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        for picture in pictures:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        pcm = (np.clip(sound, -1, 1) * 32767).astype(np.int16)[None]
        chunk = 1600
        for start in range(0, pcm.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + chunk]), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def write_ogg(path: Path, sound: np.ndarray, rate: int = 22_050) -> Path:
    """A sound at another rate in an Ogg/FLAC file (decoded and resampled through PyAV)."""
    import soundfile

    resampled = np.interp(
        np.arange(int(len(sound) * rate / SAMPLE_RATE)) * SAMPLE_RATE / rate,
        np.arange(len(sound)),
        sound,
    )
    soundfile.write(str(path), resampled, rate, format="OGG", subtype="VORBIS")
    return path


def media_folder(folder: Path) -> Path:
    """Two clips (own soundtrack), two swapped soundtracks, Gemma image features."""
    from patchwork.data.media import save_audio

    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, pitch) in enumerate((("dog", 220.0), ("cat", 660.0))):
        write_clip(folder / f"{name}.mkv", frames(index, 16), tone(pitch, 2.0))
        save_audio(folder / f"{name}_swap.wav", tone(pitch * 1.5, 2.0))
        features = np.random.default_rng(10 + index).standard_normal(
            (1, GEMMA_IMAGE_TOKENS, GEMMA_VISION_HIDDEN)
        )
        np.save(folder / f"{name}_features.npy", features.astype(np.float32))
    write_ogg(folder / "bird.ogg", tone(440.0, 2.0))
    return folder


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def study(
    folder: Path,
    family: str,
    checkpoint: Path,
    groups: str,
    extra_model: str = "",
    batch_size: int = 7,
) -> Path:
    """A study over ``samples.jsonl`` in ``folder``: clean → conflict, every layer, window 1."""
    path = folder / f"{family}.yaml"
    path.write_text(
        f"""\
name: {family}-tiny
model:
  family: {family}
  checkpoint: {checkpoint}
{extra_model}dataset:
  manifest: samples.jsonl
question: what do you hear
interventions:
  - kind: activation_patching
    from: clean
    into: conflict
    components: [residual, attention, mlp]
    layers: all
    position_groups: {groups}
    noise_floor: none
execution: {{batch_size: {batch_size}, unit_size: 2, seed: 0}}
"""
    )
    return path


GENERIC_BLOCK = """\
  generic:
    architecture: Qwen2AudioForConditionalGeneration
    layers: model.language_model.layers
    final_norm: model.language_model.norm
    unembed: lm_head
    position_groups: {audio: [1]}
    prompt: "<|audio_bos|><|AUDIO|><|audio_eos|> {question}"
    media: [audio]
"""


def family_rows(family: str, media: Path, audio_in_video: bool | None = None) -> list[dict]:
    """Two counterfactual samples per family, from the media folder (absolute paths).

    qwen2_5_omni: the soundtrack interleaved in the clip; the conflict run swaps the picture
    (the other clip's frames) under the same sound. qwen3_omni: the same with the soundtrack as a
    separate audio. gemma3n: clip soundtrack + precomputed image features. generic (Qwen2-Audio):
    the clip's soundtrack vs another sound (Ogg at 22.05 kHz, resampled). ``audio_in_video``
    overrides whether Qwen clips interleave their soundtrack (default: Qwen2.5 yes, Qwen3 no).
    """
    rows = []
    for own, other in (("dog", "cat"), ("cat", "dog")):
        clip, other_clip = str(media / f"{own}.mkv"), str(media / f"{other}.mkv")
        if family in ("qwen2_5_omni", "qwen3_omni"):
            interleave = family == "qwen2_5_omni" if audio_in_video is None else audio_in_video
            runs = {
                "clean": {"video": clip, "audio_in_video": interleave},
                "conflict": {"video": other_clip, "audio": clip, "audio_in_video": interleave},
            }
        elif family == "gemma3n":
            runs = {
                "clean": {"audio": clip, "image_features": str(media / f"{own}_features.npy")},
                "conflict": {"audio": clip, "image_features": str(media / f"{other}_features.npy")},
            }
        else:
            runs = {"clean": {"audio": clip}, "conflict": {"audio": str(media / "bird.ogg")}}
        rows.append({"id": own, "audio_answer": "bark", "visual_answer": "meow", "runs": runs})
    return rows


FAMILY_GROUPS = {
    "qwen2_5_omni": "[audio, video, text, answer]",
    "qwen3_omni": "[audio, video, text, answer]",
    "gemma3n": "[audio, image, text, answer]",
    "generic": "[audio, text, answer]",
}


def family_study(
    folder: Path,
    family: str,
    checkpoint: Path,
    media: Path,
    audio_in_video: bool | None = None,
    **options,
) -> Path:
    """Manifest and study of ``family`` in ``folder``."""
    write_manifest(folder / "samples.jsonl", family_rows(family, media, audio_in_video))
    extra = GENERIC_BLOCK if family == "generic" else ""
    return study(folder, family, checkpoint, FAMILY_GROUPS[family], extra, **options)
