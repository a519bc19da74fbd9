"""patchwork's inputs equal the official routes' on generated media (reference environment).

Model card: ``qwen_omni_utils.process_mm_info`` (0.0.9) then the processor, called as the model
cards call them. transformers: the processor alone, loading the video itself with
``do_sample_frames=True, fps=2``. Both from a checkpoint folder as published (config, processor
config, chat template, a tokenizer with the real special-token ids).

Required: input_ids, grids, seconds per grid, rope positions and feature masks equal; audio
features within 1e-4; pixels within :data:`PIXEL_TOLERANCE` (torch's antialiased bicubic is
torchvision's: the measured difference is float rounding). An AAC soundtrack is decoded by
PyAV's ffmpeg here and by the system's ffmpeg there; the two builds differ in the last bit of
some 16-bit samples, so for those the waveforms are compared (within :data:`AAC_TOLERANCE`) and
the features are compared from the same waveform.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork.data import containers, media

from . import official

#: Largest difference of normalized pixels measured between the routes (float rounding).
PIXEL_TOLERANCE = 1e-5
FEATURE_TOLERANCE = 1e-4
#: PyAV's ffmpeg 8.1 vs Debian's 5.1 AAC decoders: one 16-bit step on ~1 in 7,500 samples,
#: spread by the resampler.
AAC_TOLERANCE = 2 / 32768


@dataclass(frozen=True)
class Clip:
    width: int
    height: int
    fps: str
    seconds: float
    sound: tuple[int, int] | None = None  # AAC track (rate, channels)
    interleaved: bool = False
    separate: tuple[int, int, str] | None = None  # sound file (rate, channels, suffix)

    @property
    def name(self) -> str:
        rate = self.fps.replace("/", "_")
        track = f"-aac{self.sound[0]}x{self.sound[1]}" if self.sound else "-silent"
        extra = f"-{self.separate[2]}{self.separate[0]}x{self.separate[1]}" if self.separate else ""
        mode = "-interleaved" if self.interleaved else ""
        return f"{self.width}x{self.height}-{rate}fps-{self.seconds:g}s{track}{extra}{mode}"


#: Frame areas 160x120 … 1920x1080 and portrait, 10-60 fps with 29.97, 1-40 s, odd and even
#: frame counts, with and without soundtracks, sound files at 8-48 kHz, mono and stereo.
CLIPS = (
    Clip(160, 120, "10", 1.0, separate=(8000, 1, "wav")),  # 10 frames: 4 taken, upscaled
    Clip(320, 240, "10", 2.0, sound=(44100, 2), interleaved=True),
    Clip(640, 360, "25", 3.0, sound=(48000, 2), interleaved=True),  # 75 frames (odd)
    Clip(480, 270, "30000/1001", 4.0, sound=(44100, 1), interleaved=True),
    Clip(1280, 720, "30", 2.5, separate=(44100, 2, "wav")),  # over the per-frame budget
    Clip(1920, 1080, "60", 1.5, separate=(48000, 1, "flac")),  # 90 frames, 1080p
    Clip(360, 640, "24", 5.0, sound=(22050, 2)),  # portrait, track not interleaved
    Clip(320, 240, "15", 20.0, sound=(16000, 1), interleaved=True),  # long: 40 frames
    Clip(240, 160, "30000/1001", 33.0, separate=(22050, 2, "flac")),  # 989 frames (odd)
    Clip(160, 120, "12", 40.0, separate=(16000, 2, "wav")),  # 80 frames
)
QUESTION = "what do you hear"
#: family → route → what was compared and the largest differences (written to the file that
#: PATCHWORK_REFERENCE_REPORT names, for the CI log and the docs' table).
MEASURED: dict[str, dict[str, dict]] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    target = os.environ.get("PATCHWORK_REFERENCE_REPORT")
    if target:
        Path(target).write_text(json.dumps(MEASURED, indent=1, sort_keys=True))


def _measure(family: str, route: str, clip: Clip, **differences: float) -> None:
    entry = MEASURED.setdefault(family, {}).setdefault(route, {"cases": []})
    entry["cases"].append(clip.name)
    for name, value in differences.items():
        entry[name] = max(entry.get(name, 0.0), float(value))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {
        "qwen2_5_omni": official.qwen2_5_omni_folder(root / "qwen2_5_omni"),
        "qwen3_omni": official.qwen3_omni_folder(root / "qwen3_omni"),
    }


@pytest.fixture(scope="module")
def routes(folders: dict[str, Path]):
    """family → (adapter on the meta device, the official processor from the folder)."""
    from transformers import AutoConfig, AutoProcessor

    from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter
    from patchwork.models.qwen3_omni import Qwen3OmniAdapter

    built = {}
    for family, adapter_class in (
        ("qwen2_5_omni", Qwen25OmniAdapter),
        ("qwen3_omni", Qwen3OmniAdapter),
    ):
        folder = folders[family]
        model = adapter_class.empty(folder, AutoConfig.from_pretrained(folder))
        processor = AutoProcessor.from_pretrained(folder)
        built[family] = (adapter_class(model, folder), processor)
    return built


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for index, clip in enumerate(CLIPS):
        official.write_mp4(
            folder / f"{clip.name}.mp4", clip.width, clip.height, clip.fps, clip.seconds, clip.sound
        )
        if clip.separate is not None:
            rate, channels, suffix = clip.separate
            official.write_sound(
                folder / f"{clip.name}.{suffix}", rate, channels, clip.seconds, seed=index
            )
    return folder


def _placeholders(processor, clip: Clip) -> str:
    tokenizer = processor.tokenizer
    audio = f"{tokenizer.audio_bos_token}{tokenizer.audio_token}{tokenizer.audio_eos_token}"
    video = f"{tokenizer.vision_bos_token}{tokenizer.video_token}{tokenizer.vision_eos_token}"
    has_audio = clip.separate is not None or (clip.sound is not None and not clip.interleaved)
    return (audio if has_audio else "") + video + QUESTION


def _official(processor, clip: Clip, folder: Path, convention: str):
    """The official route's inputs and the waveform it read."""
    import librosa
    from qwen_omni_utils import process_mm_info

    video = str(folder / f"{clip.name}.mp4")
    content = [{"type": "video", "video": video}]
    if clip.separate is not None:
        content.append({"type": "audio", "audio": str(folder / f"{clip.name}.{clip.separate[2]}")})
    elif clip.sound is not None and not clip.interleaved:
        content.append({"type": "audio", "audio": video})
    conversation = [{"role": "user", "content": content}]
    kwargs = {}
    if clip.interleaved:
        kwargs = {"use_audio_in_video": True, "audio_from_video_indices": [0]}
    if convention == "model_card":
        audios, _, videos = process_mm_info(conversation, use_audio_in_video=clip.interleaved)
    else:
        audios = [librosa.load(item["audio"], sr=16_000)[0] for item in content[1:]] or None
        if clip.interleaved:
            from qwen_omni_utils.v2_5.audio_process import process_audio_info

            audios = process_audio_info(conversation, use_audio_in_video=True)
        videos = [video]
        kwargs.update(do_sample_frames=True, fps=2.0)
    text = _placeholders(processor, clip)
    inputs = processor(text=text, audio=audios, videos=videos, return_tensors="pt", **kwargs)
    return inputs, (audios[0] if audios else None)


def _ours(adapter, processor, clip: Clip, folder: Path, convention: str) -> dict:
    spec: dict = {"video": f"{clip.name}.mp4", "audio_in_video": clip.interleaved}
    if clip.separate is not None:
        spec["audio"] = f"{clip.name}.{clip.separate[2]}"
    elif clip.sound is None:
        spec["audio"] = None
    spec = {key: value for key, value in spec.items() if value is not None}
    run = containers.run_media(
        spec, folder, 16_000, QUESTION, sampling=adapter.video_sampling(convention)
    )
    ids = processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    return {"inputs": adapter.build_inputs(ids, run), "waveform": run.waveform}


def _positions(adapter, inputs: dict, interleaved: bool) -> torch.Tensor:
    root = adapter.root
    rope = getattr(root, "get_rope_index", None) or root.model.get_rope_index
    positions, _ = rope(
        inputs["input_ids"],
        None,
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        interleaved,
        inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None,
        inputs["video_second_per_grid"],
    )
    return positions


@pytest.mark.parametrize("convention", ["model_card", "transformers"])
@pytest.mark.parametrize("clip", CLIPS, ids=lambda clip: clip.name)
@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_inputs_equal_the_official_route(family, clip, convention, routes, media_folder) -> None:
    adapter, processor = routes[family]
    theirs, their_wave = _official(processor, clip, media_folder, convention)
    ours = _ours(adapter, processor, clip, media_folder, convention)
    mine = ours["inputs"]
    assert torch.equal(mine["input_ids"], theirs["input_ids"])
    assert mine["video_grid_thw"].tolist() == theirs["video_grid_thw"].tolist()
    torch.testing.assert_close(
        mine["video_second_per_grid"].float(),
        torch.as_tensor(theirs["video_second_per_grid"]).float(),
        rtol=0,
        atol=1e-6,
    )
    pixels = (mine["pixel_values_videos"] - theirs["pixel_values_videos"]).abs().max().item()
    _measure(family, convention, clip, pixels=pixels)
    assert pixels <= PIXEL_TOLERANCE, f"pixels differ by {pixels}"
    if "input_features" in theirs:
        kept = theirs["feature_attention_mask"][0].bool()
        assert int(mine["feature_attention_mask"].sum()) == int(kept.sum())
        reference = theirs["input_features"][0][:, kept]
        aac = clip.separate is None and clip.sound is not None
        if aac:
            assert len(ours["waveform"]) == len(their_wave)
            wave = float(np.abs(ours["waveform"] - their_wave).max())
            # the same waveform gives the same features
            settings = adapter._audio_settings
            same = media.clip_features(their_wave, **settings)["input_features"][0]
            same_wave = (same - reference).abs().max().item()
            decoded = (mine["input_features"][0] - reference).abs().max().item()
            _measure(
                family,
                convention,
                clip,
                aac_waveform=wave,
                aac_features_same_waveform=same_wave,
                aac_features_own_decoder=decoded,
            )
            assert wave <= AAC_TOLERANCE and same_wave <= FEATURE_TOLERANCE
        else:
            difference = (mine["input_features"][0] - reference).abs().max().item()
            _measure(family, convention, clip, sound_file_features=difference)
            assert difference <= FEATURE_TOLERANCE, f"features differ by {difference}"
    assert torch.equal(
        _positions(adapter, mine, clip.interleaved), _positions(adapter, theirs, clip.interleaved)
    )


#: Clips for the processor builder (``inputs: processor``): both builders give the same inputs.
PROCESSOR_CLIPS = (CLIPS[2], CLIPS[4], CLIPS[6])


@pytest.mark.parametrize("convention", ["model_card", "transformers"])
@pytest.mark.parametrize("clip", PROCESSOR_CLIPS, ids=lambda clip: clip.name)
@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_both_builders_agree(family, clip, convention, routes, media_folder) -> None:
    adapter, processor = routes[family]
    spec: dict = {"video": f"{clip.name}.mp4", "audio_in_video": clip.interleaved}
    if clip.separate is not None:
        spec["audio"] = f"{clip.name}.{clip.separate[2]}"
    ids = processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    official_inputs = adapter.processor_inputs(spec, media_folder, ids, convention)
    adapter.check_inputs(official_inputs, clip.name)
    ours = _ours(adapter, processor, clip, media_folder, convention)["inputs"]
    assert torch.equal(official_inputs["input_ids"], ours["input_ids"])
    assert torch.equal(official_inputs["video_grid_thw"], ours["video_grid_thw"])
    assert torch.equal(official_inputs["video_second_per_grid"], ours["video_second_per_grid"])
    pixels = (official_inputs["pixel_values_videos"] - ours["pixel_values_videos"]).abs().max()
    assert pixels.item() <= PIXEL_TOLERANCE
    kept = official_inputs["feature_attention_mask"][0].bool()
    assert int(kept.sum()) == ours["input_features"].shape[-1]
    _measure(
        family,
        f"processor-builder-{convention}",
        clip,
        pixels=pixels.item(),
        features=(official_inputs["input_features"][0][:, kept] - ours["input_features"][0])
        .abs()
        .max()
        .item(),
    )
