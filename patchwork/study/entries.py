"""patchwork's own study entries, one pydantic model per intervention ``kind``.

Each is registered under the entry-point group ``patchwork.entries`` in ``pyproject.toml``,
exactly as a plug-in registers its own entry model in its package (and its method under
``patchwork.methods``, its report under ``patchwork.reports``): the study schema
(:mod:`patchwork.study.schema`) builds its list of interventions from that group and names no
kind itself. An entry model imports no torch, so ``patchwork validate --schema-only`` stays
instant.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from patchwork.study.specs import (
    COMPONENTS,
    MAX_LAYER_INDEX,
    Component,
    KnockoutGroup,
    ModelSpec,
    PositionGroup,
    Strict,
    parse_layers,
)


class ActivationPatching(Strict):
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

    _layers = field_validator("layers", mode="before")(parse_layers)

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


class KnockoutRule(Strict):
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

    _layers = field_validator("layers", mode="before")(parse_layers)
    _groups = field_validator("queries", "keys")(_unique_groups)

    @field_validator("heads", mode="before")
    @classmethod
    def _heads(cls, value: object) -> object:
        return value if value in ("all", "each") else parse_layers(value)


class AttentionKnockout(Strict):
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


class LogitLens(Strict):
    """Read residual streams through the (normed) unembedding, layer by layer."""

    kind: Literal["logit_lens"]
    run: str = Field("conflict", description="The run whose residual streams are read.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    position_groups: tuple[PositionGroup, ...] = Field(("audio", "answer"), min_length=1)
    final_norm: bool = Field(True, description="Apply the final norm before the unembedding.")
    top_k: int = Field(5, ge=1, le=100, description="How many top token ids to store.")

    _layers = field_validator("layers", mode="before")(parse_layers)
    _groups = field_validator("position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run,)


class AttentionShare(Strict):
    """Fraction of attention mass from query groups to key groups, per layer and head."""

    kind: Literal["attention_share"]
    run: str = Field("conflict", description="The run whose attention is read.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    queries: tuple[PositionGroup, ...] = Field(("answer", "text"), min_length=1)
    keys: tuple[PositionGroup, ...] = Field(
        ("audio", "video", "image", "text", "answer"), min_length=1
    )

    _layers = field_validator("layers", mode="before")(parse_layers)
    _groups = field_validator("queries", "keys")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run,)


class Probes(Strict):
    """Store pooled residual features per layer and position group for linear probes."""

    kind: Literal["probes"]
    run: str = Field("conflict", description="The run whose residual streams are stored.")
    layers: Literal["all"] | tuple[int, ...] = Field("all", description=_LAYERS_DOC)
    position_groups: tuple[PositionGroup, ...] = Field(("audio", "text", "answer"), min_length=1)

    _layers = field_validator("layers", mode="before")(parse_layers)
    _groups = field_validator("position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.run,)


class BaseComparison(Strict):
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


class HeadPatching(Strict):
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

    _layers = field_validator("layers", "heads", mode="before")(parse_layers)
    _groups = field_validator("position_groups")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.source, self.target)


class PathPatching(Strict):
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
        parse_layers
    )
    _unique = field_validator("senders", "receivers")(_unique_groups)

    @property
    def run_names(self) -> tuple[str, ...]:
        return (self.source, self.target)


#: Largest multiple of a steering direction (the mean difference itself is 1).
MAX_ALPHA = 10_000.0


class Steering(Strict):
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

    _layers = field_validator("layers", mode="before")(parse_layers)

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
