"""A model in the study's dtype is the model transformers loads in that dtype: every parameter,
every buffer (rotary frequencies stay float32) and the logits of a multimodal forward are
bit-identical to ``<architecture>.from_pretrained(dir, dtype=…)``, for every family and the
shipped testbed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from patchwork import load_study
from patchwork.engine.runner import load_samples
from patchwork.loading.model import load_model
from patchwork.study.specs import ModelSpec
from patchwork.testbed import checkpoint_path

from . import builders

FAMILIES = ("qwen2_5_omni", "qwen3_omni", "gemma3n", "generic")
DTYPES = ("bfloat16", "float32")


def transformers_model(path: Path, dtype: str) -> torch.nn.Module:
    """The checkpoint loaded by its own transformers class, as a user of transformers would.

    Gemma 3n's own class needs timm for its vision tower, and timm needs torchvision, which does
    not install beside the pinned CPU torch: there the class is patchwork's vision-less subclass,
    still loaded by transformers' ``from_pretrained``."""
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type == "gemma3n":
        from patchwork.models.gemma3n import gemma3n_without_vision_class

        architecture = gemma3n_without_vision_class()
    else:
        architecture = getattr(transformers, config.architectures[0])
    return architecture.from_pretrained(
        path, dtype=getattr(torch, dtype), local_files_only=True, attn_implementation="sdpa"
    ).eval()


def assert_same_tensors(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    mine = {**dict(ours.named_parameters()), **dict(ours.named_buffers())}
    reference = {**dict(theirs.named_parameters()), **dict(theirs.named_buffers())}
    suffix = {name.split("thinker.", 1)[-1]: tensor for name, tensor in reference.items()}
    assert set(mine) == set(suffix)
    for name, tensor in mine.items():
        assert tensor.dtype == suffix[name].dtype, name
        assert torch.equal(tensor, suffix[name]), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_loads_as_transformers_loads_it(
    tmp_path: Path, family_root: Path, checkpoint, family: str, dtype: str
) -> None:
    path = builders.family_study(tmp_path, family, checkpoint(family), family_root / "media")
    study = load_study(path, overrides=[f"model.dtype={dtype}"])
    loaded = load_model(study.model)
    reference = transformers_model(checkpoint(family), dtype)
    assert_same_tensors(loaded.model, reference)
    sample = load_samples(study, loaded).load(0, 1)[0]
    inputs = loaded.adapter.forward_kwargs(sample.runs["conflict"])
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, reference(**inputs).logits)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_testbed_loads_as_transformers_loads_it(dtype: str) -> None:
    loaded = load_model(ModelSpec(checkpoint="testbed", dtype=dtype))
    reference = transformers_model(checkpoint_path("testbed"), dtype)
    assert_same_tensors(loaded.model, reference)
    kept = [name for name, buffer in loaded.model.named_buffers() if "inv_freq" in name]
    assert kept and all(
        dict(loaded.model.named_buffers())[name].dtype == torch.float32 for name in kept
    )


def test_a_bfloat16_random_init_keeps_float32_rotary_frequencies() -> None:
    from patchwork.study.specs import RandomInit

    spec = RandomInit(layers=2, hidden_size=32, heads=2, kv_heads=1)
    loaded = load_model(ModelSpec(random_init=spec, dtype="bfloat16"))
    float32 = load_model(ModelSpec(random_init=spec))
    dtypes = {name: buffer.dtype for name, buffer in loaded.model.named_buffers()}
    assert dtypes and set(dtypes.values()) == {torch.float32}
    for name, parameter in loaded.model.named_parameters():
        assert parameter.dtype == torch.bfloat16
        assert torch.equal(parameter, dict(float32.model.named_parameters())[name].bfloat16())
