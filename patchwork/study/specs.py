"""What every part of a study file shares: the vocabulary (components, position groups, metrics),
the bounds on numbers, layer lists and ranges, and the model a study (or a base-model comparison)
names. Imported by :mod:`patchwork.study.schema` and by every study entry's model
(:mod:`patchwork.study.entries`, or a plug-in's).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from patchwork import plugins

Component = Literal["residual", "attention", "mlp"]
PositionGroup = Literal["audio", "video", "image", "text", "answer", "text_and_answer", "all"]
#: Knockout rules may also name the tokens generated after the prompt.
KnockoutGroup = Literal["audio", "video", "image", "text", "answer", "generated", "all"]
Metric = Literal["logit_diff", "audio_probability", "normalized_effect"]

COMPONENTS: tuple[Component, ...] = ("residual", "attention", "mlp")
METRICS: tuple[Metric, ...] = ("logit_diff", "audio_probability", "normalized_effect")

_RANGE = re.compile(r"^\s*([0-9]{1,18})\s*(?:-|:|\.\.)\s*([0-9]{1,18})\s*$")

#: Largest seed: torch takes seeds in [-2**63, 2**64 - 1], numpy's generators any integer >= 0;
#: every seed patchwork uses lies in both, with room for the small offsets added to some.
MAX_SEED = 2**63 - 1
#: Largest token id a study may name (a vocabulary of 2**31 is beyond any model).
MAX_TOKEN_ID = 2**31 - 1
#: The torch device types a run can compute on ("meta" holds no data; "cpu", "cuda:1" …).
_DEVICE = re.compile(r"^(?!meta(:|$))[a-z][a-z0-9_]*(:[0-9]{1,4})?$")


def parse_range(text: str) -> tuple[int, int] | None:
    """``"4-7"``, ``"4:7"`` or ``"4..7"`` → (4, 7), both ends inclusive; None if not a range."""
    match = _RANGE.match(text)
    return (int(match[1]), int(match[2])) if match else None


class Strict(BaseModel):
    """Unknown keys are errors; values are immutable; aliases and field names both accepted.
    Types are strict: ``"4"`` is not a number, ``yes`` or ``1`` not a flag, ``true`` not a
    number (an integer is a float); sequences are tuples (the loader makes YAML's lists tuples);
    a path field accepts text (``Field(strict=False)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class RandomInit(Strict):
    """A tiny random-init Qwen2.5-Omni thinker, for tests and smoke runs (no weights needed)."""

    layers: int = Field(4, ge=1, le=64, description="Decoder layers.")
    hidden_size: int = Field(
        64, ge=16, le=4096, description="Text hidden size (multiple of heads × 8)."
    )
    heads: int = Field(4, ge=1, le=64)
    kv_heads: int = Field(2, ge=1, le=64)
    vocab_size: int = Field(64, ge=16, le=262_144)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the weight initialisation.")

    @model_validator(mode="after")
    def _heads_fit(self) -> RandomInit:
        if self.hidden_size % self.heads or (self.hidden_size // self.heads) % 8:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be heads ({self.heads}) × a multiple of 8"
            )
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads")
        return self


def parse_id_ranges(items: tuple[int | str, ...]) -> list[tuple[int, int]]:
    """Token ids and ``"a-b"`` ranges as inclusive (first, last) pairs."""
    pairs = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            pair = (item, item)
        else:
            match = _RANGE.match(str(item))
            if not match or int(match[2]) < int(match[1]):
                raise ValueError(f"expected a token id or a range like '100-199', got {item!r}")
            pair = (int(match[1]), int(match[2]))
        if not 0 <= pair[0] <= pair[1] <= MAX_TOKEN_ID:
            raise ValueError(f"token ids lie in [0, {MAX_TOKEN_ID}], got {item!r}")
        pairs.append(pair)
    return pairs


class GenericSpec(Strict):
    """A model without a built-in adapter, described by its module paths and placeholder ids."""

    architecture: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="The transformers model class, e.g. 'Qwen2AudioForConditionalGeneration'.",
    )
    root: str = Field("", description="Dotted path of the traced module ('' = the model).")
    layers: str = Field(description="Dotted path of the decoder layers (a ModuleList).")
    attention: str = Field("self_attn", description="Attention submodule of a layer.")
    mlp: str = Field("mlp", description="MLP submodule of a layer.")
    final_norm: str = Field(description="Dotted path of the final norm.")
    unembed: str = Field(description="Dotted path of the unembedding (lm head).")
    position_groups: dict[Literal["audio", "video", "image"], tuple[int | str, ...]] = Field(
        default_factory=dict,
        description="Token ids or 'a-b' id ranges of each modality's placeholders.",
    )
    prompt: str = Field(
        "{question}",
        description="Text given to the checkpoint's processor; '{question}' is replaced.",
    )
    media: tuple[Literal["audio", "images", "videos"], ...] = Field(
        ("audio",), description="Which decoded media the processor receives, and as what."
    )
    sampling_rate: int = Field(
        16_000, ge=1, le=1_000_000, description="Audio rate the processor expects."
    )

    @field_validator("position_groups")
    @classmethod
    def _ranges(cls, value: dict) -> dict:
        for items in value.values():
            parse_id_ranges(items)
        return value

    @field_validator("prompt")
    @classmethod
    def _has_question(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("the prompt must contain '{question}'")
        return value


class ModelSpec(Strict):
    """Which model, and how to load it."""

    family: str = Field(
        "qwen2_5_omni",
        description="The adapter: which architecture family this model is — qwen2_5_omni, "
        "qwen3_omni, gemma3n, generic, or one another package registers (entry point "
        "'patchwork.families').",
    )
    checkpoint: str | None = Field(
        None,
        description="'testbed', 'testbed-base', a local checkpoint directory (safetensors), "
        "or omitted when random_init is given.",
    )
    random_init: RandomInit | None = Field(
        None, description="Build a tiny random-init Qwen2.5-Omni thinker."
    )
    generic: GenericSpec | None = Field(
        None, description="Module paths and placeholder ids (family 'generic' only)."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field(
        "cpu", max_length=40, description="torch device, e.g. 'cpu', 'cuda', 'cuda:1'."
    )
    attention: Literal["sdpa", "eager"] = "sdpa"
    trust_remote_code: bool = Field(
        False, description="Let transformers run code shipped with the checkpoint. Off by default."
    )

    @field_validator("family")
    @classmethod
    def _family_is_installed(cls, family: str) -> str:
        installed = plugins.names(plugins.FAMILIES)
        if family not in installed:
            raise ValueError(f"unknown model family; installed: {', '.join(installed)}")
        return family

    @field_validator("device")
    @classmethod
    def _computes(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(
                "expected a torch device that computes, e.g. 'cpu', 'cuda', 'cuda:1', 'mps' "
                "('meta' holds no data)"
            )
        return device

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.checkpoint is None) == (self.random_init is None):
            raise ValueError("give exactly one of 'checkpoint' or 'random_init'")
        if self.random_init is not None and self.family != "qwen2_5_omni":
            raise ValueError(
                f"random_init builds a Qwen2.5-Omni thinker; family {self.family!r} needs a "
                "checkpoint directory"
            )
        if (self.family == "generic") != (self.generic is not None):
            raise ValueError("give a 'generic' block exactly when family is 'generic'")
        return self


#: No model has more decoder layers; larger indices are refused before any list is built.
MAX_LAYER_INDEX = 4095


def parse_layers(value: object) -> object:
    """Turn 'all', ints and 'a-b' ranges into a sorted tuple of layer indices (or 'all')."""
    if value == "all":
        return "all"
    items = value if isinstance(value, list | tuple) else [value]
    if len(items) > MAX_LAYER_INDEX + 1:
        raise ValueError(f"{len(items)} layer entries; a model has at most {MAX_LAYER_INDEX + 1}")
    layers: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"expected a layer index or range, got {item!r}")
        if isinstance(item, int):
            if item > MAX_LAYER_INDEX:
                raise ValueError(f"layer {item} is beyond any model (at most {MAX_LAYER_INDEX})")
            layers.add(item)
            continue
        match = _RANGE.match(str(item))
        if not match:
            raise ValueError(f"expected 'all', a layer index or a range like '4-7', got {item!r}")
        first, last = int(match[1]), int(match[2])
        if last < first:
            raise ValueError(f"range {item!r} ends before it starts")
        if last > MAX_LAYER_INDEX:
            raise ValueError(
                f"range {item!r} is beyond any model (layers at most {MAX_LAYER_INDEX})"
            )
        layers.update(range(first, last + 1))
    if any(layer < 0 for layer in layers):
        raise ValueError("layer indices start at 0")
    if not layers:
        raise ValueError("no layers given")
    return tuple(sorted(layers))
