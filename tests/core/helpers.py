"""Study texts and tiny models shared by the core tests."""

from __future__ import annotations

from pathlib import Path

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"


def study_text(
    layers: int = 3,
    samples: int = 3,
    unit_size: int = 2,
    window: int = 1,
    groups: str = "[audio, video, text, answer, all]",
    components: str = "[residual, attention, mlp]",
    extra_dataset: str = "",
    noise_floor: str = "mismatched",
    attention: str = "sdpa",
) -> str:
    """A small study on a random-init thinker (the smoke study, smaller)."""
    return f"""\
name: tiny
model:
  family: qwen2_5_omni
  random_init: {{layers: {layers}, hidden_size: 32, heads: 2, kv_heads: 1, seed: 1}}
  attention: {attention}
dataset:
  generator: random
  samples: {samples}
  seed: 3{extra_dataset}
interventions:
  - kind: activation_patching
    from: clean
    into: conflict
    components: {components}
    layers: all
    window: {window}
    position_groups: {groups}
    noise_floor: {noise_floor}
execution: {{batch_size: 7, unit_size: {unit_size}, seed: 0}}
"""


def tiny_full_omni(thinker_config: object) -> object:
    """A random-init ``Qwen2_5OmniForConditionalGeneration`` (thinker + tiny talker, no vocoder)."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker = thinker_config.to_dict()  # type: ignore[attr-defined]
    talker = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        embedding_size=32,
        text_vocab_size=64,
        audio_config=thinker["audio_config"],
        vision_config=thinker["vision_config"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    config = Qwen2_5OmniConfig(
        thinker_config=thinker, talker_config=talker, enable_audio_output=False
    )
    return Qwen2_5OmniForConditionalGeneration(config)
