"""The study file's schema: a YAML study validated into typed, immutable objects.

Unknown keys are errors everywhere (``extra="forbid"``). Checks that need the model (layer counts)
happen later, in :mod:`patchwork.engine.cost`, and still name the study file's line through
:meth:`Study.where`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from patchwork import plugins

Component = Literal["residual", "attention", "mlp"]
PositionGroup = Literal["audio", "video", "image", "text", "answer", "all"]
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RandomInit(_Strict):
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


class GenericSpec(_Strict):
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


class ModelSpec(_Strict):
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


class ChatSpec(_Strict):
    """How the question becomes the model's prompt."""

    template: Literal["auto", "checkpoint", "none"] = Field(
        "auto",
        description="'checkpoint': render the question as a user turn holding the media with the "
        "checkpoint's chat template (refused when it ships none); 'none': the question as "
        "written (turns and '{media}' by hand); 'auto': the template when the checkpoint ships "
        "one, the family can place its media in it and the question has no '{media}'; else as "
        "written.",
    )
    system: str | None = Field(
        None, description="The system turn rendered by the template; null: the template's own."
    )


class InputsSpec(_Strict):
    """How a manifest's media files become the model's inputs (docs: "Your own clips",
    Conventions). ``inputs: processor`` is short for ``{builder: processor}``, ``inputs:
    transformers`` for ``{convention: transformers}``."""

    convention: Literal["model_card", "transformers"] = Field(
        "model_card",
        description="Which official route's frames, pixel budget and frame times: 'model_card' "
        "(qwen-omni-utils, then the processor, as the model cards call them) or 'transformers' "
        "(the processor's own do_sample_frames).",
    )
    builder: Literal["patchwork", "processor"] = Field(
        "patchwork",
        description="'patchwork': patchwork builds the inputs by the convention's rules (no "
        "torchvision needed); 'processor': the family's official processor, built from the "
        "checkpoint folder, builds them (needs torchvision, torchcodec and, for the model-card "
        "route, qwen-omni-utils).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if value == "processor":
            return {"builder": "processor"}
        if value in ("model_card", "transformers"):
            return {"convention": value}
        return value


class DatasetSpec(_Strict):
    """Where the samples come from: a named generator or a manifest of media files."""

    generator: Literal["random", "testbed"] | None = Field(
        None,
        description="'random': random features (random-init models); 'testbed': the "
        "synthetic audio-visual world of the default model.",
    )
    manifest: Path | None = Field(
        None, description="A JSONL or CSV file listing samples (paths relative to the study file)."
    )
    samples: int = Field(16, ge=1, le=1_000_000, description="How many samples (generators only).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Which samples (generators).")
    max_seconds: float = Field(
        600.0, gt=0, le=7200, description="Longest clip (or `seconds`) a manifest run may have."
    )
    max_frame_side: int = Field(
        4096, ge=16, le=16384, description="Largest picture or frame side (pixels) a run may have."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.generator is None) == (self.manifest is None):
            raise ValueError("give exactly one of 'generator' or 'manifest'")
        return self


class RunSpec(_Strict):
    """How one run of a sample is built from its media (generators only)."""

    audio: Literal["own", "silence"] = "own"
    picture: Literal["own", "blank", "other_category"] = "own"


#: No model has more decoder layers; larger indices are refused before any list is built.
MAX_LAYER_INDEX = 4095


def _parse_layers(value: object) -> object:
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


class ActivationPatching(_Strict):
    """Patch activations of one run into another, layer window × position group × component."""

    kind: Literal["activation_patching"]
    source: str = Field("clean", alias="from", description="The run activations are taken from.")
    target: str = Field("conflict", alias="into", description="The run they are patched into.")
    components: tuple[Component, ...] = Field(
        COMPONENTS,
        min_length=1,
        description="residual: decoder layer output; attention: self-attention output; "
        "mlp: MLP output.",
    )
    layers: Literal["all"] | tuple[int, ...] = Field(
        "all", description="'all', or a list of layer indices and ranges like '4-7'."
    )
    window: int = Field(
        1, ge=1, le=MAX_LAYER_INDEX + 1, description="Consecutive layers patched together."
    )
    position_groups: tuple[PositionGroup, ...] = Field(
        ("audio", "video", "text", "answer"), min_length=1
    )
    method: Literal["exact", "attribution", "attribution+verify"] = Field(
        "exact",
        description="exact: one patched run per cell; attribution: gradient × activation "
        "difference estimates of every cell from one backward pass, the least certain patched "
        "exactly within verify_budget (flagged in verified); attribution+verify: also patches "
        "the verify_top_k top-estimated cells and as many random others exactly and stores "
        "the estimate's agreement with them.",
    )
    verify_top_k: int = Field(
        16,
        ge=1,
        le=1_000_000,
        description="attribution+verify: top-estimated cells checked per sample.",
    )
    verify_budget: float = Field(
        0.3,
        ge=0,
        le=1,
        description="attribution: share of an exact sweep's work (layers × positions each "
        "patched run computes) spent per sample patching exactly the cells whose estimate is "
        "least certain (largest squared change of the patched activations per unit of work); "
        "those cells report exact effects. 0: estimates only.",
    )
    corrections: tuple[Literal["qk", "readout", "graddrop"], ...] | None = Field(
        None,
        description="attribution only: corrections to the linear estimate (default: readout "
        "where the model family allows it). readout: the final norm and metric recomputed "
        "exactly on each patch's direct path (cheap); qk: AtP*'s QK fix, every later layer's "
        "attention softmax recomputed for the queries and keys a patch changes (costs about the "
        "attention projections of an exact sweep); graddrop: AtP*'s GradDrop (one backward pass "
        "per layer), stored as graddrop, a size of each cell's change that cancelling paths "
        "cannot hide, which also ranks the cells attribution+verify checks. [] is plain "
        "attribution patching.",
    )
    noise_floor: Literal["mismatched", "none"] = Field(
        "mismatched",
        description="'mismatched' also patches each sample's target run with the source runs of "
        "other samples of the same token layout, drawn from the whole dataset (seeded by "
        "execution.seed): a noise floor stored as null_effect (sample, partner, …).",
    )
    noise_partners: int = Field(
        1,
        ge=1,
        le=16,
        description="Partners per sample for the mismatched noise floor; each costs one more "
        "source forward and one more patched pass per sample.",
    )

    _layers = field_validator("layers", mode="before")(_parse_layers)

    @field_validator("method")
    @classmethod
    def _exact_windows(cls, value: str, info: ValidationInfo) -> str:
        window = info.data.get("window", 1)
        if value != "exact" and window > 1:
            raise ValueError(
                f"window {window} needs method: exact — attribution adds one first-order term per "
                "patched layer, while a later layer's patch overwrites an earlier one at the same "
                "positions (residual window 4 on the default model: estimates 1.02–1.96 where "
                "exact gives 1.00); use window: 1 with attribution"
            )
        return value

    @field_validator("components", "position_groups", "corrections")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"listed twice: {sorted({v for v in value if value.count(v) > 1})}")
        return value

    @property
    def run_names(self) -> tuple[str, ...]:
        """The study runs this intervention reads."""
        return (self.source, self.target)


_LAYERS_DOC = "'all', or a list of layer indices and ranges like '4-7'."


def _unique_groups(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise ValueError(f"listed twice: {sorted({v for v in value if value.count(v) > 1})}")
    return value


class KnockoutRule(_Strict):
    """Queries of some position groups may not attend keys of others, in some layers."""

    queries: tuple[KnockoutGroup, ...] = Field(min_length=1, description="Query groups blocked.")
    keys: tuple[KnockoutGroup, ...] = Field(min_length=1, description="Key groups they lose.")
    layers: Literal["all"] | tuple[int, ...] = Field(
        "all",
        description="Without window: the layers blocked together. With window: the first "
        "layers of the sliding windows. " + _LAYERS_DOC,
    )
    window: int | None = Field(
        None,
        ge=1,
        le=MAX_LAYER_INDEX + 1,
        description="Sweep: one knockout per first layer, blocking `window` layers.",
    )
    self_pairs: Literal["keep", "block"] = Field(
        "block",
        alias="self",
        description="block (the reference study's rule): a query of a blocked key group loses "
        "itself too; keep: every position keeps attending to itself. A query left without any "
        "key keeps itself either way.",
    )

    heads: Literal["all", "each"] | tuple[int, ...] = Field(
        "all",
        description="all: every attention head is blocked; a list of query heads (ranges like "
        "'0-3'): only those, together; each: a sweep, one knockout per query head.",
    )

    _layers = field_validator("layers", mode="before")(_parse_layers)
    _groups = field_validator("queries", "keys")(_unique_groups)

    @field_validator("heads", mode="before")
    @classmethod
    def _heads(cls, value: object) -> object:
        return value if value in ("all", "each") else _parse_layers(value)


class AttentionKnockout(_Strict):
    """Block attention edges by rule and measure the metrics of the answer against a run."""

    kind: Literal["attention_knockout"]
    run: str = Field("conflict", description="The run whose attention is knocked out.")
    reference: str = Field(
        "clean", description="The run that defines normalized_effect's 1 (0 = ``run``)."
    )
    rules: dict[str, KnockoutRule] = Field(
        min_length=1, description="Named rules; each becomes one knockout, or a sweep of them."
    )
    decode_tokens: int = Field(
        1,
        ge=1,
        le=64,
        description="Tokens generated greedily with the knockout active: the metrics are read "
        "from the logits of the first (at the answer position); rules on 'generated' act from "
        "the second on, and every token is stored.",
    )

    @field_validator("rules")
    @classmethod
    def _names(cls, value: dict[str, KnockoutRule]) -> dict[str, KnockoutRule]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_.-]+$", name):
                raise ValueError(f"rule name {name!r}: use letters, digits, '_', '-', '.'")
        return value

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run, self.reference)

    @model_validator(mode="after")
    def _generated_needs_decoding(self) -> AttentionKnockout:
        for name, rule in self.rules.items():
            if "generated" in rule.queries and self.decode_tokens < 2:
                raise ValueError(
                    f"rule {name!r} blocks generated tokens, which only exist from the second "
                    "generated token on: set decode_tokens: 2 or more"
                )
        return self


class LogitLens(_Strict):
    """Read residual streams through the (normed) unembedding, layer by layer."""

    kind: Literal["logit_lens"]
    run: str = Field("conflict", description="The run whose residual streams are read.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    position_groups: tuple[PositionGroup, ...] = Field(("audio", "answer"), min_length=1)
    final_norm: bool = Field(True, description="Apply the final norm before the unembedding.")
    top_k: int = Field(5, ge=1, le=100, description="How many top token ids to store.")

    _layers = field_validator("layers", mode="before")(_parse_layers)
    _groups = field_validator("position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run,)


class AttentionShare(_Strict):
    """Fraction of attention mass from query groups to key groups, per layer and head."""

    kind: Literal["attention_share"]
    run: str = Field("conflict", description="The run whose attention is read.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    queries: tuple[PositionGroup, ...] = Field(("answer", "text"), min_length=1)
    keys: tuple[PositionGroup, ...] = Field(
        ("audio", "video", "image", "text", "answer"), min_length=1
    )

    _layers = field_validator("layers", mode="before")(_parse_layers)
    _groups = field_validator("queries", "keys")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run,)


class Probes(_Strict):
    """Store pooled residual features per layer and position group for linear probes."""

    kind: Literal["probes"]
    run: str = Field("conflict", description="The run whose residual streams are stored.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    position_groups: tuple[PositionGroup, ...] = Field(("audio", "text", "answer"), min_length=1)

    _layers = field_validator("layers", mode="before")(_parse_layers)
    _groups = field_validator("position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run,)


class BaseComparison(_Strict):
    """Compare next-token distributions of the model and its base model on the same inputs."""

    kind: Literal["base_comparison"]
    base: ModelSpec = Field(
        description="The base model (checkpoint or random_init); dtype, device and attention "
        "follow the study's model."
    )
    runs: tuple[str, ...] = Field(("conflict",), min_length=1)
    position_groups: tuple[PositionGroup, ...] = Field(("all", "text", "answer"), min_length=1)

    _groups = field_validator("runs", "position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return self.runs


class HeadPatching(_Strict):
    """Patch each attention head's output (before the output projection) of one run into
    another, layer × head × position group."""

    kind: Literal["head_patching"]
    source: str = Field("clean", alias="from", description="The run activations are taken from.")
    target: str = Field("conflict", alias="into", description="The run they are patched into.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    heads: Literal["all"] | tuple[int, ...] = Field(
        "all", description="'all', or a list of query-head indices and ranges like '0-3'."
    )
    position_groups: tuple[PositionGroup, ...] = Field(("video", "text", "answer"), min_length=1)
    method: Literal["exact", "attribution"] = Field(
        "exact",
        description="exact: one patched run per cell (resumed mid-model where the family "
        "allows it); attribution: gradient × activation-difference estimates of every cell from "
        "one backward pass, the least certain patched exactly within verify_budget (flagged in "
        "head_verified).",
    )
    verify_budget: float = Field(
        0.3,
        ge=0,
        le=1,
        description="attribution: share of an exact sweep's work spent patching exactly the "
        "cells whose estimate is least certain (as for activation_patching). 0: estimates only.",
    )

    _layers = field_validator("layers", "heads", mode="before")(_parse_layers)
    _groups = field_validator("position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.source, self.target)


class PathPatching(_Strict):
    """The source run's signal from a sender (a position group's residual stream after a layer,
    an MLP's output or a head's output there) through one later head's queries, keys or values
    to the answer, the rest frozen to the target run as ``freeze`` says (Wang et al. 2022)."""

    kind: Literal["path_patching"]
    source: str = Field("clean", alias="from", description="The run the signal comes from.")
    target: str = Field("conflict", alias="into", description="The run it is patched into.")
    sender_group: PositionGroup = Field(
        "video", description="The positions at which the sender takes the source run's value."
    )
    senders: tuple[Literal["residual", "mlp", "heads"], ...] = Field(
        ("residual",),
        min_length=1,
        description="What sends, at each sender layer: residual (the whole residual stream "
        "after the layer), mlp (the layer's MLP output), heads (each of sender_heads' outputs).",
    )
    sender_layers: Literal["all"] | tuple[int, ...] = Field(
        "all", description="Layers whose components send. " + _LAYERS_DOC
    )
    sender_heads: Literal["all"] | tuple[int, ...] = Field(
        "all", description="With senders: heads — which query heads send (indices, 'a-b' ranges)."
    )
    receivers: tuple[Literal["queries", "keys", "values"], ...] = Field(
        ("values",),
        min_length=1,
        description="Which input of each receiving query head reads the sender's signal.",
    )
    receiver_layers: Literal["all"] | tuple[int, ...] = Field(
        "all", description="Layers whose heads receive it (later than the sender's). " + _LAYERS_DOC
    )
    freeze: Literal["attention", "attention+mlp"] = Field(
        "attention",
        description="What stays at the target run's value between sender and receiver: "
        "attention (every other attention head; MLPs and norms recomputed, as Wang et al. 2022 "
        "define path patching) or attention+mlp (MLPs too: only the residual stream carries the "
        "signal: patchwork's path patching before issue 27).",
    )

    _layers = field_validator("sender_layers", "receiver_layers", "sender_heads", mode="before")(
        _parse_layers
    )
    _unique = field_validator("senders", "receivers")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.source, self.target)


#: Largest multiple of a steering direction (the mean difference itself is 1).
MAX_ALPHA = 10_000.0


class Steering(_Strict):
    """Add a multiple of a direction to the residual stream and measure the answer, on clips held
    out from the direction's fit."""

    kind: Literal["steering"]
    run: str = Field("conflict", description="The run steered and measured.")
    source: str = Field(
        "clean",
        description="The direction at each layer is the mean over the fit samples of this run's "
        "residual stream (decoder layer output, averaged over the position group) minus that "
        "of `run`.",
    )
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    position_group: PositionGroup = Field(
        "answer", description="The positions the direction is measured at and added to."
    )
    alphas: tuple[float, ...] = Field(
        (0.0, 0.5, 1.0, 2.0),
        min_length=1,
        description="Multiples of the direction added (1: the mean difference itself).",
    )
    fit_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of the dataset's samples (drawn by execution.seed) the direction is "
        "fitted on; the others are steered and measured. A sample is never both.",
    )

    _layers = field_validator("layers", mode="before")(_parse_layers)

    @field_validator("alphas")
    @classmethod
    def _distinct_alphas(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(set(value)) != len(value) or not all(abs(a) <= MAX_ALPHA for a in value):
            raise ValueError(
                f"expected distinct numbers in [-{MAX_ALPHA:g}, {MAX_ALPHA:g}], got {list(value)}"
            )
        return value

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run, self.source)


class PluginIntervention(BaseModel):
    """An intervention of a method another package registers (entry point 'patchwork.methods'):
    its other keys are checked by that method's own ``spec_model`` when the study loads."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in plugins.names(plugins.METHODS):
            installed = ", ".join(plugins.names(plugins.METHODS))
            raise ValueError(f"unknown intervention kind; installed: {installed}")
        return kind

    @property
    def run_names(self) -> tuple[str, ...]:
        return ()


#: patchwork's own study kinds; any other kind is a plug-in's.
BUILT_IN_KINDS = {
    "activation_patching",
    "attention_knockout",
    "logit_lens",
    "attention_share",
    "probes",
    "base_comparison",
    "steering",
    "head_patching",
    "path_patching",
}


def _kind_tag(value: object) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return str(kind) if kind in BUILT_IN_KINDS else "plugin"


Intervention = Annotated[
    Annotated[ActivationPatching, Tag("activation_patching")]
    | Annotated[AttentionKnockout, Tag("attention_knockout")]
    | Annotated[LogitLens, Tag("logit_lens")]
    | Annotated[AttentionShare, Tag("attention_share")]
    | Annotated[Probes, Tag("probes")]
    | Annotated[BaseComparison, Tag("base_comparison")]
    | Annotated[Steering, Tag("steering")]
    | Annotated[HeadPatching, Tag("head_patching")]
    | Annotated[PathPatching, Tag("path_patching")]
    | Annotated[PluginIntervention, Tag("plugin")],
    Discriminator(_kind_tag),
]


class AnalysisSpec(_Strict):
    """How analyses of the normalized effect read the store (not part of the study hash: a
    finished store may be analysed under other settings)."""

    estimator: Literal["ratio_of_means", "mean_of_ratios"] = Field(
        "ratio_of_means",
        description="ratio_of_means: Σ(patched − conflict) / Σ(clean − conflict) over samples "
        "(each sample weighs by its gap); mean_of_ratios: the mean of per-sample normalized "
        "effects.",
    )
    min_relative_gap: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Samples whose clean − conflict gap is below this fraction of the median gap "
        "are left out of normalized-effect analyses (as are samples whose clean run does not "
        "prefer the audio answer or whose conflict run already does).",
    )


class Execution(_Strict):
    """How the sweep runs: batch of patched conditions per forward, samples per stored unit."""

    batch_size: int = Field(
        16, ge=1, le=65_536, description="Patched conditions per batched forward."
    )
    unit_size: int = Field(
        8, ge=1, le=1_000_000, description="Samples per work unit (= one store chunk)."
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of a run's random draws (noise-floor partners, steering's fit samples).",
    )
    threads: int = Field(
        1,
        ge=1,
        le=1024,
        description="torch CPU threads per process (each Dask worker too). 1 is fastest on a "
        "shared machine and no slower on an idle 2-core one (benchmarks/threads.py); raise it for "
        "large models on many idle cores. Not part of the study hash: a run may resume with "
        "another thread count.",
    )
    reuse: bool = Field(
        True,
        description="Patched runs start at the patched layer and position, reusing the target "
        "run's cached layer inputs, keys and values (exact; for adapters that support it).",
    )
    resources: dict[str, Annotated[float, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict,
        description="Dask worker resources each unit needs, e.g. {GPU: 1} (distributed runs).",
    )


class Study(_Strict):
    """A whole study file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    model: ModelSpec
    dataset: DatasetSpec
    runs: dict[str, RunSpec] = Field(
        default_factory=lambda: {
            "clean": RunSpec(audio="own", picture="blank"),
            "conflict": RunSpec(audio="own", picture="other_category"),
        }
    )
    question: str = "what do you hear"
    chat: ChatSpec = Field(default_factory=ChatSpec)
    inputs: InputsSpec = Field(default_factory=InputsSpec)
    interventions: tuple[Intervention, ...] = Field(min_length=1)
    metrics: tuple[Metric, ...] = Field(METRICS, min_length=1)
    execution: Execution = Field(default_factory=Execution)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    store: Path | None = Field(
        None, description="Where the store goes, under the store root; default <name>.zarr."
    )

    _source: Path | None = PrivateAttr(None)
    _text: str = PrivateAttr("")
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _overrides: tuple[str, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _runs_exist(self) -> Study:
        kinds = [intervention.kind for intervention in self.interventions]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each intervention kind may appear once; listed twice: {kinds}")
        for intervention in self.interventions:
            for run in intervention.run_names:
                if run not in self.runs:
                    raise ValueError(
                        f"intervention names run {run!r}, not one of {list(self.runs)}"
                    )
            if len(set(intervention.run_names)) != len(intervention.run_names):
                raise ValueError(
                    f"{intervention.kind}: the runs it compares must differ, got "
                    f"{list(intervention.run_names)}"
                )
        return self

    @property
    def patching(self) -> ActivationPatching:
        """The study's activation-patching intervention."""
        for intervention in self.interventions:
            if isinstance(intervention, ActivationPatching):
                return intervention
        raise ValueError("this study has no activation_patching intervention")

    @property
    def source_path(self) -> Path | None:
        """The file the study was read from (None when built in code)."""
        return self._source

    @property
    def text(self) -> str:
        """The study file's text, verbatim (stored as provenance)."""
        return self._text

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``key.path=value`` overrides applied on top of :attr:`text` (``--set``)."""
        return self._overrides

    def where(self, *field_path: str | int) -> str:
        """'file:line: field.path' for messages; the line of the nearest enclosing key known."""
        from patchwork.study.locations import format_location

        return format_location(self._source, self._lines, field_path)
