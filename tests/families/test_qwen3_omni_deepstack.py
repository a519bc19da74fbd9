"""Qwen3-Omni's DeepStack: patching the residual stream must not add visual features twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patchwork.data import containers
from patchwork.loading.model import load_model
from patchwork.models.adapter import ModelAdapter
from patchwork.patching.patcher import Condition, Patcher
from patchwork.study.specs import ModelSpec

from . import reference


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(ModelSpec(family="qwen3_omni", checkpoint=str(checkpoint("qwen3_omni"))))


def runs(loaded, media: Path) -> tuple[dict, dict]:
    text = loaded.token_ids("what do you hear")
    clean = containers.run_media({"video": "dog.mkv"}, media, 16_000, "")
    conflict = containers.run_media({"video": "cat.mkv", "audio": "dog.mkv"}, media, 16_000, "")
    return loaded.adapter.build_inputs(text, clean), loaded.adapter.build_inputs(text, conflict)


def all_position_patch(loaded, clean: dict, conflict: dict, layer: int) -> torch.Tensor:
    patcher = Patcher(loaded.adapter)
    clean_logits, activations = patcher.record(clean, [(layer, "residual")])
    groups = loaded.adapter.position_groups(conflict["input_ids"])
    condition = Condition(layer, (layer,), "all", "residual")
    patched = patcher.patched(conflict, activations, [condition], groups)
    return clean_logits, patched


@pytest.mark.parametrize("layer", [1, 2])
def test_patching_every_position_after_the_last_deepstack_layer_gives_the_clean_run(
    loaded, family_root: Path, layer: int
) -> None:
    """DeepStack adds features after layers 0 and 1: from layer 1 on, the patched residual is
    the whole state, and the clean run must come out exactly. (After layer 0 the target's own
    features are still added after layer 1, once, as in any forward of the target.)"""
    clean, conflict = runs(loaded, family_root / "media")
    loaded.adapter.check_inputs(conflict, "sample dog")
    assert len(loaded.adapter.config.vision_config.deepstack_visual_indexes) == 2
    clean_logits, patched = all_position_patch(loaded, clean, conflict, layer)
    assert torch.allclose(patched, clean_logits, atol=1e-5)
    # the runs do differ, and they differ where DeepStack adds features
    assert not torch.allclose(reference.forward(loaded.model, conflict), clean_logits[0], atol=1e-3)


def test_the_layer_output_site_would_add_features_twice(
    loaded, family_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above has teeth: at layers[l].output the target's own visual features are
    added on top of the patched state, and the clean run is not reproduced."""
    monkeypatch.setattr(type(loaded.adapter), "site", ModelAdapter.site)
    clean, conflict = runs(loaded, family_root / "media")
    clean_logits, patched = all_position_patch(loaded, clean, conflict, 1)
    assert not torch.allclose(patched, clean_logits, atol=1e-3)


def test_the_residual_is_read_after_the_visual_features_are_added(
    loaded, family_root: Path
) -> None:
    clean, _ = runs(loaded, family_root / "media")
    _, activations = Patcher(loaded.adapter).record(clean, [(0, "residual"), (2, "residual")])
    layers = loaded.model.model.language_model.layers
    captured = reference.capture(loaded.model, "qwen3_omni", clean, 3)
    assert torch.equal(activations[(0, "residual")], captured[(0, "residual")])
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, output) -> None:
        seen["out"] = output[0].clone()

    handle = layers[0].register_forward_hook(keep)
    try:
        reference.forward(loaded.model, clean)
    finally:
        handle.remove()
    video_positions = loaded.adapter.position_groups(clean["input_ids"])["video"]
    difference = (activations[(0, "residual")] - seen["out"]).abs().sum(-1)
    assert (difference[video_positions] > 0).all()
    assert (difference[~video_positions] == 0).all()
