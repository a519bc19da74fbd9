"""One unit's numbers: baselines, patched effects and the mismatched noise floor of its samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr

from patchwork.data.sample import Sample
from patchwork.engine.plan import SweepPlan
from patchwork.interventions.metrics import answer_metrics, metric_table
from patchwork.interventions.patching import Patcher
from patchwork.store.zarr_store import StoreCoords, template
from patchwork.study.schema import METRICS, Study

if TYPE_CHECKING:
    from patchwork.engine.runner import Prepared


def make_template(prepared: Prepared) -> xr.Dataset:
    """The store template of a prepared run (coordinates from the samples' metadata)."""
    patching = prepared.study.patching
    infos = prepared.samples.infos
    coords = StoreCoords(
        samples=[info.sample_id for info in infos],
        audio_answers=[info.audio_answer for info in infos],
        visual_answers=[info.visual_answer for info in infos],
        layers=prepared.plan.layers,
        position_groups=patching.position_groups,
        components=patching.components,
        metrics=METRICS,
        runs=(patching.source, patching.target),
    )
    return template(coords, prepared.study.execution.unit_size, with_null_effect(prepared.study))


def with_null_effect(study: Study) -> bool:
    return study.patching.noise_floor == "mismatched"


def compute_unit(
    study: Study, plan: SweepPlan, patcher: Patcher, samples: Sequence[Sample]
) -> dict[str, np.ndarray]:
    """Effects of every condition for a block of samples, shaped as the store's arrays.

    The noise floor patches sample i's target run with the source run of the next sample in the
    unit (when their token layouts match); it stays NaN for a unit of one sample.
    """
    patching = study.patching
    groups, components = patching.position_groups, patching.components
    shape = (len(samples), len(plan.layers), len(groups), len(components), len(METRICS))
    effect = np.full(shape, np.nan, dtype=np.float32)
    null_effect = np.full(shape, np.nan, dtype=np.float32)
    baseline = np.full((len(samples), 2, len(METRICS)), np.nan, dtype=np.float32)
    device = next(patcher.adapter.root.parameters()).device

    def on_device(sample: Sample, run: str) -> dict[str, torch.Tensor]:
        return {key: value.to(device) for key, value in sample.runs[run].items()}

    sources = [patcher.record(on_device(s, patching.source), plan.sites) for s in samples]
    cell = {
        c: (
            plan.layers.index(c.layer),
            groups.index(c.position_group),
            components.index(c.component),
        )
        for c in plan.conditions
    }
    batch = study.execution.batch_size
    for row, sample in enumerate(samples):
        target = on_device(sample, patching.target)
        target_logits, _ = patcher.record(target, ())
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        clean = answer_metrics(sources[row][0], *ids)
        conflict = answer_metrics(target_logits, *ids)
        for run_index, base in enumerate((clean, conflict)):
            baseline[row, run_index] = (
                metric_table(
                    base["logit_diff"],
                    base["audio_probability"],
                    clean["logit_diff"],
                    conflict["logit_diff"],
                )[0]
                .cpu()
                .numpy()
            )
        masks = patcher.adapter.position_groups(sample.runs[patching.target]["input_ids"])
        partner = (row + 1) % len(samples)
        passes = [(effect, sources[row][1])]
        if (
            with_null_effect(study)
            and partner != row
            and _same_layout(sample, samples[partner], patching.target)
        ):
            passes.append((null_effect, sources[partner][1]))
        for destination, activations in passes:
            for first in range(0, len(plan.conditions), batch):
                chunk = plan.conditions[first : first + batch]
                patched = answer_metrics(patcher.patched(target, activations, chunk, masks), *ids)
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
    arrays = {"effect": effect, "baseline": baseline}
    if with_null_effect(study):
        arrays["null_effect"] = null_effect
    return arrays


def _same_layout(first: Sample, second: Sample, run: str) -> bool:
    a, b = first.runs[run]["input_ids"], second.runs[run]["input_ids"]
    return a.shape == b.shape and bool(torch.equal(a, b))
