"""Head-level activation patching as a study method: every (layer, head, position group) cell.

Stores ``head_effect`` (sample, head_layer, head, head_group, metric) — the answer metrics of the
target run with one query head's output (before the output projection) replaced by the source
run's at the group's positions, ``normalized_effect`` against the source (1) and target (0) runs —
and ``head_baseline`` (sample, head_run, metric). See :mod:`patchwork.patching.heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from patchwork.data.sample import Sample
from patchwork.errors import StudyError
from patchwork.methods.method import Cost, SourceIntoTarget
from patchwork.patching.attribution import budgeted, linearize, widened
from patchwork.patching.batches import Batches
from patchwork.patching.heads import (
    HeadActivations,
    HeadCondition,
    head_count,
    patched_heads,
    record_heads,
)
from patchwork.patching.metrics import answer_metrics, baseline_rows, metric_rows
from patchwork.patching.partial_forward import ResumePatcher, first_position
from patchwork.patching.patcher import Condition, Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import HeadPatching
from patchwork.study.specs import METRICS


class HeadPatchingMethod(SourceIntoTarget):
    kind = "head_patching"
    example = """\
  - kind: head_patching
    from: clean
    into: conflict
    layers: [0, 2]
    position_groups: [video, answer]
"""
    spec: HeadPatching

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.layers = self.resolve_layers(self.spec.layers)
        count = head_count(self.loaded.adapter)
        heads = tuple(range(count)) if self.spec.heads == "all" else tuple(self.spec.heads)
        outside = [head for head in heads if head >= count]
        if outside:
            raise StudyError(
                f"{self.where('heads')}: head {outside[0]} is out of range; the model has "
                f"{count} query heads per layer (0–{count - 1})"
            )
        self.heads = heads
        reuse = self.study.execution.reuse
        self.resume = ResumePatcher(self.loaded.adapter) if reuse else None
        self.conditions = [
            HeadCondition(layer, head, group)
            for layer in self.layers
            for head in self.heads
            for group in self.spec.position_groups
        ]

    def cost(self, sample: Sample) -> Cost:
        """Each head cell resumed from its layer and its group's first position."""
        first = self.first_positions(sample, self.spec.target)
        cells = tuple((c.layer, first[c.position_group]) for c in self.conditions)
        return Cost(run=self.spec.target, baselines=2, cells=cells, sites=len(self.layers))

    def variables(self) -> dict[str, ArraySpec]:
        spec = self.spec
        return {
            "head_effect": ArraySpec(
                ("sample", "head_layer", "head", "head_group", "metric"),
                {
                    "head_layer": list(self.layers),
                    "head": list(self.heads),
                    "head_group": list(spec.position_groups),
                    "metric": list(METRICS),
                },
                long_name=f"answer metric with one head's output of the {spec.source} run "
                f"patched into the {spec.target} run",
                units="1",
            ),
            **(
                {
                    "head_verified": ArraySpec(
                        ("sample", "head_layer", "head", "head_group"),
                        {
                            "head_layer": list(self.layers),
                            "head": list(self.heads),
                            "head_group": list(spec.position_groups),
                        },
                        long_name="1 where head_effect is exact (patched exactly, or a patch "
                        "that changes nothing), 0 where it is estimated",
                        units="1",
                    )
                }
                if spec.method == "attribution"
                else {}
            ),
            "head_baseline": self.baseline_variable("head_run"),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        spec, adapter = self.spec, patcher.adapter
        device = next(adapter.root.parameters()).device
        batches = Batches(self.study.execution.batch_size)
        arrays = {
            name: np.full(variable.shape(len(samples)), np.nan, dtype=np.float32)
            for name, variable in self.variables().items()
        }
        index = {
            condition: (
                self.layers.index(condition.layer),
                self.heads.index(condition.head),
                spec.position_groups.index(condition.position_group),
            )
            for condition in self.conditions
        }
        sites = [(layer, "heads") for layer in self.layers]
        heads = head_count(adapter)
        for row, sample in enumerate(samples):
            runs = {
                run: {key: value.to(device) for key, value in sample.runs[run].items()}
                for run in self.runs()
            }
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            source_logits, source = record_heads(adapter, runs[spec.source], self.layers)
            resume = self.resume
            if resume is not None and not ResumePatcher.applicable(adapter, runs[spec.target]):
                resume = None
            if resume is not None:  # one target run, kept for the patched runs to resume from
                cache = resume.prepare(runs[spec.target], sites)
                target_logits = cache.answer_logits
                target = {
                    layer: cache.activations[(layer, "heads")].unflatten(-1, (heads, -1))
                    for layer in self.layers
                }
            else:
                target_logits, target = record_heads(adapter, runs[spec.target], self.layers)
            clean = answer_metrics(source_logits, *ids)
            conflict = answer_metrics(target_logits, *ids)
            arrays["head_baseline"][row] = baseline_rows(clean, conflict)
            masks = adapter.position_groups(sample.runs[spec.target]["input_ids"])
            seq_len = int(masks["all"].numel())
            unchanged = metric_rows(conflict, clean, conflict)[0]
            live: list[tuple[HeadCondition, int]] = []
            for condition in self.conditions:
                layer, head = condition.layer, condition.head
                differs = (source[layer][:, head] != target[layer][:, head]).any(-1).cpu()
                start = first_position(masks[condition.position_group] & differs)
                if start == seq_len:  # the patch writes a value over itself: the target run
                    arrays["head_effect"][(row, *index[condition])] = unchanged
                else:
                    live.append((condition, start))
            if spec.method == "attribution":  # exact where not estimated below
                arrays["head_verified"][row] = 1
                live = self._estimate(
                    arrays,
                    row,
                    index,
                    live,
                    runs[spec.target],
                    source,
                    masks,
                    ids,
                    (clean, conflict),
                    resume is not None,
                )
            live.sort(key=lambda item: (item[1], item[0].layer))
            flat = {(layer, "heads"): value.flatten(-2) for layer, value in source.items()}

            target_run = runs[spec.target]

            def patched_logits(
                chunk: Sequence[tuple[HeadCondition, int]],
                bound: tuple[Any, ...] = (resume, cache if resume else None, flat, masks),
                run: dict[str, torch.Tensor] = target_run,
                recorded: HeadActivations = source,
            ) -> torch.Tensor:
                """Patched runs of a batch of head cells (bound to this sample's runs)."""
                resumer, kept, flattened, groups = bound
                if resumer is not None:
                    conditions = [
                        Condition(c.layer, (c.layer,), c.position_group, "heads", c.head)
                        for c, _ in chunk
                    ]
                    starts = [start for _, start in chunk]
                    return resumer.patched(kept, flattened, conditions, groups, starts)
                patched = [condition for condition, _ in chunk]
                return patched_heads(adapter, run, recorded, patched, groups)

            for chunk, logits in batches.run(live, patched_logits):
                values = metric_rows(answer_metrics(logits, *ids), clean, conflict)
                for (condition, _), value in zip(chunk, values, strict=True):
                    arrays["head_effect"][(row, *index[condition])] = value
        return arrays

    def _estimate(
        self,
        arrays: dict[str, np.ndarray],
        row: int,
        index: dict[HeadCondition, tuple[int, int, int]],
        live: list[tuple[HeadCondition, int]],
        target: dict[str, torch.Tensor],
        source: HeadActivations,
        masks: dict[str, torch.Tensor],
        ids: tuple[int, int],
        runs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
        resumed: bool,
    ) -> list[tuple[HeadCondition, int]]:
        """Store first-order estimates of the ``live`` cells (one forward and one backward per
        metric, gradients read at each output projection's input), given the metrics of the
        unpatched ``runs`` (source, target); flag estimated those left so and return those to
        patch exactly within ``verify_budget`` (greedily by ``Σ ‖Δ‖²`` per unit
        of the exact run's work, as :func:`~patchwork.patching.attribution.budgeted`)."""
        adapter = self.loaded.adapter
        sites = [(layer, "heads") for layer in self.layers]
        linearization = linearize(adapter, target, sites, *ids)
        heads, depth = head_count(adapter), adapter.num_layers
        seq_len = int(masks["all"].numel())
        clean, conflict = runs
        spread, costs = [], []
        for condition, start in live:
            site = (condition.layer, "heads")
            width = linearization.activations[site].shape[-1] // heads
            columns = slice(condition.head * width, (condition.head + 1) * width)
            positions = masks[condition.position_group]
            flat = source[condition.layer].flatten(-2)
            delta = widened(flat - linearization.activations[site])[positions][:, columns]
            estimated = {
                metric: conflict[metric]
                + float((delta * widened(gradients[site][positions][:, columns])).sum())
                for metric, gradients in linearization.gradients.items()
            }
            arrays["head_effect"][(row, *index[condition])] = metric_rows(
                estimated, clean, conflict
            )[0]
            spread.append(float((delta**2).sum()))
            costs.append(
                (depth - condition.layer) * (seq_len - start) if resumed else depth * seq_len
            )
        chosen = budgeted(spread, costs, self.spec.verify_budget)
        for number, (condition, _) in enumerate(live):
            if number not in chosen:
                arrays["head_verified"][(row, *index[condition])] = 0
        return [item for number, item in enumerate(live) if number in chosen]
