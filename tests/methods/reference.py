"""Independent plain-torch computations of the issue-6 methods on a Qwen2.5-Omni thinker.

Shares nothing with patchwork but the model's weights: attention is recomputed by hand from
q/k/v projections and rotary embeddings (a forward hook replaces each attention's output), with a
boolean mask of allowed pairs; the final norm is an explicit RMS norm; one forward per condition.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def layers_of(thinker: nn.Module) -> nn.ModuleList:
    return thinker.model.language_model.layers


def groups_of(input_ids: torch.Tensor, config) -> dict[str, torch.Tensor]:
    """(seq,) masks; the answer is the last position, text every other non-modality position."""
    ids = input_ids.reshape(-1)
    groups = {
        "audio": ids == config.audio_token_index,
        "video": ids == config.video_token_index,
        "image": ids == config.image_token_index,
    }
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[-1] = True
    groups["text"] = ~(groups["audio"] | groups["video"] | groups["image"] | answer)
    groups["answer"] = answer
    groups["all"] = torch.ones_like(answer)
    return groups


def _rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def manual_attention(
    module: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    blocked: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (1, seq, hidden) and probabilities (1, heads, seq, seq) of one attention module."""
    _, seq, _ = hidden.shape
    dim = module.head_dim
    q = module.q_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
    k = module.k_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
    v = module.v_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
    q = q * cos[:, None] + _rotate(q) * sin[:, None]
    k = k * cos[:, None] + _rotate(k) * sin[:, None]
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = q @ k.transpose(-1, -2) / dim**0.5
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril()
    if blocked is not None:
        allowed = allowed & ~blocked  # (seq, seq) or one mask per head (heads, seq, seq)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(1, seq, -1)
    return module.o_proj(out), weights


def forward_by_hand(
    thinker: nn.Module,
    inputs: Mapping,
    blocked: Mapping[int, torch.Tensor] | None = None,
    keep: Mapping[int, nn.Module] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Logits (seq, vocab) with every attention recomputed by hand (``blocked``: layer → (seq,
    seq) pairs removed), the attention probabilities (heads, seq, seq) and layer outputs
    (seq, hidden) by layer."""
    blocked = blocked or {}
    weights: dict[int, torch.Tensor] = {}
    residual: dict[int, torch.Tensor] = {}
    captured: dict[int, tuple] = {}
    handles = []
    for index, layer in enumerate(layers_of(thinker)):

        def grab(module, args, kwargs, index=index):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            captured[index] = (hidden, *kwargs["position_embeddings"])

        def replace(module, args, output, index=index):
            hidden, cos, sin = captured[index]
            out, probs = manual_attention(module, hidden, cos, sin, blocked.get(index))
            weights[index] = probs[0]
            return (out, probs)

        def save(module, args, output, index=index):
            residual[index] = (output[0] if isinstance(output, tuple) else output)[0]

        handles.append(layer.self_attn.register_forward_pre_hook(grab, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(replace))
        handles.append(layer.register_forward_hook(save))
    try:
        with torch.no_grad():
            logits = thinker(**inputs).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    return logits, weights, residual


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return norm.weight * (x * torch.rsqrt(variance + norm.variance_epsilon))
