"""Clips whose soundtrack is read inside the video (``use_audio_in_video``): the placeholder
layout matches the model's own time positions, groups follow it, the forward gets the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patchwork.data import containers
from patchwork.loading.model import load_model
from patchwork.models.qwen2_5_omni import chunk_bounds, fit_frames
from patchwork.models.qwen3_omni import Qwen3OmniAdapter
from patchwork.study.specs import ModelSpec

#: 2 s clip at 2 fps -> grid (2, 8, 8): 16 video tokens per grid step, 1 s apart.
#: Qwen2.5-Omni (test config: 10 positions per second, 1 s chunks): 50 audio tokens, in chunks.
#: Qwen3-Omni (25 per second): 26 audio tokens, merged one by one in time order.
LAYOUTS = {
    "qwen2_5_omni": [("V", 16), ("A", 10), ("V", 16), ("A", 40)],
    "qwen3_omni": [("V", 16), ("A", 25), ("V", 16), ("A", 1)],
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def loaded(request, checkpoint):
    family = request.param
    return load_model(ModelSpec(family=family, checkpoint=str(checkpoint(family))))


def clip_inputs(loaded, media: Path, audio_in_video: bool) -> dict:
    run = containers.run_media(
        {"video": "dog.mkv", "audio_in_video": audio_in_video}, media, 16_000, "what do you hear"
    )
    return loaded.adapter.build_inputs(loaded.token_ids("what do you hear"), run)


def test_chunks_follow_the_models_rule() -> None:
    assert chunk_bounds([0, 0, 10, 10], 10) == [(0, 2), (2, 4)]
    assert chunk_bounds(list(range(25)), 10) == [(0, 10), (10, 20), (20, 25)]
    # one window per step, as transformers' get_chunked_index: a jump of two windows is one chunk
    assert chunk_bounds([0, 30], 10) == [(0, 1), (1, 2)]


def test_position_groups_follow_the_interleaving(loaded, family_root: Path) -> None:
    inputs = clip_inputs(loaded, family_root / "media", audio_in_video=True)
    loaded.adapter.check_inputs(inputs, "sample dog")
    adapter = loaded.adapter
    tokens, special = adapter._token_ids(), adapter._specials()
    ids = inputs["input_ids"][0]
    runs: list[list] = []
    kinds = {tokens["audio"]: "A", tokens["video"]: "V"}
    for token in ids.tolist():
        kind = kinds.get(token, "-")
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    assert [tuple(run) for run in runs if run[0] != "-"] == LAYOUTS[adapter.family]
    assert ids[:2].tolist() == [special["vision_start"], special["audio_start"]]
    groups = adapter.position_groups(inputs["input_ids"])
    assert torch.equal(groups["audio"], ids == tokens["audio"])
    assert torch.equal(groups["video"], ids == tokens["video"])

    # the model's own TMRoPE positions: time never runs backwards inside the clip
    positions, _ = loaded.model.get_rope_index(
        inputs["input_ids"],
        None,
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        True,
        inputs["feature_attention_mask"].sum(-1),
        inputs["video_second_per_grid"],
    )
    temporal = positions[0, 0]
    inside = temporal[groups["audio"] | groups["video"]]
    assert (inside[1:] >= inside[:-1]).all()
    audio = temporal[groups["audio"]]
    assert torch.equal(audio, audio[0] + torch.arange(len(audio), dtype=audio.dtype))


def test_the_forward_flag_is_set_only_for_interleaved_runs(loaded, family_root: Path) -> None:
    interleaved = clip_inputs(loaded, family_root / "media", audio_in_video=True)
    separate = clip_inputs(loaded, family_root / "media", audio_in_video=False)
    assert loaded.adapter.forward_kwargs(interleaved)["use_audio_in_video"] is True
    assert loaded.adapter.forward_kwargs(separate) == dict(separate)
    tokens = loaded.adapter._token_ids()
    for key in ("audio", "video"):  # the same media, laid out two ways
        count = int((interleaved["input_ids"] == tokens[key]).sum())
        assert count == int((separate["input_ids"] == tokens[key]).sum())


def test_frames_are_fitted_to_the_patch_grid_and_pixel_budget() -> None:
    frames = torch.zeros(2, 720, 1280, 3, dtype=torch.uint8).numpy()
    fitted = fit_frames(frames, 28, max_pixels=768 * 28 * 28)
    assert fitted.shape == (2, 560, 1008, 3)
    small = torch.zeros(1, 32, 32, 3, dtype=torch.uint8).numpy()
    assert fit_frames(small, 8) is small
    assert fit_frames(small[:, :30, :33], 8).shape == (1, 32, 32, 3)


def test_the_checkpoints_preprocessor_config_sets_pixel_statistics(
    tmp_path: Path, checkpoint
) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1], "max_pixels": 4096}'
    )
    loaded = load_model(ModelSpec(family="qwen3_omni", checkpoint=str(checkpoint("qwen3_omni"))))
    adapter = Qwen3OmniAdapter(loaded.model, tmp_path)
    settings = adapter._vision_settings
    assert settings["mean"] == (0.1, 0.2, 0.3) and settings["max_pixels"] == 4096
    assert Qwen3OmniAdapter(loaded.model)._vision_settings["mean"] == (0.5, 0.5, 0.5)
