"""Head-level activation patching: each attention head's output before the output projection.

A decoder layer's attention computes, per query head ``h``, a context vector (seq, head_dim); the
output projection ``o_proj`` reads their concatenation (seq, heads × head_dim) and mixes them.
Patching head ``h`` replaces its slice of ``o_proj``'s input with the source run's at a position
group's positions. Query heads are the unit: under grouped-query attention several query heads
share one key/value head, but each has its own context vector, so each is patched alone (its
shared keys and values stay the target run's).

Conditions travel as rows of one batched forward of the target run, as in
:mod:`patchwork.patching.patcher`; a forward pre-hook on every patched layer's ``o_proj`` writes
the rows' heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.errors import ModelError
from patchwork.models.adapter import ModelAdapter

#: layer → the output projection's input of one run, (seq, heads, head_dim).
HeadActivations = dict[int, torch.Tensor]


@dataclass(frozen=True)
class HeadCondition:
    """One patched cell: head ``head`` of ``layer`` at the positions of ``position_group``."""

    layer: int
    head: int
    position_group: str


def output_projection(adapter: ModelAdapter, layer: int) -> nn.Linear:
    """The attention output projection (``o_proj``) of decoder layer ``layer``."""
    try:
        projection = adapter.component(adapter.root, layer, "heads")
    except AttributeError:
        projection = None
    if not isinstance(projection, nn.Linear):
        raise ModelError(
            f"the {adapter.family} adapter's attention at layer {layer} has no linear o_proj; "
            "head patching reads each head's output at its input"
        )
    return projection


def head_count(adapter: ModelAdapter) -> int:
    """Query heads per layer (the text config's ``num_attention_heads``)."""
    config = getattr(adapter.config, "text_config", adapter.config)
    heads = int(config.num_attention_heads)
    width = output_projection(adapter, 0).in_features
    if width % heads:
        raise ModelError(f"o_proj reads {width} features, not a multiple of {heads} heads")
    return heads


def _one_run(hidden: torch.Tensor, heads: int) -> torch.Tensor:
    return hidden.reshape(*hidden.shape[:-1], heads, hidden.shape[-1] // heads)


def record_heads(
    adapter: ModelAdapter, inputs: ModelInputs, layers: Iterable[int]
) -> tuple[torch.Tensor, HeadActivations]:
    """One run: answer logits (1, vocab) and each layer's head outputs (seq, heads, head_dim)."""
    heads, saved = head_count(adapter), {}

    def keep(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            saved[layer] = _one_run(args[0][0].detach().clone(), heads)

        return hook

    with ExitStack() as stack, torch.no_grad():
        for layer in set(layers):
            handle = output_projection(adapter, layer).register_forward_pre_hook(keep(layer))
            stack.callback(handle.remove)
        logits = adapter.root(**adapter.forward_kwargs(inputs)).logits
    return adapter.answer_logits(logits), saved


def with_head_edits(
    adapter: ModelAdapter,
    target: ModelInputs,
    rows: int,
    edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """Answer logits (rows, vocab) of the target run repeated ``rows`` times, the heads' outputs
    (rows, seq, heads, head_dim) of each layer in ``edits`` passed through its edit before the
    output projection reads them."""
    heads = head_count(adapter)

    def write(edit: Callable[[torch.Tensor], torch.Tensor]):
        def hook(module: nn.Module, args: tuple) -> tuple[Any, ...]:
            return (edit(_one_run(args[0], heads)).flatten(-2), *args[1:])

        return hook

    batch = adapter.forward_kwargs(adapter.repeat_inputs(target, rows))
    with ExitStack() as stack, torch.no_grad():
        for layer, edit in edits.items():
            handle = output_projection(adapter, layer).register_forward_pre_hook(write(edit))
            stack.callback(handle.remove)
        logits = adapter.root(**batch).logits
    return adapter.answer_logits(logits)


def patched_heads(
    adapter: ModelAdapter,
    target: ModelInputs,
    source: HeadActivations,
    conditions: Sequence[HeadCondition],
    group_masks: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Answer logits (len(conditions), vocab) of the target run, one condition patched per row."""
    heads, rows = head_count(adapter), len(conditions)
    masks: dict[int, torch.Tensor] = {}
    for row, condition in enumerate(conditions):
        if condition.layer not in masks:
            seq_len = group_masks[condition.position_group].numel()
            masks[condition.layer] = torch.zeros(rows, seq_len, heads, 1, dtype=torch.bool)
        positions = group_masks[condition.position_group]
        masks[condition.layer][row, positions, condition.head] = True

    def patch(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            mask = masks[layer].to(hidden.device)
            return torch.where(mask, source[layer].to(hidden.dtype), hidden)

        return edit

    return with_head_edits(adapter, target, rows, {layer: patch(layer) for layer in masks})
