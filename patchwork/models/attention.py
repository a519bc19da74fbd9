"""Decoder attention implementations patchwork switches in, for any family whose attention modules
dispatch through transformers' ``AttentionInterface``: recorded attention, which shows its queries,
keys and probabilities, and grouped sdpa for resumed patched runs.

Attribution patching's attention-softmax correction (AtP*) needs, for every decoder layer, the
rotated queries and keys, the mask and the probabilities of the target run, with their gradients,
and the queries and keys a changed residual would give. Inside :func:`recorded_attention` the
decoder's attention runs as plain eager attention (the same function of q, k, v and mask as sdpa or
eager: the logits equal the model's own to float rounding) and records them; :func:`project` reads
the queries and keys of arbitrary hidden states through a layer's own norm, projections, q/k norms
and rotary embedding, without running attention.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from patchwork.errors import ModelError

#: The attention implementation names patchwork registers with transformers.
IMPLEMENTATION = "patchwork_recorded"
GROUPED_SDPA = "patchwork_grouped_sdpa"


@dataclass
class AttentionRecord:
    """One decoder layer's attention in one forward (batch of one)."""

    query: torch.Tensor  # (1, heads, seq, head_dim), after q-norm and rotary
    key: torch.Tensor  # (1, kv_heads, seq, head_dim), after k-norm and rotary
    mask: torch.Tensor | None  # additive (1, 1, seq, seq), None for plain causal
    scaling: float
    probs: torch.Tensor  # (1, heads, seq, seq)


class _Projected(Exception):
    """Stops an attention module once its queries and keys are known."""


class _Recorder(threading.local):
    records: dict[int, AttentionRecord] | None = None
    projected: tuple[torch.Tensor, torch.Tensor] | None = None
    projecting = False


_recorder = _Recorder()


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _recorder.projecting:
        _recorder.projected = (query, key)
        raise _Projected
    if kwargs.get("softcap") is not None:
        raise ModelError("recorded attention does not support logit soft-capping")
    groups = query.shape[1] // key.shape[1]
    keys = key.repeat_interleave(groups, dim=1)
    values = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, keys.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : keys.shape[-2]]
    precision = torch.promote_types(query.dtype, torch.float32)  # as eager: fp32 for halves
    probs = torch.softmax(scores, dim=-1, dtype=precision).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    if _recorder.records is not None:
        if probs.requires_grad:
            for tensor in (query, key, probs):
                tensor.retain_grad()
        _recorder.records[int(module.layer_idx)] = AttentionRecord(  # type: ignore[arg-type]
            query, key, attention_mask, scaling, probs
        )
    return torch.matmul(probs, values).transpose(1, 2).contiguous(), probs


def _grouped_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa for grouped-query attention under a mask, without a copy of the keys and values per
    query head (transformers' sdpa makes one whenever a mask is given): the query heads that share
    a key head are stacked along the query axis, the mask tiled with them (or, for a mask of one
    per query head, stacked the same way)."""
    rows, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    if attention_mask is None:
        offset = key.shape[-2] - length
        causal = torch.ones(length, key.shape[-2], dtype=torch.bool, device=query.device)
        attention_mask = causal.tril(offset)[None, None]
    mask = attention_mask[..., : key.shape[-2]]
    if mask.stride(0) == 0:  # one mask expanded over the rows: keep it one
        mask = mask[:1]
    stacked = query.reshape(rows, key.shape[1], groups * length, dim)
    if mask.shape[1] == heads and heads > 1:  # one mask per query head
        stacked_mask = mask.reshape(mask.shape[0], key.shape[1], groups * length, -1)
    else:
        stacked_mask = mask.repeat(1, 1, groups, 1)
    output = nn.functional.scaled_dot_product_attention(
        stacked,
        key,
        value,
        attn_mask=stacked_mask,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
    )
    return output.reshape(rows, heads, length, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, _attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)
AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)


def decoder_implementation(adapter: Any) -> str:
    """The attention implementation the decoder runs now (e.g. 'sdpa', 'eager')."""
    return adapter.component(adapter.root, 0, "attention").config._attn_implementation


@contextmanager
def decoder_attention(adapter: Any, implementation: str) -> Iterator[None]:
    """The decoder's attention runs ``implementation`` inside the block (the encoders keep
    their own). Models share one config object between their decoder layers' attention."""
    config = adapter.component(adapter.root, 0, "attention").config
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before


@contextmanager
def recorded_attention(adapter: Any) -> Iterator[dict[int, AttentionRecord]]:
    """Inside the block the decoder's attention records each layer's :class:`AttentionRecord`
    (the live tensors: gradients of a backward pass inside the block reach them) into the
    yielded dict, keyed by layer index."""
    records: dict[int, AttentionRecord] = {}
    _recorder.records = records
    try:
        with decoder_attention(adapter, IMPLEMENTATION):
            yield records
    finally:
        _recorder.records = None


def project(
    adapter: Any,
    layer: int,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (rows, heads, n, head_dim) and keys (rows, kv_heads, n, head_dim) that decoder
    layer ``layer`` computes from residual inputs ``hidden`` (rows, n, hidden) at positions
    whose rotary embeddings are ``position_embeddings`` ((rows, n, dim) each).

    Uses the layer's attention-input norm (the adapter's ``attention_norm_name``) and the attention
    module's own forward, stopped before attention proper; hooks are not run.
    """
    norm_name = adapter.attention_norm_name
    if norm_name is None:
        raise ModelError(f"the {adapter.family} adapter cannot project queries and keys")
    decoder_layer = adapter.layer(adapter.root, layer)
    attention = adapter.component(adapter.root, layer, "attention")
    _recorder.projecting = True
    try:
        with decoder_attention(adapter, IMPLEMENTATION):
            attention.forward(
                hidden_states=getattr(decoder_layer, norm_name)(hidden),
                attention_mask=None,
                position_embeddings=position_embeddings,
            )
    except _Projected:
        assert _recorder.projected is not None
        return _recorder.projected
    finally:
        _recorder.projecting = False
        _recorder.projected = None
    raise ModelError(f"layer {layer}'s attention did not go through the attention interface")
