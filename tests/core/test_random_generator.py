"""The ``random`` generator's runs: each medium's variants are drawn apart from one another."""

from __future__ import annotations

import torch

from patchwork.loading.generators import random_sample
from patchwork.loading.model import load_model
from patchwork.study.schema import RunSpec
from patchwork.study.specs import ModelSpec


def test_the_sound_swap_plays_another_sound_under_the_same_picture() -> None:
    torch.set_num_threads(1)
    loaded = load_model(
        ModelSpec.model_validate(
            {
                "family": "qwen2_5_omni",
                "random_init": {"layers": 1, "hidden_size": 32, "heads": 2, "kv_heads": 1},
            }
        )
    )
    runs = {
        "clean": RunSpec(audio="own", picture="blank"),
        "swap": RunSpec(audio="other_category", picture="blank"),
        "mute": RunSpec(audio="silence", picture="blank"),
    }
    first, again = (random_sample(3, 0, runs, "what do you hear", loaded) for _ in range(2))
    clean, swap, mute = (first.runs[name] for name in ("clean", "swap", "mute"))
    assert not torch.equal(clean["input_features"], swap["input_features"])
    assert torch.count_nonzero(mute["input_features"]) == 0
    assert torch.equal(clean["pixel_values_videos"], swap["pixel_values_videos"])
    assert torch.equal(swap["input_features"], again.runs["swap"]["input_features"])  # seeded
    other = random_sample(4, 0, runs, "what do you hear", loaded).runs["swap"]
    assert not torch.equal(other["input_features"], swap["input_features"])  # per sample
