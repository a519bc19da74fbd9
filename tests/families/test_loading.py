"""Checkpoint directories as users have them: full omni checkpoints, extra vision-tower weights,
the directory's own tokenizer, a family that does not match."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from patchwork import ModelError
from patchwork.loading.model import load_model
from patchwork.study.specs import ModelSpec

from . import checkpoints


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, two = first.state_dict(), second.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)


def test_a_full_qwen3_omni_checkpoint_loads_its_thinker(tmp_path: Path, checkpoint) -> None:
    from transformers import AutoConfig, Qwen3OmniMoeConfig

    thinker_dir = checkpoint("qwen3_omni")
    full_dir = tmp_path / "full"
    thinker_config = AutoConfig.from_pretrained(thinker_dir)
    Qwen3OmniMoeConfig(
        thinker_config=thinker_config.to_dict(), enable_audio_output=False
    ).save_pretrained(full_dir)
    weights = load_file(str(thinker_dir / "model.safetensors"))
    save_file(
        {f"thinker.{key}": value for key, value in weights.items()},
        str(full_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    full = load_model(ModelSpec(family="qwen3_omni", checkpoint=str(full_dir)))
    thinker = load_model(ModelSpec(family="qwen3_omni", checkpoint=str(thinker_dir)))
    assert type(full.model).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"
    assert same_weights(full.model, thinker.model)


def test_gemma3n_vision_tower_weights_are_left_out(tmp_path: Path, checkpoint) -> None:
    source = checkpoint("gemma3n")
    copy = tmp_path / "with-vision"
    copy.mkdir()
    for item in source.iterdir():
        if item.name != "model.safetensors":
            (copy / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(source / "model.safetensors"))
    weights["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with_vision = load_model(ModelSpec(family="gemma3n", checkpoint=str(copy)))
    plain = load_model(ModelSpec(family="gemma3n", checkpoint=str(source)))
    assert same_weights(with_vision.model, plain.model)


def test_the_directorys_tokenizer_is_used(checkpoint) -> None:
    loaded = load_model(ModelSpec(family="gemma3n", checkpoint=str(checkpoint("gemma3n"))))
    assert loaded.tokenizer is not None
    assert loaded.answer_id("bark") == 8 + checkpoints.WORDS.index("bark")
    assert loaded.token_ids("<image_soft_token>") == [65]


def test_a_checkpoint_of_another_family_is_refused(checkpoint) -> None:
    with pytest.raises(ModelError, match="model.family: .* is a 'gemma3n' model, not a Qwen3"):
        load_model(ModelSpec(family="qwen3_omni", checkpoint=str(checkpoint("gemma3n"))))


def test_a_checkpoint_without_the_models_weights_is_refused(tmp_path: Path, checkpoint) -> None:
    """transformers would initialise the missing weights at random and run; patchwork refuses."""
    import shutil

    source = checkpoint("qwen2_5_omni")
    foreign = tmp_path / "foreign"
    shutil.copytree(source, foreign)
    weights = load_file(str(source / "model.safetensors"))
    kept = dict(list(weights.items())[: len(weights) // 2])
    renamed = {f"other.{key}": value for key, value in weights.items() if key not in kept}
    save_file({**kept, **renamed}, str(foreign / "model.safetensors"), metadata={"format": "pt"})
    missing = len(weights) - len(kept)
    with pytest.raises(
        ModelError, match=rf"model\.checkpoint: {missing} of the model's \d+ weights"
    ):
        load_model(ModelSpec(family="qwen2_5_omni", checkpoint=str(foreign)))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "sizes", "huge"])
def test_damaged_weights_are_one_clear_error(checkpoint, tmp_path: Path, damage: str) -> None:
    import json
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint("qwen2_5_omni"), folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(bytes(range(256)) * 20)
    else:
        config = json.loads((folder / "config.json").read_text())
        if damage == "sizes":
            config["text_config"]["intermediate_size"] += 8
        else:  # a config of another, far larger model: refused before anything is allocated
            config["text_config"].update(hidden_size=8192, intermediate_size=65536)
        (folder / "config.json").write_text(json.dumps(config))
    expected = {
        "sizes": "mismatched sizes",
        "huge": r"config.json describes [\d,]+ parameters but its weight files hold [\d,]+ bytes",
    }.get(damage, "damaged safetensors file")
    with pytest.raises(ModelError, match=expected):
        load_model(ModelSpec(family="qwen2_5_omni", checkpoint=str(folder)))
