"""Exact patched runs of one target: resumed mid-model where the adapter allows it
(:mod:`~patchwork.patching.partial_forward`), else full traces; patches that change nothing are
not run at all (:func:`first_change`). Used by activation patching for every exact cell, and for
the cells attribution checks exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from patchwork.patching.attribution import Linearization
from patchwork.patching.batches import Batches
from patchwork.patching.metrics import answer_metrics, metric_rows
from patchwork.patching.partial_forward import ResumePatcher, first_position
from patchwork.patching.patcher import Activations, Condition, Patcher


class ExactRunner:
    """Exact patched runs of one target: resumed mid-model where possible, else full traces."""

    def __init__(self, patcher: Patcher, reuse: bool, batch_size: int) -> None:
        self.patcher = patcher
        self.resume = ResumePatcher(patcher.adapter) if reuse else None
        self.batches = Batches(batch_size)
        self.resumed = False

    def resumable(self, target: dict[str, torch.Tensor]) -> bool:
        """True when patched runs of ``target`` resume mid-model
        (:mod:`~patchwork.patching.partial_forward`)."""
        return self.resume is not None and ResumePatcher.applicable(self.patcher.adapter, target)

    def start(
        self,
        target: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        sites: Iterable[tuple[int, str]],
    ) -> torch.Tensor:
        """Run the target once, keeping its activations at ``sites`` (and, resumed, what patched
        runs reuse); its answer logits (1, vocab)."""
        self.target, self.masks = target, masks
        self.resumed = self.resumable(target)
        if self.resumed:
            assert self.resume is not None
            self.cache = self.resume.prepare(target, sites)
            self.target_activations = self.cache.activations
            return self.cache.answer_logits
        logits, self.target_activations = self.patcher.record(target, sites)
        return logits

    def adopt(
        self,
        target: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        linearization: Linearization,
    ) -> None:
        """Patch ``target`` from what its linearization kept (no run of its own): its
        activations, and the cache resumed runs start from where it kept one."""
        self.target, self.masks = target, masks
        self.target_activations = linearization.activations
        self.resumed = linearization.cache is not None and self.resumable(target)
        if self.resumed:
            assert linearization.cache is not None
            self.cache = linearization.cache

    def starts(self, conditions: Sequence[Condition], activations: Activations) -> list[int]:
        """Each condition's first changed position (the sequence length: it changes nothing)."""
        return [
            first_change(condition, activations, self.target_activations, self.masks)
            for condition in conditions
        ]

    def costs(self, conditions: Sequence[Condition], activations: Activations) -> list[int]:
        """Work of each condition's exact run, in layer × position steps: resumed, the layers
        from its first patched one times the positions from the first it changes; otherwise
        every layer and position; none for a patch that changes nothing."""
        seq_len = int(self.masks["all"].numel())
        depth = self.patcher.adapter.num_layers
        return [
            0
            if start == seq_len
            else (depth - min(c.layers)) * (seq_len - start)
            if self.resumed
            else depth * seq_len
            for c, start in zip(conditions, self.starts(conditions, activations), strict=True)
        ]

    def patch(
        self,
        conditions: Sequence[Condition],
        activations: Activations,
        ids: tuple[int, int],
        clean: dict[str, torch.Tensor],
        conflict: dict[str, torch.Tensor],
    ) -> np.ndarray:
        """Metric tables (len(conditions), metrics) of the patched runs.

        Conditions that change nothing get the target's metrics without a run. The others run in
        batches ordered by first changed position, then layer: a resumed batch shares its start
        and each row skips the most. A batch that runs out of accelerator memory is halved and
        retried; the smaller size is kept for the rest of the run.
        """
        seq_len = int(self.masks["all"].numel())
        starts = self.starts(conditions, activations)
        tables = np.repeat(metric_rows(conflict, clean, conflict), len(conditions), axis=0)
        live = sorted(
            (row for row, start in enumerate(starts) if start < seq_len),
            key=lambda row: (starts[row], min(conditions[row].layers), conditions[row].component),
        )

        def patched(rows: Sequence[int]) -> torch.Tensor:
            chunk = [conditions[row] for row in rows]
            if self.resumed and self.resume is not None:
                starts_of = [starts[row] for row in rows]
                return self.resume.patched(self.cache, activations, chunk, self.masks, starts_of)
            return self.patcher.patched(self.target, activations, chunk, self.masks)

        for rows, logits in self.batches.run(live, patched):
            tables[list(rows)] = metric_rows(answer_metrics(logits, *ids), clean, conflict)
        return tables


def first_change(
    condition: Condition,
    source: Activations,
    target: Activations,
    group_masks: Mapping[str, torch.Tensor],
) -> int:
    """First position a condition's patch changes: the first of its group's positions where a
    patched site's source activation differs from the target's; the sequence length if none does
    (patching a value with itself is no patch)."""
    differs = torch.zeros_like(group_masks[condition.position_group])
    for layer in condition.layers:
        site = (layer, condition.component)
        unequal = (source[site] != target[site]).any(-1).cpu()
        differs |= unequal.flatten(0, -2).any(0) if unequal.ndim > 1 else unequal
    return first_position(group_masks[condition.position_group] & differs)
