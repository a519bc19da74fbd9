"""Path patching as a study method: sender (a position group's residual after layer ``l``) →
receiver (the values query head ``h`` of layer ``l' > l`` reads) → answer.

Stores ``path_effect`` (sample, sender_layer, receiver_layer, receiver_head, metric): the answer
metrics of the target run with that one path carrying the source run's signal (NaN where
``l' ≤ l``), ``normalized_effect`` against the source (1) and target (0) runs; and
``path_baseline`` (sample, path_run, metric). See :mod:`patchwork.patching.paths`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from patchwork.data.sample import Sample
from patchwork.errors import ModelError, StudyError
from patchwork.methods.method import Cost, SourceIntoTarget
from patchwork.patching.batches import Batches
from patchwork.patching.heads import head_count
from patchwork.patching.metrics import answer_metrics, baseline_rows, metric_rows
from patchwork.patching.patcher import Patcher
from patchwork.patching.paths import (
    head_change,
    patched_head_outputs,
    receiver_state,
    value_projection,
)
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.schema import METRICS, PathPatching


class PathPatchingMethod(SourceIntoTarget):
    kind = "path_patching"
    example = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    sender_layers: [0, 1]
    receiver_layers: [1, 2]
"""
    spec: PathPatching

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.senders = self.resolve_layers(self.spec.sender_layers, "sender_layers")
        self.receivers = self.resolve_layers(self.spec.receiver_layers, "receiver_layers")
        try:
            value_projection(self.loaded.adapter, 0)
        except ModelError as error:
            raise StudyError(f"{self.where('kind')}: {error}") from None
        self.heads = tuple(range(head_count(self.loaded.adapter)))
        self.paths = [
            (sender, receiver, head)
            for sender in self.senders
            for receiver in self.receivers
            if receiver > sender
            for head in self.heads
        ]
        if not self.paths:
            raise StudyError(
                f"{self.where('receiver_layers')}: no receiver layer comes after a sender layer"
            )

    def cost(self, sample: Sample) -> Cost:
        """One run per path, changed from its sender layer at the sender group's first position."""
        first = self.first_positions(sample, self.spec.target)[self.spec.sender_group]
        cells = tuple((sender, first) for sender, _, _ in self.paths)
        return Cost(run=self.spec.target, baselines=2, cells=cells, sites=len(self.senders))

    def variables(self) -> dict[str, ArraySpec]:
        spec = self.spec
        return {
            "path_effect": ArraySpec(
                ("sample", "sender_layer", "receiver_layer", "receiver_head", "metric"),
                {
                    "sender_layer": list(self.senders),
                    "receiver_layer": list(self.receivers),
                    "receiver_head": list(self.heads),
                    "metric": list(METRICS),
                },
                long_name=f"answer metric with the {spec.source} run's {spec.sender_group} "
                f"residual reaching one head's values of the {spec.target} run",
                units="1",
            ),
            "path_baseline": self.baseline_variable("path_run"),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        spec, adapter = self.spec, patcher.adapter
        device = next(adapter.root.parameters()).device
        batches = Batches(self.study.execution.batch_size)
        arrays = {
            name: np.full(variable.shape(len(samples)), np.nan, dtype=np.float32)
            for name, variable in self.variables().items()
        }
        sites = [(layer, "residual") for layer in self.senders]
        for row, sample in enumerate(samples):
            runs = {
                run: {key: value.to(device) for key, value in sample.runs[run].items()}
                for run in self.runs()
            }
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            source_logits, source = patcher.record(runs[spec.source], sites)
            target_logits, target = patcher.record(runs[spec.target], sites)
            clean = answer_metrics(source_logits, *ids)
            conflict = answer_metrics(target_logits, *ids)
            arrays["path_baseline"][row] = baseline_rows(clean, conflict)
            positions = adapter.position_groups(sample.runs[spec.target]["input_ids"])[
                spec.sender_group
            ].to(device)
            inputs_at, probs, outputs_at = receiver_state(
                adapter, runs[spec.target], self.receivers
            )
            patched = []
            for sender, receiver, head in self.paths:
                delta = (source[(sender, "residual")] - target[(sender, "residual")])[positions]
                change = head_change(
                    adapter, receiver, head, inputs_at[receiver], probs[receiver], delta, positions
                )
                patched.append((receiver, head, outputs_at[receiver][:, head] + change))
            rows = list(zip(self.paths, patched, strict=True))
            target_run = runs[spec.target]

            def patched_logits(chunk: Sequence[tuple[Any, Any]], run: Any = target_run) -> Any:
                return patched_head_outputs(adapter, run, [change for _, change in chunk])

            for chunk, logits in batches.run(rows, patched_logits):
                values = metric_rows(answer_metrics(logits, *ids), clean, conflict)
                for ((sender, receiver, head), _), value in zip(chunk, values, strict=True):
                    cell = (
                        row,
                        self.senders.index(sender),
                        self.receivers.index(receiver),
                        self.heads.index(head),
                    )
                    arrays["path_effect"][cell] = value
        return arrays
