"""Partial forwards: exact patched runs that recompute only what a patch can change.

A patch at layer ``l`` on positions starting at ``p`` leaves every layer below ``l`` and every
position before ``p`` as they were in the target run. So a batch of patched conditions that share
their first patched position ``p`` starts at the lowest patched layer ``l0`` from the target run's
cached input to that layer, computes only positions ``p …`` and reads the keys and values of
positions ``… p-1`` from the target run's cache. The answer logits equal a full forward's to float
rounding (tested against plain forward hooks).

Works for decoders whose layers follow transformers' convention ``layer(hidden, attention_mask,
position_embeddings, cache, …)`` with rotary ``(cos, sin)`` of shape (batch, seq, dim) and a cache
whose ``update(keys, values, layer_idx)`` returns the keys and values to attend — adapters opt in
with ``supports_resume``. Runs with padding fall back to full traces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.models.adapter import ModelAdapter, _attribute
from patchwork.models.attention import GROUPED_SDPA, decoder_attention, decoder_implementation
from patchwork.models.blocks import observe_prompt
from patchwork.patching.heads import head_count, output_projection
from patchwork.patching.patcher import Activations, Condition


@dataclass
class TargetCache:
    """What a patched batch reuses from the target run (batch of one)."""

    layer_inputs: list[torch.Tensor]  # per layer: (1, seq, hidden)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (1, seq, dim) each
    keys: list[torch.Tensor]  # per layer: (1, kv_heads, seq, head_dim)
    values: list[torch.Tensor]
    answer_logits: torch.Tensor  # (1, vocab)
    activations: Activations  # the target's own, at the sites asked for: (seq, hidden) each
    input_ids: torch.Tensor  # (1, seq): planted attention blocks read the groups from them


class _PrefixCache:
    """A cache that serves the target run's keys/values of positions before ``start``."""

    def __init__(self, cache: TargetCache, start: int, rows: int) -> None:
        self.cache, self.start, self.rows = cache, start, rows

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prefix_keys = self.cache.keys[layer_idx][:, :, : self.start].expand(self.rows, -1, -1, -1)
        prefix_values = self.cache.values[layer_idx][:, :, : self.start]
        prefix_values = prefix_values.expand(self.rows, -1, -1, -1)
        return torch.cat([prefix_keys, keys], dim=2), torch.cat([prefix_values, values], dim=2)


def first_position(mask: torch.Tensor) -> int:
    """First position of a group's (seq,) mask; its length when the group is empty."""
    return int(mask.nonzero()[0]) if bool(mask.any()) else int(mask.numel())


class ResumePatcher:
    """Patched runs that start at the patched layer and position (see module docstring)."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        root = adapter.root
        self.layers: nn.ModuleList = _attribute(root, adapter.layers_path)
        self.norm: nn.Module = _attribute(root, adapter.final_norm_path)
        self.unembed: nn.Module = _attribute(root, adapter.unembed_path)

    @staticmethod
    def applicable(adapter: ModelAdapter, inputs: ModelInputs) -> bool:
        """True when this adapter opts in, the run has no padding and no decoder layer attends
        through a sliding window shorter than the run (the resumed layers use a full causal
        mask; such runs take full traces, which transformers masks itself)."""
        mask = inputs.get("attention_mask")
        no_padding = mask is None or bool(mask.all())
        text = getattr(adapter.config, "text_config", adapter.config)
        window = getattr(text, "sliding_window", None)
        sliding = "sliding_attention" in (getattr(text, "layer_types", None) or ())
        windowed = sliding and window is not None and inputs["input_ids"].shape[-1] > window
        return adapter.supports_resume and no_padding and not windowed

    def prepare(self, target: ModelInputs, sites: Iterable[tuple[int, str]] = ()) -> TargetCache:
        """One full forward of the target run, keeping each layer's input, the rotary position
        embeddings, every layer's keys and values and the activations at ``sites``."""
        layer_inputs: list[torch.Tensor] = [torch.empty(0)] * len(self.layers)
        rotary: dict[str, Any] = {}
        activations: Activations = {}

        def record(site: tuple[int, str]):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                activations[site] = self.adapter.output_tensor(site[1], output)[0].detach()

            return hook

        def record_input(site: tuple[int, str]):
            def hook(module: nn.Module, args: tuple) -> None:
                activations[site] = args[0][0].detach()

            return hook

        def keep(index: int):
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                layer_inputs[index] = hidden.detach()
                rotary.setdefault("value", kwargs["position_embeddings"])

            return hook

        handles = [
            layer.register_forward_pre_hook(keep(index), with_kwargs=True)
            for index, layer in enumerate(self.layers)
        ]
        for site in set(sites):  # where patching reads it: a module's output or input
            module, where = self.adapter.site(self.adapter.root, *site)
            if where == "input":
                handles.append(module.register_forward_pre_hook(record_input(site)))
            else:
                handles.append(module.register_forward_hook(record(site)))
        try:
            with torch.no_grad():
                output = self.adapter.root(**self.adapter.forward_kwargs(target), use_cache=True)
        finally:
            for handle in handles:
                handle.remove()
        cache = output.cache if hasattr(output, "cache") else output.past_key_values
        cos, sin = rotary["value"]
        return TargetCache(
            layer_inputs=layer_inputs,
            position_embeddings=(cos.detach(), sin.detach()),
            keys=[layer.keys for layer in cache.layers],
            values=[layer.values for layer in cache.layers],
            answer_logits=self.adapter.answer_logits(output.logits),
            activations=activations,
            input_ids=target["input_ids"],
        )

    def patched(
        self,
        cache: TargetCache,
        source: Activations,
        conditions: Sequence[Condition],
        group_masks: Mapping[str, torch.Tensor],
        starts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Answer logits (len(conditions), vocab), rows in the order of ``conditions``.

        ``starts``: each condition's first patched position, if later than its group's first
        (positions before it must hold the target's own activations: they are not patched).
        """
        seq_len = cache.layer_inputs[0].shape[1]
        if starts is None:
            starts = [first_position(group_masks[c.position_group]) for c in conditions]
        logits: list[torch.Tensor | None] = [None] * len(conditions)
        for row, start in enumerate(starts):
            if start == seq_len:  # an empty group patches nothing
                logits[row] = cache.answer_logits[0]
        for start in sorted(set(starts) - {seq_len}):
            rows = [i for i, s in enumerate(starts) if s == start]
            batch = self._run(cache, source, [conditions[i] for i in rows], group_masks, start)
            for row, value in zip(rows, batch, strict=True):
                logits[row] = value
        return torch.stack([value for value in logits if value is not None])

    def _run(
        self,
        cache: TargetCache,
        source: Activations,
        conditions: Sequence[Condition],
        group_masks: Mapping[str, torch.Tensor],
        start: int,
    ) -> torch.Tensor:
        """Rows sharing their first patched position; each row joins the batch at its own first
        patched layer, so no row computes a layer below its patch."""
        order = sorted(range(len(conditions)), key=lambda row: min(conditions[row].layers))
        joins = [min(conditions[row].layers) for row in order]
        rows, seq_len = len(order), cache.layer_inputs[0].shape[1]
        masks: dict[tuple[int, str], torch.Tensor] = {}
        for slot, row in enumerate(order):
            condition = conditions[row]
            for layer in condition.layers:
                site = (layer, condition.component)
                # heads: one column block of the output projection's input per query head
                width = source[site].shape[-1] if condition.head is not None else 1
                if site not in masks:
                    masks[site] = torch.zeros(rows, seq_len - start, width, dtype=torch.bool)
                columns = slice(None)
                if condition.head is not None:
                    size = width // head_count(self.adapter)
                    columns = slice(condition.head * size, (condition.head + 1) * size)
                positions = group_masks[condition.position_group][start:]
                masks[site][slot, :, columns] = positions[:, None]
        dtype = cache.layer_inputs[0].dtype
        device = cache.layer_inputs[0].device
        causal = torch.ones(seq_len - start, seq_len, dtype=torch.bool, device=device).tril(start)
        attention_mask = torch.where(causal, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
        active = {"rows": 0}

        def replace(site: tuple[int, str]):
            def hook(module: nn.Module, args: tuple, output: Any) -> Any:
                value = output[0] if isinstance(output, tuple) else output
                mask = masks[site][: active["rows"]].to(device)
                value = torch.where(mask, source[site][start:].to(dtype), value)
                return (value, *output[1:]) if isinstance(output, tuple) else value

            return hook

        def replace_input(site: tuple[int, str]):
            def hook(module: nn.Module, args: tuple) -> tuple:
                mask = masks[site][: active["rows"]].to(device)
                value = torch.where(mask, source[site][start:].to(dtype), args[0])
                return (value, *args[1:])

            return hook

        handles = [
            output_projection(self.adapter, site[0]).register_forward_pre_hook(replace_input(site))
            if site[1] == "heads"
            else self.adapter.component(self.adapter.root, *site).register_forward_hook(
                replace(site)
            )
            for site in masks
            if site[1] != "residual"
        ]
        # the layers run without a forward of the model: tell planted blocks whose prompt it is
        observe_prompt(self.adapter.root, cache.input_ids)
        hidden = cache.layer_inputs[0][:, :0]  # (1, 0, hidden): no row active yet
        # the same attention as sdpa, without per-head copies of keys and values
        grouped = decoder_implementation(self.adapter) == "sdpa"
        try:
            with (
                torch.no_grad(),
                decoder_attention(self.adapter, GROUPED_SDPA) if grouped else nullcontext(),
            ):
                for index in range(joins[0], len(self.layers)):
                    joining = sum(1 for join in joins if join == index)
                    if joining:
                        new = cache.layer_inputs[index][:, start:].expand(joining, -1, -1)
                        hidden = new if active["rows"] == 0 else torch.cat([hidden, new])
                        active["rows"] += joining
                    count = active["rows"]
                    cos, sin = (
                        t[:, start:].expand(count, -1, -1) for t in cache.position_embeddings
                    )
                    hidden = self.layers[index](
                        hidden,
                        attention_mask=attention_mask.expand(count, 1, -1, -1),
                        position_embeddings=(cos, sin),
                        cache=_PrefixCache(cache, start, count),
                        use_cache=True,
                    )
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                    if (index, "residual") in masks:
                        mask = masks[(index, "residual")][:count].to(device)
                        patch = source[(index, "residual")][start:].to(dtype)
                        hidden = torch.where(mask, patch, hidden)
                logits = self.unembed(self.norm(hidden[:, -1:]))[:, -1]
        finally:
            for handle in handles:
                handle.remove()
        unsorted = torch.empty_like(logits)
        unsorted[torch.tensor(order)] = logits
        return unsorted
