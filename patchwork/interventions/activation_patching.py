"""Activation patching as a study method: every (layer window, position group, component) cell.

Stores ``effect`` and ``null_effect`` (sample, layer, position_group, component, metric) and
``baseline`` (sample, run, metric); see :mod:`patchwork.interventions.metrics` for the metrics.
The noise floor patches sample i's target run with the source run of the next sample in the same
unit (when their token layouts match); it stays NaN for a unit of one sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from patchwork.data.sample import Sample
from patchwork.errors import DataError
from patchwork.interventions.method import Method
from patchwork.interventions.metrics import answer_metrics, metric_table
from patchwork.interventions.patching import Condition, Patcher, sweep_conditions
from patchwork.interventions.resume import ResumePatcher, first_position
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.schema import METRICS, ActivationPatching

EFFECT_DIMS = ("sample", "layer", "position_group", "component", "metric")


class ActivationPatchingMethod(Method):
    kind = "activation_patching"
    spec: ActivationPatching

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        spec = self.spec
        self.layers = self.resolve_layers(spec.layers)
        self.conditions: tuple[Condition, ...] = tuple(
            sweep_conditions(
                self.layers,
                spec.window,
                self.loaded.adapter.num_layers,
                spec.position_groups,
                spec.components,
            )
        )

    @property
    def sites(self) -> set[tuple[int, str]]:
        """(layer, component) pairs whose source activations the conditions read."""
        return {(layer, c.component) for c in self.conditions for layer in c.layers}

    @property
    def with_null_effect(self) -> bool:
        return self.spec.noise_floor == "mismatched"

    def _by_first_patched_position(self, masks: dict[str, torch.Tensor]) -> list[Condition]:
        """Conditions ordered so that a batch shares its first patched position and spans few
        layers: what a resumed patched run can skip grows."""
        return sorted(
            self.conditions,
            key=lambda c: (first_position(masks[c.position_group]), c.layer, c.component),
        )

    def runs(self) -> tuple[str, ...]:
        return (self.spec.source, self.spec.target)

    def check_sample(self, sample: Sample) -> None:
        source, target = (sample.runs[run]["input_ids"] for run in self.runs())
        if source.shape != target.shape or not torch.equal(source, target):
            raise DataError(
                f"sample {sample.sample_id}: runs {self.spec.source!r} and {self.spec.target!r} "
                "differ in token layout; patching needs the same tokens at the same positions"
            )

    def variables(self) -> dict[str, ArraySpec]:
        effect = ArraySpec(
            EFFECT_DIMS,
            {
                "layer": list(self.layers),
                "position_group": list(self.spec.position_groups),
                "component": list(self.spec.components),
                "metric": list(METRICS),
            },
        )
        variables = {
            "effect": effect,
            "baseline": ArraySpec(
                ("sample", "run", "metric"), {"run": list(self.runs()), "metric": list(METRICS)}
            ),
        }
        if self.with_null_effect:
            variables["null_effect"] = effect
        return variables

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        spec = self.spec
        variables = self.variables()
        arrays = {
            name: np.full(variable.shape(len(samples)), np.nan, dtype=np.float32)
            for name, variable in variables.items()
        }
        device = next(patcher.adapter.root.parameters()).device

        def on_device(sample: Sample, run: str) -> dict[str, torch.Tensor]:
            return {key: value.to(device) for key, value in sample.runs[run].items()}

        sources = [patcher.record(on_device(s, spec.source), self.sites) for s in samples]
        resume = ResumePatcher(patcher.adapter) if self.study.execution.reuse else None
        cell = {
            c: (
                self.layers.index(c.layer),
                spec.position_groups.index(c.position_group),
                spec.components.index(c.component),
            )
            for c in self.conditions
        }
        batch = self.study.execution.batch_size
        for row, sample in enumerate(samples):
            target = on_device(sample, spec.target)
            masks = patcher.adapter.position_groups(sample.runs[spec.target]["input_ids"])
            reusable = resume is not None and ResumePatcher.applicable(patcher.adapter, target)
            if reusable:
                assert resume is not None
                target_cache = resume.prepare(target)
                target_logits = target_cache.answer_logits
                conditions = self._by_first_patched_position(masks)
            else:
                target_logits, _ = patcher.record(target, ())
                conditions = self.conditions
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            clean = answer_metrics(sources[row][0], *ids)
            conflict = answer_metrics(target_logits, *ids)
            for run_index, base in enumerate((clean, conflict)):
                arrays["baseline"][row, run_index] = (
                    metric_table(
                        base["logit_diff"],
                        base["audio_probability"],
                        clean["logit_diff"],
                        conflict["logit_diff"],
                    )[0]
                    .cpu()
                    .numpy()
                )
            partner = (row + 1) % len(samples)
            passes = [(arrays["effect"], sources[row][1])]
            if (
                self.with_null_effect
                and partner != row
                and _same_layout(sample, samples[partner], spec.target)
            ):
                passes.append((arrays["null_effect"], sources[partner][1]))
            for destination, activations in passes:
                for first in range(0, len(conditions), batch):
                    chunk = conditions[first : first + batch]
                    if reusable:
                        logits = resume.patched(target_cache, activations, chunk, masks)  # type: ignore[union-attr]
                    else:
                        logits = patcher.patched(target, activations, chunk, masks)
                    patched = answer_metrics(logits, *ids)
                    table = (
                        metric_table(
                            patched["logit_diff"],
                            patched["audio_probability"],
                            clean["logit_diff"],
                            conflict["logit_diff"],
                        )
                        .cpu()
                        .numpy()
                    )
                    for condition, values in zip(chunk, table, strict=True):
                        destination[(row, *cell[condition])] = values
        return arrays


def _same_layout(first: Sample, second: Sample, run: str) -> bool:
    a, b = first.runs[run]["input_ids"], second.runs[run]["input_ids"]
    return a.shape == b.shape and bool(torch.equal(a, b))
