"""Path patching as a study method: sender (a position group's residual after layer ``l``, the MLP
output of ``l`` or a head's output in ``l``) → receiver (the queries, keys or values query head
``h`` of a layer ``l' > l`` reads) → answer, the rest frozen as the entry's ``freeze`` says.

Stores ``path_effect`` (sample, sender, sender_layer, receiver_layer, receiver_head,
receiver_input, metric): the answer metrics of the target run with that one path carrying the
source run's signal (NaN where ``l' ≤ l``), ``normalized_effect`` against the source (1) and
target (0) runs (its ``long_name`` says what was frozen); ``path_baseline`` (sample,
path_run, metric). See :mod:`patchwork.patching.paths` for the definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial

import numpy as np
import torch

from patchwork.data.sample import ModelInputs, Sample
from patchwork.errors import ModelError, StudyError
from patchwork.methods.method import Cost, SourceIntoTarget
from patchwork.models.adapter import ModelAdapter
from patchwork.patching.batches import Batches
from patchwork.patching.heads import head_count
from patchwork.patching.metrics import answer_metrics, baseline_rows, metric_rows
from patchwork.patching.patcher import Patcher
from patchwork.patching.paths import (
    FrozenRow,
    Sender,
    check_structure,
    patched_head_outputs,
    projections,
    receiving_heads,
    record,
)
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import PathPatching
from patchwork.study.specs import METRICS

#: A path: the frozen row of its sender and receiver input, the receiving layer and query head.
Path = tuple[FrozenRow, int, int]


class PathPatchingMethod(SourceIntoTarget):
    kind = "path_patching"
    example = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    senders: [residual, mlp, heads]
    sender_layers: [0, 1]
    receivers: [queries, values]
    receiver_layers: [1, 2]
"""
    spec: PathPatching

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        spec, adapter = self.spec, self.loaded.adapter
        self.sender_layers = self.resolve_layers(spec.sender_layers, "sender_layers")
        self.receivers = self.resolve_layers(spec.receiver_layers, "receiver_layers")
        try:
            check_structure(adapter, {*self.sender_layers, *self.receivers})
            heads = head_count(adapter)
        except ModelError as error:
            raise StudyError(f"{self.where('kind')}: {error}") from None
        self.heads = tuple(range(heads))
        sending = self.heads if spec.sender_heads == "all" else tuple(spec.sender_heads)
        beyond = [head for head in sending if head >= heads]
        if beyond:
            raise StudyError(
                f"{self.where('sender_heads')}: head {beyond[0]} is out of range; the model has "
                f"{heads} query heads (0–{heads - 1})"
            )
        kinds = [
            Sender("head", 0, head) if component == "heads" else Sender(component, 0)
            for component in spec.senders
            for head in (sending if component == "heads" else (None,))
        ]
        #: The stored ``sender`` coordinates: 'residual', 'mlp', 'head 0', …
        self.sender_labels = [kind.label for kind in kinds]
        #: Every sender with a receiver layer after it.
        self.senders = [
            replace(kind, layer=layer)
            for kind in kinds
            for layer in self.sender_layers
            if any(receiver > layer for receiver in self.receivers)
        ]
        if not self.senders:
            raise StudyError(
                f"{self.where('receiver_layers')}: no receiver layer comes after a sender layer"
            )

    @property
    def sites(self) -> set[tuple[int, str]]:
        sent = {"residual": "residual", "mlp": "mlp", "head": "heads"}
        return {(sender.layer, sent[sender.component]) for sender in self.senders} | {
            (layer, "attention") for layer in self.receivers
        }

    def _frozen_rows(self) -> list[FrozenRow]:
        return [
            FrozenRow(sender, receiver)
            for sender in self.senders
            for receiver in self.spec.receivers
        ]

    def _paths(self, frozen: Sequence[FrozenRow]) -> list[Path]:
        """Every path (frozen row, receiver layer, receiver head) of ``frozen``."""
        return [
            (row, layer, head)
            for row in frozen
            for layer in self.receivers
            if layer > row.sender.layer
            for head in self.heads
        ]

    def cost(self, sample: Sample) -> Cost:
        """Two recorded runs, then one full forward per frozen row and one per path (neither is
        resumed mid-model)."""
        frozen = self._frozen_rows()
        cells = ((0, 0),) * (len(frozen) + len(self._paths(frozen)))
        source, target = self._sites()
        return Cost(run=self.spec.target, baselines=2, cells=cells, sites=len(source) + len(target))

    def variables(self) -> dict[str, ArraySpec]:
        spec = self.spec
        frozen = "attention heads" if spec.freeze == "attention" else "attention heads and MLPs"
        return {
            "path_effect": ArraySpec(
                (
                    "sample",
                    "sender",
                    "sender_layer",
                    "receiver_layer",
                    "receiver_head",
                    "receiver_input",
                    "metric",
                ),
                {
                    "sender": list(self.sender_labels),
                    "sender_layer": list(self.sender_layers),
                    "receiver_layer": list(self.receivers),
                    "receiver_head": list(self.heads),
                    "receiver_input": list(spec.receivers),
                    "metric": list(METRICS),
                },
                long_name=f"answer metric with the {spec.source} run's {spec.sender_group} "
                f"sender reaching one head's input in the {spec.target} run, other {frozen} "
                "frozen",
                units="1",
            ),
            "path_baseline": self.baseline_variable("path_run"),
        }

    def _sites(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """What the source and the target run record (:func:`~patchwork.patching.paths.record`)."""
        sent = {"residual": "residual", "mlp": "mlp", "head": "heads"}
        source = {(sent[sender.component], sender.layer) for sender in self.senders}
        first = min(sender.layer for sender in self.senders)
        later = range(first, max(self.receivers) + 1)
        target = {("attention", layer) for layer in later}
        if self.spec.freeze == "attention+mlp":
            target |= {("mlp", layer) for layer in later}
        adapter = self.loaded.adapter
        target |= {
            (receiver, layer)
            for layer in self.receivers
            if layer > first
            for receiver in projections(adapter, layer)
        }
        return source, target

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        spec, adapter = self.spec, patcher.adapter
        device = next(adapter.root.parameters()).device
        batches = Batches(self.study.execution.batch_size)
        arrays = {
            name: np.full(variable.shape(len(samples)), np.nan, dtype=np.float32)
            for name, variable in self.variables().items()
        }
        source_sites, target_sites = self._sites()
        frozen = self._frozen_rows()
        for row, sample in enumerate(samples):
            runs = {
                run: {key: value.to(device) for key, value in sample.runs[run].items()}
                for run in self.runs()
            }
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            source_logits, source = record(adapter, runs[spec.source], source_sites)
            target_logits, target = record(adapter, runs[spec.target], target_sites)
            clean = answer_metrics(source_logits, *ids)
            conflict = answer_metrics(target_logits, *ids)
            arrays["path_baseline"][row] = baseline_rows(clean, conflict)
            positions = adapter.position_groups(sample.runs[spec.target]["input_ids"])[
                spec.sender_group
            ].to(device)
            frozen_run = partial(
                receiving_heads,
                adapter,
                runs[spec.target],
                source,
                target,
                positions=positions,
                freeze=spec.freeze,
                receiver_layers=self.receivers,
            )
            # each batch of frozen rows, then its paths: one batch of receiving heads held at once
            for rows, received in batches.run(frozen, frozen_run):
                outputs = {
                    (frozen_row, layer, head): heads[:, head]
                    for frozen_row, by_layer in zip(rows, received, strict=True)
                    for layer, heads in by_layer.items()
                    for head in self.heads
                }
                patched = partial(_patched, adapter=adapter, run=runs[spec.target], outputs=outputs)
                for chunk, logits in batches.run(self._paths(rows), patched):
                    values = metric_rows(answer_metrics(logits, *ids), clean, conflict)
                    for (frozen_row, layer, head), value in zip(chunk, values, strict=True):
                        sender = frozen_row.sender
                        cell = (
                            row,
                            self.sender_labels.index(sender.label),
                            self.sender_layers.index(sender.layer),
                            self.receivers.index(layer),
                            self.heads.index(head),
                            spec.receivers.index(frozen_row.receiver_input),
                        )
                        arrays["path_effect"][cell] = value
        return arrays


def _patched(
    chunk: Sequence[Path],
    adapter: ModelAdapter,
    run: ModelInputs,
    outputs: Mapping[Path, torch.Tensor],
) -> torch.Tensor:
    """Answer logits (len(chunk), vocab) of ``run`` with each path's receiving head's output
    (``outputs``, (seq, head_dim)) in its row."""
    return patched_head_outputs(adapter, run, [(path[1], path[2], outputs[path]) for path in chunk])
