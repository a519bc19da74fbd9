"""Attention blocks as data: which query positions may not read which key positions, in which
decoder layers. Attention knockout is made of them, and so are the testbed's *planted access
windows* (:mod:`patchwork.testbed.windows`).

A :class:`BlockRule` names a query group, a key group and the layers where the pair is blocked.
Groups come from the token ids of each row (:func:`position_groups`): ``audio``, ``video``,
``image`` (placeholder tokens), ``text`` (every other position: markers, question, answer),
``answer`` (the last attended position) and ``all``.

:func:`install` adds a forward pre-hook on every decoder layer's ``self_attn`` that replaces the
layer's attention mask by one with the blocked pairs removed (never edited in place: eager shares
one mask object across layers), plus a pre-hook on the model that records the row's token ids.
With sdpa and no padding transformers passes no mask at all; the hook then builds the full causal
one. Hooks are plain PyTorch hooks, so they survive ``nnsight.NNsight`` wrapping and batching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from patchwork.models.attention import GROUPED_SDPA, IMPLEMENTATION

GROUPS = ("audio", "video", "image", "text", "answer", "all")


@dataclass(frozen=True)
class BlockRule:
    """Queries in group ``queries`` cannot attend keys in group ``keys`` in ``layers``."""

    queries: str
    keys: str
    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        for group in (self.queries, self.keys):
            if group not in GROUPS:
                raise ValueError(f"unknown position group {group!r}; expected one of {GROUPS}")


def modality_token_ids(config: Any) -> dict[str, int]:
    """Placeholder token ids of a Qwen2.5-Omni thinker config by group name."""
    return {
        "audio": config.audio_token_index,
        "video": config.video_token_index,
        "image": config.image_token_index,
    }


def position_groups(
    input_ids: torch.Tensor,
    token_ids: Mapping[str, int],
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean (batch, seq) masks of each :data:`GROUPS` member from ``input_ids`` (batch, seq)."""
    groups = {name: input_ids == token_ids[name] for name in ("audio", "video", "image")}
    groups["text"] = ~(groups["audio"] | groups["video"] | groups["image"])
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    if attention_mask is not None and attention_mask.shape == input_ids.shape:
        last = (attention_mask.bool() * (positions + 1)).argmax(dim=1)
    else:
        last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    groups["answer"] = positions[None, :] == last[:, None]
    groups["all"] = torch.ones_like(groups["text"])
    return groups


def blocked_pairs(
    rules: Iterable[BlockRule], groups: Mapping[str, torch.Tensor], layer: int, query_len: int
) -> torch.Tensor | None:
    """(batch, query_len, key_len) bool, True where ``layer`` blocks query→key; None if nothing.

    Queries are the last ``query_len`` positions (incremental decoding sees only new ones).
    """
    blocked = None
    for rule in rules:
        if layer not in rule.layers:
            continue
        pairs = groups[rule.queries][:, -query_len:, None] & groups[rule.keys][:, None, :]
        blocked = pairs if blocked is None else blocked | pairs
    return blocked


def mask_with_blocks(
    mask: torch.Tensor | None, blocked: torch.Tensor, additive: bool, dtype: torch.dtype
) -> torch.Tensor:
    """A new 4-D attention mask (batch, 1, query, key) equal to ``mask`` with ``blocked`` removed.

    ``mask`` may be None (meaning plain causal), boolean (True = may attend) or additive float
    (0 = may attend); ``additive`` says which kind to build when ``mask`` is None.
    """
    blocked = blocked[:, None]
    if mask is None:
        query_len, key_len = blocked.shape[-2:]
        offset = key_len - query_len
        causal = torch.ones(query_len, key_len, dtype=torch.bool, device=blocked.device)
        causal = causal.tril(offset)
        allowed = causal[None, None] & ~blocked
        if not additive:
            return allowed
        zeros = torch.zeros((), dtype=dtype, device=blocked.device)
        return torch.where(allowed, zeros, torch.finfo(dtype).min)
    if mask.dtype == torch.bool:
        return mask & ~blocked
    return torch.where(blocked, torch.finfo(mask.dtype).min, mask)


def with_blocked_mask(
    module: nn.Module, kwargs: dict, blocked: torch.Tensor, hidden: torch.Tensor
) -> dict:
    """An attention module's keyword arguments with ``blocked`` (batch, query, key) pairs removed
    from its mask, for sdpa or eager attention (a new mask: eager shares one across layers), and
    for patchwork's recorded attention (eager's additive masks) and grouped sdpa."""
    implementation = getattr(module.config, "_attn_implementation", "sdpa")
    if implementation not in ("sdpa", "eager", IMPLEMENTATION, GROUPED_SDPA):
        raise RuntimeError(f"attention blocks support sdpa and eager, not {implementation}")
    return {
        **kwargs,
        "attention_mask": mask_with_blocks(
            kwargs.get("attention_mask"),
            blocked.to(hidden.device),
            additive=implementation in ("eager", IMPLEMENTATION),
            dtype=hidden.dtype,
        ),
    }


class AttentionBlocks:
    """Installed blocking hooks on one model; :meth:`remove` takes them off again."""

    def __init__(self, model: nn.Module, rules: Sequence[BlockRule], token_ids: Mapping[str, int]):
        self.rules = tuple(rules)
        self.token_ids = dict(token_ids)
        self._groups: dict[str, torch.Tensor] | None = None
        self._ids: torch.Tensor | None = None
        self._handles = [model.register_forward_pre_hook(self._record_ids, with_kwargs=True)]
        for index, layer in enumerate(decoder_layers(model)):
            self._handles.append(
                layer.self_attn.register_forward_pre_hook(self._hook_for(index), with_kwargs=True)
            )
        model._patchwork_attention_blocks = self  # type: ignore[assignment]

    def _record_ids(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise RuntimeError("planted attention windows need input_ids on every forward")
        cache = kwargs.get("cache")
        cached = cache.get_seq_length() if cache is not None else 0
        if cached and self._ids is not None and self._ids.shape[1] == cached:
            input_ids = torch.cat([self._ids, input_ids], dim=1)
        self._ids = input_ids
        mask = kwargs.get("attention_mask")
        self._groups = position_groups(input_ids, self.token_ids, mask)

    def _hook_for(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if self._groups is None:
                return args, kwargs
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if hidden is None:
                return args, kwargs
            blocked = blocked_pairs(self.rules, self._groups, layer, hidden.shape[1])
            if blocked is None:
                return args, kwargs
            return args, with_blocked_mask(module, kwargs, blocked, hidden)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def decoder_layers(model: Any) -> Any:
    """The decoder layers of a Qwen2.5-Omni thinker (or of the full model's thinker)."""
    root = getattr(model, "thinker", model)
    return root.model.language_model.layers


def install(
    model: nn.Module, rules: Sequence[BlockRule], token_ids: Mapping[str, int]
) -> AttentionBlocks:
    """Make ``rules`` active on every forward of ``model`` (training and inference alike)."""
    return AttentionBlocks(model, rules, token_ids)
