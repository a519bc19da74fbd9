"""Run a study: load, plan, compute unit by unit, write each unit to the store as it finishes.

Data flows one way: study → plan → traces → store. Units already marked done in the store are
skipped, so re-running an interrupted study resumes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patchwork.data.sample import Sample
from patchwork.engine.plan import SweepPlan, plan_sweep
from patchwork.errors import DataError
from patchwork.interventions.metrics import answer_metrics, metric_table
from patchwork.interventions.patching import Patcher
from patchwork.models.loading import LoadedModel, load_model
from patchwork.store.zarr_store import (
    ResultStore,
    StoreCoords,
    provenance,
    resolve_store_path,
    template,
)
from patchwork.study.loader import study_hash
from patchwork.study.schema import METRICS, Study

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RunSummary:
    """What a run did: where it wrote, how much it computed and skipped, how long it took."""

    store: Path
    model: str
    samples: int
    units_run: int
    units_skipped: int
    conditions_per_sample: int
    seconds: float
    mean_normalized_effect: dict[str, float]


def run_study(
    study: Study,
    store_root: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_unit: Progress | None = None,
) -> RunSummary:
    """Run ``study``; results go to ``store_root / study.store`` (default ``store/<name>.zarr``).

    ``on_start(total_samples)`` and ``on_unit(samples_done_in_unit)`` report progress.
    Everything that can be checked is checked before the store is created.
    """
    started = time.perf_counter()
    torch.manual_seed(study.execution.seed)
    root = Path(store_root) if store_root is not None else Path("store")
    path = resolve_store_path(root, study.store or Path(f"{study.name}.zarr"))
    loaded = load_model(study.model, study.where("model"))
    root.mkdir(parents=True, exist_ok=True)
    samples = load_samples(study, loaded, media_root=root)
    plan = plan_sweep(study, loaded.adapter.num_layers, len(samples))
    check_samples(study, loaded, samples)

    patching = study.patching
    coords = StoreCoords(
        samples=[s.sample_id for s in samples],
        audio_answers=[s.audio_answer for s in samples],
        visual_answers=[s.visual_answer for s in samples],
        layers=plan.layers,
        position_groups=patching.position_groups,
        components=patching.components,
        metrics=METRICS,
        runs=(patching.source, patching.target),
    )
    with_null = patching.noise_floor == "mismatched"
    store = ResultStore.create_or_resume(
        path,
        loaded.name,
        template(coords, study.execution.unit_size, with_null),
        study.execution.unit_size,
        provenance(study.text, study.name, study_hash(study)),
    )
    done = store.done()
    if on_start:
        on_start(len(samples))
    patcher = Patcher(loaded.adapter)
    units_run = units_skipped = 0
    for start, stop in plan.units:
        if done[start:stop].all():
            units_skipped += 1
            if on_unit:
                on_unit(stop - start)
            continue
        arrays = compute_unit(study, plan, patcher, samples[start:stop], with_null)
        store.write_unit(start, arrays)
        units_run += 1
        if on_unit:
            on_unit(stop - start)

    from patchwork.store.zarr_store import open_results

    results = open_results(path, loaded.name)
    effect = results["effect"].sel(metric="normalized_effect")
    means = effect.mean(dim=("sample", "layer", "component")).compute()
    return RunSummary(
        store=path,
        model=loaded.name,
        samples=len(samples),
        units_run=units_run,
        units_skipped=units_skipped,
        conditions_per_sample=len(plan.conditions),
        seconds=time.perf_counter() - started,
        mean_normalized_effect={
            str(g): float(v)
            for g, v in zip(means["position_group"].values, means.values, strict=True)
        },
    )


def load_samples(study: Study, loaded: LoadedModel, media_root: Path | None = None) -> list[Sample]:
    """The study's samples, from its generator or its manifest."""
    if study.dataset.manifest is not None:
        from patchwork.data.manifest import load_manifest

        return load_manifest(study, loaded)
    from patchwork.data.generators import generate_samples

    return generate_samples(study, loaded, media_root=media_root)


def check_samples(study: Study, loaded: LoadedModel, samples: Sequence[Sample]) -> None:
    """Every run fits the model, and the runs of a sample share one token layout."""
    patching = study.patching
    for sample in samples:
        for run in (patching.source, patching.target):
            if run not in sample.runs:
                raise DataError(f"sample {sample.sample_id}: has no run {run!r}")
            loaded.adapter.check_inputs(sample.runs[run], f"sample {sample.sample_id}, run {run}")
        source_ids = sample.runs[patching.source]["input_ids"]
        target_ids = sample.runs[patching.target]["input_ids"]
        if source_ids.shape != target_ids.shape or not torch.equal(source_ids, target_ids):
            raise DataError(
                f"sample {sample.sample_id}: runs {patching.source!r} and {patching.target!r} "
                "differ in token layout; patching needs the same tokens at the same positions"
            )


def compute_unit(
    study: Study,
    plan: SweepPlan,
    patcher: Patcher,
    samples: Sequence[Sample],
    with_null: bool,
) -> dict[str, np.ndarray]:
    """Effects of every condition for a block of samples, shaped as the store's arrays."""
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
    index = {
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
        clean_logits = sources[row][0]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        clean = answer_metrics(clean_logits, *ids)
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
        mismatched = (row + 1) % len(samples)
        runs = [(effect, sources[row][1])]
        if (
            with_null
            and mismatched != row
            and _same_layout(samples[row], samples[mismatched], patching.target)
        ):
            runs.append((null_effect, sources[mismatched][1]))
        for destination, activations in runs:
            for first in range(0, len(plan.conditions), batch):
                chunk = plan.conditions[first : first + batch]
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
                    destination[(row, *index[condition])] = values
    arrays = {"effect": effect, "baseline": baseline}
    if with_null:
        arrays["null_effect"] = null_effect
    return arrays


def _same_layout(first: Sample, second: Sample, run: str) -> bool:
    a, b = first.runs[run]["input_ids"], second.runs[run]["input_ids"]
    return a.shape == b.shape and bool(torch.equal(a, b))
