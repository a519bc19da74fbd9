"""Qwen2.5-Omni clips with the soundtrack inside the video: layout, positions, forward flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patchwork.data import video
from patchwork.models.loading import load_model
from patchwork.models.qwen2_5_omni import chunk_bounds
from patchwork.study.schema import ModelSpec


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(ModelSpec(checkpoint=str(checkpoint("qwen2_5_omni"))))


def clip_inputs(loaded, media: Path, audio_in_video: bool) -> dict:
    run = video.run_media(
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
    ids = inputs["input_ids"][0].tolist()
    config = loaded.adapter.config
    # 2 s clip sampled at 2 fps -> grid (2, 8, 8) -> 16 video tokens per grid step, 1 s apart;
    # 2 s of audio -> 50 tokens; windows of 10 time positions (1 s at 10 per second)
    runs, kinds = [], {config.audio_token_index: "A", config.video_token_index: "V"}
    for token in ids:
        kind = kinds.get(token, "-")
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    modality = [(kind, count) for kind, count in runs if kind != "-"]
    assert modality == [("V", 16), ("A", 10), ("V", 16), ("A", 40)]
    assert ids[:2] == [config.vision_start_token_id, config.audio_start_token_id]
    groups = loaded.adapter.position_groups(inputs["input_ids"])
    tensor = inputs["input_ids"][0]
    assert torch.equal(groups["audio"], tensor == config.audio_token_index)
    assert torch.equal(groups["video"], tensor == config.video_token_index)

    # the model's own TMRoPE positions: time never runs backwards inside the clip
    thinker = loaded.model
    positions, _ = thinker.get_rope_index(
        inputs["input_ids"],
        None,
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        True,
        inputs["feature_attention_mask"].sum(-1),
        inputs["video_second_per_grid"],
    )
    temporal = positions[0, 0]
    clip = groups["audio"] | groups["video"]
    inside = temporal[clip]
    assert (inside[1:] >= inside[:-1]).all()
    assert torch.equal(temporal[groups["audio"]], temporal[groups["audio"]][0] + torch.arange(50))


def test_the_forward_flag_is_set_only_for_interleaved_runs(loaded, family_root: Path) -> None:
    interleaved = clip_inputs(loaded, family_root / "media", audio_in_video=True)
    separate = clip_inputs(loaded, family_root / "media", audio_in_video=False)
    assert loaded.adapter.forward_kwargs(interleaved)["use_audio_in_video"] is True
    assert loaded.adapter.forward_kwargs(separate) == dict(separate)
    # the same media, laid out two ways, hold the same placeholders
    for key in ("audio", "video"):
        token = getattr(loaded.adapter.config, f"{key}_token_index")
        assert int((interleaved["input_ids"] == token).sum()) == int(
            (separate["input_ids"] == token).sum()
        )
