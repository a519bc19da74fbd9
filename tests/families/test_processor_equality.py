"""patchwork's model inputs equal those of the families' own transformers processors.

The references are transformers' ``WhisperFeatureExtractor`` called as ``Qwen2_5OmniProcessor``
and ``Qwen3OmniMoeProcessor`` call it, and ``Qwen2VLImageProcessorPil`` (the image processor that
builds here without torchvision), on the same media; the placeholder counts are the processors'
own formulas.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from patchwork.data import media
from patchwork.data.sample import RunMedia
from patchwork.errors import DataError
from patchwork.loading.model import load_model
from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter, fitted_size, vision_patches
from patchwork.models.qwen3_omni import Qwen3OmniAdapter, qwen3_audio_token_count
from patchwork.study.specs import ModelSpec

#: Clip lengths in samples at 16 kHz: shorter than a hop, not a multiple of it, 1 s, 10 s (the
#: reference study's clips), just under and exactly the 30 s of the default extractor.
CLIP_SAMPLES = (201, 1_600, 16_123, 160_000, 479_999, 480_000)


def _clip(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    times = np.arange(samples) / media.SAMPLING_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * times) * np.exp(-times)
    return (tone + 0.05 * rng.standard_normal(samples)).astype(np.float32)


def _extractor(n_mels: int, chunk_length: int = 30):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels, chunk_length=chunk_length)


def _kept_frames(batch) -> tuple[np.ndarray, int]:
    """The frames the thinker keeps: those its feature_attention_mask marks."""
    mask = np.asarray(batch["attention_mask"][0]).astype(bool)
    return np.asarray(batch["input_features"][0])[:, mask], int(mask.sum())


@pytest.mark.parametrize("samples", CLIP_SAMPLES)
def test_audio_features_equal_the_qwen2_5_omni_processors(samples: int) -> None:
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
        _get_feat_extract_output_lengths,
    )

    clip = _clip(samples)
    # Qwen2_5OmniProcessor._process_audio: padding="max_length", the extractor's n_samples
    reference = _extractor(128)(
        [clip], sampling_rate=16_000, padding="max_length", return_attention_mask=True
    )
    expected, frames = _kept_frames(reference)
    ours = media.clip_features(clip, n_mels=128, max_samples=480_000)
    assert ours["input_features"].shape == (1, 128, frames)
    np.testing.assert_allclose(ours["input_features"][0].numpy(), expected, rtol=0, atol=1e-6)
    assert ours["feature_attention_mask"].sum() == frames
    tokens = int(_get_feat_extract_output_lengths(torch.tensor(frames)))
    assert Qwen25OmniAdapter.audio_token_count(None, frames) == tokens  # type: ignore[arg-type]


@pytest.mark.parametrize("samples", (201, 16_123, 160_000, 600_000))
def test_audio_features_equal_the_qwen3_omni_processors(samples: int) -> None:
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
        _get_feat_extract_output_lengths,
    )

    clip = _clip(samples, seed=1)
    # Qwen3OmniMoeProcessor's audio kwargs: padding=True, truncation=False (no 30 s limit)
    reference = _extractor(128)(
        [clip], sampling_rate=16_000, padding=True, truncation=False, return_attention_mask=True
    )
    expected, frames = _kept_frames(reference)
    ours = media.clip_features(clip, n_mels=128, max_samples=None)
    np.testing.assert_allclose(ours["input_features"][0].numpy(), expected, rtol=0, atol=1e-6)
    tokens = int(_get_feat_extract_output_lengths(torch.tensor(frames), 50))
    assert qwen3_audio_token_count(frames) == tokens


def test_the_checkpoints_feature_extractor_settings_are_used(tmp_path: Path, checkpoint) -> None:
    """A checkpoint whose preprocessor config names 32 mel bins and a 5 s limit: the adapter's
    inputs are that extractor's, called as the processor calls it; a longer clip is refused."""
    extractor = _extractor(32, chunk_length=5)
    extractor.save_pretrained(tmp_path)
    loaded = load_model(
        ModelSpec(family="qwen2_5_omni", checkpoint=str(checkpoint("qwen2_5_omni")))
    )
    adapter = Qwen25OmniAdapter(loaded.model, tmp_path)
    frames = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    clip = _clip(30_000)
    inputs = adapter.build_inputs([9, 10], RunMedia(waveform=clip, frames=frames, fps=2.0))
    expected, count = _kept_frames(
        extractor([clip], sampling_rate=16_000, padding="max_length", return_attention_mask=True)
    )
    np.testing.assert_allclose(inputs["input_features"][0].numpy(), expected, rtol=0, atol=1e-6)
    audio_id = loaded.model.config.audio_token_index
    assert int((inputs["input_ids"] == audio_id).sum()) == adapter.audio_token_count(count)
    with pytest.raises(DataError, match="at most 5 s"):
        adapter.build_inputs([9], RunMedia(waveform=_clip(80_001), frames=frames, fps=2.0))


#: (height, width) of pictures: square, not patch multiples, portrait, 4:3, 720p, 1080p (over the
#: pixel budget), a thin strip, and one under the minimum.
PICTURE_SIZES = ((224, 224), (97, 131), (640, 360), (480, 640), (720, 1280), (1080, 1920),
                 (60, 900), (20, 30))  # fmt: skip


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.integers(0, 64, size=(height, width, 3))
    return np.clip(gradient + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "family",
    [
        # Qwen2.5-Omni: Qwen2-VL patches of 14, CLIP statistics, the released pixel budget
        dict(patch=14, mean=media.CLIP_MEAN, std=media.CLIP_STD, low=56 * 56, high=768 * 28 * 28),
        # Qwen3-Omni: Qwen3-VL patches of 16, mean = std = 0.5
        dict(patch=16, mean=(0.5,) * 3, std=(0.5,) * 3, low=128 * 32 * 32, high=768 * 32 * 32),
    ],
    ids=["qwen2_5_omni", "qwen3_omni"],
)
@pytest.mark.parametrize("size", PICTURE_SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_picture_patches_equal_the_qwen_vl_image_processors(family, size) -> None:
    from transformers import Qwen2VLImageProcessorPil

    picture = _picture(*size, seed=size[0])
    processor = Qwen2VLImageProcessorPil(
        patch_size=family["patch"],
        merge_size=2,
        temporal_patch_size=2,
        image_mean=list(family["mean"]),
        image_std=list(family["std"]),
        size={"shortest_edge": family["low"], "longest_edge": family["high"]},
    )
    reference = processor(images=[picture], return_tensors="np")
    vision = SimpleNamespace(
        patch_size=family["patch"], spatial_merge_size=2, temporal_patch_size=2
    )
    ours = vision_patches(
        picture[None],
        vision,
        mean=family["mean"],
        std=family["std"],
        max_pixels=family["high"],
        min_pixels=family["low"],
    )
    assert ours["video_grid_thw"].tolist() == reference["image_grid_thw"].tolist()
    np.testing.assert_allclose(
        ours["pixel_values_videos"].numpy(), reference["pixel_values"], rtol=0, atol=1e-6
    )


def test_fitted_sizes_follow_smart_resize() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(8, 4000, size=2))
        if max(height, width) > 200 * min(height, width):
            continue
        low, high = sorted(int(v) for v in rng.integers(28 * 28, 2_000_000, size=2))
        assert fitted_size(height, width, 28, high, low) == smart_resize(
            height, width, factor=28, min_pixels=low, max_pixels=high
        )
    with pytest.raises(DataError, match="aspect ratio"):
        fitted_size(10, 2_500, 28, None, 0)


def test_qwen3_adapter_keeps_long_clips_whole(checkpoint) -> None:
    loaded = load_model(ModelSpec(family="qwen3_omni", checkpoint=str(checkpoint("qwen3_omni"))))
    assert Qwen3OmniAdapter(loaded.model)._audio_settings["max_samples"] is None
