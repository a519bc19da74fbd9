"""Attention blocks as data: which query positions may not read which key positions, in which
decoder layers. Attention knockout is made of them, and so are the testbed's *planted access
windows* (:mod:`patchwork.testbed.windows`).

A :class:`BlockRule` names a query group, a key group and the layers where the pair is blocked,
and optionally the query heads that block it (the others still attend: a per-head mask).
Groups come from the token ids of each row (:func:`position_groups`), one vocabulary for every
path (study methods, planted windows, generation): ``audio``, ``video``, ``image`` (placeholder
tokens), ``answer`` (the last prompt position: the query whose logits give the first generated
token), ``text`` (every other prompt position: markers and question), ``generated`` (tokens
generated after the prompt; empty in a prefill) and ``all``. A rule blocks a position from itself
only with ``keep_self=False``; a query left without any key keeps itself (no NaN rows).

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

GROUPS = ("audio", "video", "image", "text", "answer", "generated", "all")


@dataclass(frozen=True)
class BlockRule:
    """Queries in group ``queries`` cannot attend keys in group ``keys`` in ``layers``, through
    the query heads ``heads`` (None: every head)."""

    queries: str
    keys: str
    layers: tuple[int, ...]
    keep_self: bool = True
    heads: tuple[int, ...] | None = None

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
    prompt_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean (batch, seq) masks of each :data:`GROUPS` member from ``input_ids`` (batch, seq);
    positions from ``prompt_length`` on (default: none) are ``generated``."""
    groups = {name: input_ids == token_ids[name] for name in ("audio", "video", "image")}
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    prompt = positions < (input_ids.shape[1] if prompt_length is None else prompt_length)
    prompt = prompt[None, :].expand_as(input_ids)
    if attention_mask is not None and attention_mask.shape == input_ids.shape:
        last = (attention_mask.bool() & prompt).long().mul(positions + 1).argmax(dim=1)
    else:
        last = prompt.long().mul(positions + 1).argmax(dim=1)
    groups["answer"] = positions[None, :] == last[:, None]
    modality = groups["audio"] | groups["video"] | groups["image"]
    groups["text"] = prompt & ~modality & ~groups["answer"]
    groups["generated"] = ~prompt
    groups["all"] = torch.ones_like(prompt)
    return groups


def blocked_pairs(
    rules: Iterable[BlockRule],
    groups: Mapping[str, torch.Tensor],
    layer: int,
    query_len: int,
    num_heads: int | None = None,
) -> torch.Tensor | None:
    """(batch, query_len, key_len) bool, True where ``layer`` blocks query→key; None if nothing.
    When a rule of ``layer`` names heads: (batch, num_heads, query_len, key_len), one per query
    head.

    Queries are the last ``query_len`` positions (incremental decoding sees only new ones).
    """
    active = [rule for rule in rules if layer in rule.layers]
    if not active:
        return None
    per_head = any(rule.heads is not None for rule in active)
    if per_head and num_heads is None:
        raise ValueError("rules that name heads need num_heads")
    blocked = None
    for rule in active:
        pairs = groups[rule.queries][:, -query_len:, None] & groups[rule.keys][:, None, :]
        if rule.keep_self:
            key_len = pairs.shape[-1]
            pairs = pairs & ~torch.eye(key_len, dtype=torch.bool, device=pairs.device)[-query_len:]
        if per_head:
            chosen = torch.zeros(num_heads or 0, dtype=torch.bool, device=pairs.device)
            chosen[list(range(num_heads or 0)) if rule.heads is None else list(rule.heads)] = True
            pairs = pairs[:, None] & chosen[None, :, None, None]
        blocked = pairs if blocked is None else blocked | pairs
    return blocked


def mask_with_blocks(
    mask: torch.Tensor | None, blocked: torch.Tensor, additive: bool, dtype: torch.dtype
) -> torch.Tensor:
    """A new 4-D attention mask (batch, 1, query, key) equal to ``mask`` with ``blocked``
    (batch, query, key) removed — or (batch, heads, query, key) for a ``blocked`` of one mask
    per head; a query left without any key keeps itself.

    ``mask`` may be None (meaning plain causal), boolean (True = may attend) or additive float
    (0 = may attend); ``additive`` says which kind to build when ``mask`` is None.
    """
    blocked = blocked if blocked.ndim == 4 else blocked[:, None]
    query_len, key_len = blocked.shape[-2:]
    itself = torch.eye(key_len, dtype=torch.bool, device=blocked.device)[-query_len:]
    if mask is None:
        causal = torch.ones(query_len, key_len, dtype=torch.bool, device=blocked.device)
        before = causal.tril(key_len - query_len)[None, None]
    elif mask.dtype == torch.bool:
        before = mask
    else:
        before = mask > torch.finfo(mask.dtype).min / 2
    allowed = before & ~blocked
    allowed = allowed | (itself & ~allowed.any(-1, keepdim=True))
    if mask is not None and mask.dtype == torch.bool:
        return allowed
    if mask is not None:
        return torch.where(allowed, mask, torch.finfo(mask.dtype).min)
    if not additive:
        return allowed
    zeros = torch.zeros((), dtype=dtype, device=blocked.device)
    return torch.where(allowed, zeros, torch.finfo(dtype).min)


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
        self._prompt_length: int | None = None
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
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        cached = cache.get_seq_length() if cache is not None else 0
        if cached and self._ids is not None and self._ids.shape[1] == cached:
            self._observe(torch.cat([self._ids, input_ids], dim=1), kwargs.get("attention_mask"))
        else:  # a prefill (or a training forward): the whole input is the prompt
            self.observe(input_ids, kwargs.get("attention_mask"))

    def observe(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """The runs that follow are of the prompt ``input_ids`` (batch, seq)."""
        self._prompt_length = input_ids.shape[1]
        self._observe(input_ids, mask)

    def _observe(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        self._ids = input_ids
        self._groups = position_groups(input_ids, self.token_ids, mask, self._prompt_length)

    def _hook_for(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if self._groups is None:
                return args, kwargs
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if hidden is None:
                return args, kwargs
            blocked = blocked_pairs(
                self.rules, self._groups, layer, hidden.shape[1], _query_heads(module)
            )
            if blocked is None:
                return args, kwargs
            return args, with_blocked_mask(module, kwargs, blocked, hidden)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _query_heads(attention: nn.Module) -> int | None:
    config = getattr(attention, "config", None)
    return getattr(config, "num_attention_heads", None)


def observe_prompt(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Tell the blocks installed on ``model``, if any, that the runs that follow are of the
    prompt ``input_ids``, when no forward of ``model`` tells them (resumed patched runs call its
    decoder layers directly)."""
    installed = getattr(model, "_patchwork_attention_blocks", None)
    if installed is not None:
        installed.observe(input_ids)


def decoder_layers(model: Any) -> Any:
    """The decoder layers of a Qwen2.5-Omni thinker (or of the full model's thinker)."""
    root = getattr(model, "thinker", model)
    return root.model.language_model.layers


def install(
    model: nn.Module, rules: Sequence[BlockRule], token_ids: Mapping[str, int]
) -> AttentionBlocks:
    """Make ``rules`` active on every forward of ``model`` (training and inference alike)."""
    return AttentionBlocks(model, rules, token_ids)
