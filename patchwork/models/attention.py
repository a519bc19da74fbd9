"""Decoder attention that shows its queries, keys and probabilities, for any family whose attention
modules dispatch through transformers' ``AttentionInterface``.

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

#: The attention implementation name patchwork registers with transformers.
IMPLEMENTATION = "patchwork_recorded"


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


AttentionInterface.register(IMPLEMENTATION, _attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)


def _decoder_attention_config(adapter: Any) -> Any:
    return adapter.component(adapter.root, 0, "attention").config


@contextmanager
def recorded_attention(adapter: Any) -> Iterator[dict[int, AttentionRecord]]:
    """Inside the block the decoder's attention records each layer's :class:`AttentionRecord`
    (the live tensors: gradients of a backward pass inside the block reach them) into the
    yielded dict, keyed by layer index. The encoders keep their own implementation."""
    config = _decoder_attention_config(adapter)
    before = config._attn_implementation
    records: dict[int, AttentionRecord] = {}
    config._attn_implementation = IMPLEMENTATION
    _recorder.records = records
    try:
        yield records
    finally:
        _recorder.records = None
        config._attn_implementation = before


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
    norm_name = getattr(adapter, "attention_norm_name", None)
    if norm_name is None:
        raise ModelError(f"the {adapter.family} adapter cannot project queries and keys")
    decoder_layer = adapter.layer(adapter.root, layer)
    attention = adapter.component(adapter.root, layer, "attention")
    config = attention.config
    before = config._attn_implementation
    config._attn_implementation = IMPLEMENTATION
    _recorder.projecting = True
    try:
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
        config._attn_implementation = before
    raise ModelError(f"layer {layer}'s attention did not go through the attention interface")
