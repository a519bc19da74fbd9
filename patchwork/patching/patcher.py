"""Activation patching through nnsight: record a source run, patch it into a target run.

A *condition* is one cell of the sweep — (layer window, position group, component). Many
conditions travel as rows of one batched forward of the target run: at every layer and component
a precomputed (rows, positions) mask selects where the source activation replaces the target's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from nnsight import NNsight

from patchwork.data.sample import ModelInputs
from patchwork.models.adapter import ModelAdapter

#: Order in which a decoder layer produces its components' outputs (nnsight needs forward order).
FORWARD_ORDER = ("attention", "mlp", "residual")

Activations = dict[tuple[int, str], torch.Tensor]


@dataclass(frozen=True)
class Condition:
    """One patched cell: source activations of ``component`` at the positions of
    ``position_group`` replace the target's, in every layer of ``layers``. Component ``heads``
    is the attention output projection's input, of which ``head`` names the query head patched
    (:mod:`patchwork.patching.heads`)."""

    layer: int
    layers: tuple[int, ...]
    position_group: str
    component: str
    head: int | None = None


def sweep_conditions(
    layers: Sequence[int],
    window: int,
    num_layers: int,
    position_groups: Sequence[str],
    components: Sequence[str],
) -> list[Condition]:
    """Every (layer, position group, component) cell; a window covers ``layer … layer+window−1``
    clipped at the last layer."""
    return [
        Condition(layer, tuple(range(layer, min(layer + window, num_layers))), group, component)
        for layer in layers
        for group in position_groups
        for component in components
    ]


class Patcher:
    """Runs traces of one model through nnsight, in the adapter's vocabulary."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.traced = NNsight(adapter.root)

    def record(
        self, inputs: ModelInputs, sites: Iterable[tuple[int, str]]
    ) -> tuple[torch.Tensor, Activations]:
        """One run: answer logits (1, vocab) and the activations (seq, hidden) at ``sites``."""
        return self.record_rows([inputs], sites)[0]

    def record_rows(
        self, runs: Sequence[ModelInputs], sites: Iterable[tuple[int, str]]
    ) -> list[tuple[torch.Tensor, Activations]]:
        """Runs of one token layout as rows of one forward: each run's answer logits (1, vocab)
        and activations (seq, hidden) at ``sites``."""
        wanted = sorted(set(sites), key=lambda site: (site[0], FORWARD_ORDER.index(site[1])))
        saved = {}
        adapter = self.adapter
        with (
            torch.no_grad(),
            self.traced.trace(**adapter.forward_kwargs(adapter.stack_inputs(runs))),
        ):
            for layer, component in wanted:
                module, where = adapter.site(self.traced, layer, component)
                output = adapter.output_tensor(component, getattr(module, where))
                saved[(layer, component)] = output.save()  # type: ignore[attr-defined]
            logits = self.traced.output.logits.save()
        answer = self.adapter.answer_logits(logits)
        return [
            (
                answer[row : row + 1],
                {
                    site: value.select(adapter.batch_axis(site[1]), row).detach().clone()
                    for site, value in saved.items()
                },
            )
            for row in range(len(runs))
        ]

    def patched(
        self,
        target: ModelInputs,
        source: Activations,
        conditions: Sequence[Condition],
        group_masks: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Answer logits (len(conditions), vocab) of the target run, patched once per row."""
        rows = len(conditions)
        masks: dict[tuple[int, str], torch.Tensor] = {}
        for row, condition in enumerate(conditions):
            for layer in condition.layers:
                site = (layer, condition.component)
                if site not in masks:
                    seq_len = group_masks[condition.position_group].numel()
                    masks[site] = torch.zeros(rows, seq_len, 1, dtype=torch.bool)
                masks[site][row, :, 0] = group_masks[condition.position_group]
        order = sorted(masks, key=lambda site: (site[0], FORWARD_ORDER.index(site[1])))
        adapter = self.adapter
        batch = adapter.forward_kwargs(adapter.repeat_inputs(target, rows))
        with torch.no_grad(), self.traced.trace(**batch):
            for layer, component in order:
                module, where = adapter.site(self.traced, layer, component)
                output = getattr(module, where)
                hidden = adapter.output_tensor(component, output)
                # rows sit on the batch axis; source (…, seq, hidden) gains that axis of size one
                axis = adapter.batch_axis(component)
                mask = masks[(layer, component)].reshape((1,) * axis + (rows, -1, 1))
                patch = source[(layer, component)].unsqueeze(axis).to(hidden.dtype)
                replaced = torch.where(mask.to(hidden.device), patch, hidden)
                value = (replaced, *output[1:]) if isinstance(output, tuple) else replaced
                setattr(module, where, value)
            logits = self.traced.output.logits.save()
        return adapter.answer_logits(logits)


def layout_batches(runs: Sequence[ModelInputs], size: int) -> list[list[int]]:
    """Indices of ``runs`` in batches of at most ``size`` that can travel as rows of one forward:
    equal token ids, media grids and masks (every integer or boolean tensor), and equal shapes of
    the rest. Batches keep the runs' order within them."""
    groups: dict[tuple, list[int]] = {}
    for index, run in enumerate(runs):
        key = tuple(
            (
                name,
                tuple(value.shape),
                value.dtype,
                None if value.is_floating_point() else value.cpu().numpy().tobytes(),
            )
            for name, value in sorted(run.items())
        )
        groups.setdefault(key, []).append(index)
    return [
        members[first : first + size]
        for members in groups.values()
        for first in range(0, len(members), size)
    ]
