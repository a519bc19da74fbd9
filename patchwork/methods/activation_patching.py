"""Activation patching as a study method: every (layer window, position group, component) cell.

Stores ``effect`` and ``null_effect`` (sample, layer, position_group, component, metric) and
``baseline`` (sample, run, metric); see :mod:`patchwork.patching.metrics` for the metrics.
The noise floor patches sample i's target run with the source runs of ``noise_partners`` other
samples of the same token layout, drawn from the whole dataset by a generator seeded with
(execution.seed, i) — the same partners whatever the units and workers (:func:`noise_partners`).
A slot without a partner stays NaN; the store says which sample each slot used (``null_partner``).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch

from patchwork.data.sample import Sample
from patchwork.data.source import SampleSource
from patchwork.errors import StudyError
from patchwork.methods.method import NORMALIZED_MAY_BE_NAN, Cost, SourceIntoTarget
from patchwork.patching.atp_star import (
    deltas,
    graddrop_magnitudes,
    qk_corrections,
    readout_corrections,
)
from patchwork.patching.attribution import (
    Cells,
    Linearization,
    budgeted,
    condition_changes,
    linearize_rows,
    per_position,
    site_changes,
    spearman,
    widened,
)
from patchwork.patching.batches import Batches
from patchwork.patching.exact import ExactRunner
from patchwork.patching.metrics import answer_metrics, baseline_rows, metric_rows
from patchwork.patching.patcher import (
    Activations,
    Condition,
    Patcher,
    layout_batches,
    sweep_conditions,
)
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import ActivationPatching
from patchwork.study.specs import METRICS

EFFECT_DIMS = ("sample", "layer", "position_group", "component", "metric")
NULL_DIMS = ("sample", "partner", *EFFECT_DIMS[1:])
#: attribution+verify's agreement of estimate and exact patching, per sample, over the 2k verified
#: cells (the estimate's top k and k random others): Spearman of the changes; the share of the
#: exact top k that the estimate put in its top k (chance: 0.5, as half the verified cells are the
#: estimate's top k); mean exact change of the estimate's top k over that of the k random cells
#: (chance: 1).
AGREEMENT_STATS = ("spearman", "recall_among_verified", "top_k_lift")
#: Attribution's flags of the cells it reports exactly, per effect variable.
VERIFIED = {"effect": "verified", "null_effect": "null_verified"}


def noise_partners(layouts: Sequence[str | None], count: int, seed: int) -> list[list[int]]:
    """For each sample, up to ``count`` other samples with the same layout key (None: unknown,
    matched with the other unknowns and checked when the sample runs), drawn without replacement
    by a generator seeded with (``seed``, index): independent of units and workers."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for index, key in enumerate(layouts):
        groups[key].append(index)
    partners = []
    for index, key in enumerate(layouts):
        candidates = [other for other in groups[key] if other != index]
        rng = np.random.default_rng([seed, index])
        chosen = rng.permutation(len(candidates))[:count]
        partners.append([candidates[c] for c in chosen])
    return partners


class ActivationPatchingMethod(SourceIntoTarget):
    kind = "activation_patching"
    example = """\
  - kind: activation_patching
    from: clean
    into: conflict
    components: [residual, attention]
    layers: all
    window: 1
    position_groups: [audio, video, answer]
"""
    spec: ActivationPatching

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        spec = self.spec
        self.layers = self.resolve_layers(spec.layers)
        depth = self.loaded.adapter.num_layers
        if spec.window > depth:
            raise StudyError(
                f"{self.where('window')}: window {spec.window} is longer than the model's "
                f"{depth} layers"
            )
        self.conditions: tuple[Condition, ...] = tuple(
            sweep_conditions(
                self.layers,
                spec.window,
                self.loaded.adapter.num_layers,
                spec.position_groups,
                spec.components,
            )
        )
        self.corrections = self._corrections()
        self.source: SampleSource | None = None

    def _corrections(self) -> set[str]:
        """The attribution corrections to apply: the study's, checked against the adapter, or
        by default readout where the adapter allows it."""
        spec, adapter = self.spec, self.loaded.adapter
        if spec.method == "exact":
            return set()
        if spec.corrections is None:
            return {"readout"} if adapter.plain_readout else set()
        missing = {
            name
            for name, supported in (
                ("qk", adapter.attention_norm_name is not None),
                ("readout", adapter.plain_readout),
            )
            if name in spec.corrections and not supported
        }
        if missing:
            keep = ", ".join(sorted(set(spec.corrections) - missing))
            raise StudyError(
                f"{self.where('corrections')}: the {adapter.family} adapter does not support "
                f"{' or '.join(sorted(missing))}; use corrections: [{keep}]"
            )
        return set(spec.corrections)

    @cached_property
    def cell(self) -> dict[Condition, tuple[int, int, int]]:
        """Index of each condition along (layer, position_group, component)."""
        spec = self.spec
        return {
            c: (
                self.layers.index(c.layer),
                spec.position_groups.index(c.position_group),
                spec.components.index(c.component),
            )
            for c in self.conditions
        }

    @property
    def sites(self) -> set[tuple[int, str]]:
        """(layer, component) pairs whose source activations the conditions read."""
        return {(layer, c.component) for c in self.conditions for layer in c.layers}

    def cost(self, sample: Sample) -> Cost:
        """Each condition resumed from its first patched layer and its group's first position,
        again once per noise-floor partner (whose source runs are further baselines)."""
        first = self.first_positions(sample, self.spec.target)
        cells = tuple((min(c.layers), first[c.position_group]) for c in self.conditions)
        partners = int(self.spec.noise_partners) if self.with_null_effect else 0
        return Cost(
            run=self.spec.target,
            baselines=2 + partners,
            cells=cells * (1 + partners),
            sites=len(self.sites),
        )

    @property
    def with_null_effect(self) -> bool:
        return self.spec.noise_floor == "mismatched"

    def attach(self, source: SampleSource) -> None:
        self.source = source
        self.position = {info.sample_id: index for index, info in enumerate(source.infos)}
        target = self.spec.target
        layouts = [(info.layouts or {}).get(target) for info in source.infos]
        count = self.spec.noise_partners if self.with_null_effect else 0
        self.partners = noise_partners(layouts, count, self.study.execution.seed)

    def notes(self) -> tuple[str, ...]:
        if not self.with_null_effect or self.source is None:
            return ()
        wanted = self.spec.noise_partners
        short = [
            (info.sample_id, len(found))
            for info, found in zip(self.source.infos, self.partners, strict=True)
            if len(found) < wanted
        ]
        if not short:
            return ()
        shown = ", ".join(f"{sample}: {found}" for sample, found in short[:3])
        more = ", …" if len(short) > 3 else ""
        return (
            f"noise floor: {len(short)} of {len(self.partners)} samples have fewer than {wanted} "
            f"other sample(s) of the same token layout ({shown}{more}); their missing "
            "null_effect partners stay NaN",
        )

    def variables(self) -> dict[str, ArraySpec]:
        patched = f"{self.spec.source} run patched into the {self.spec.target} run"
        estimated = "" if self.spec.method == "exact" else " (estimated where not verified)"
        effect = ArraySpec(
            EFFECT_DIMS,
            {
                "layer": list(self.layers),
                "position_group": list(self.spec.position_groups),
                "component": list(self.spec.components),
                "metric": list(METRICS),
            },
            long_name=f"answer metric with the {patched}{estimated}",
            units="1",
            may_be_nan=NORMALIZED_MAY_BE_NAN,
        )
        variables = {
            "effect": effect,
            "baseline": self.baseline_variable("run"),
        }
        if self.with_null_effect:
            partners = {"partner": list(range(self.spec.noise_partners))}
            variables["null_effect"] = ArraySpec(
                NULL_DIMS,
                {**partners, **{dim: effect.coords[dim] for dim in EFFECT_DIMS[1:]}},
                long_name=f"{effect.long_name}, source taken from another sample",
                units="1",
            )
            variables["null_partner"] = ArraySpec(
                ("sample", "partner"),
                partners,
                long_name="index (along sample) of the sample whose source run each noise-floor "
                "slot patched in (NaN: no partner of the same token layout)",
                units="1",
            )
        if "graddrop" in self.corrections:
            coords = {dim: effect.coords[dim] for dim in EFFECT_DIMS[1:-1]}
            variables["graddrop"] = ArraySpec(
                EFFECT_DIMS[:-1],
                coords,
                long_name="GradDrop magnitude: mean |estimate| with one later layer dropped",
                units="1",
            )
        if self.spec.method != "exact":
            for name in [n for n in VERIFIED if n in variables]:
                dims = variables[name].dims[:-1]
                variables[VERIFIED[name]] = ArraySpec(
                    dims,
                    {dim: variables[name].coords[dim] for dim in dims[1:]},
                    long_name=f"1 where {name} is exact (patched exactly, or a patch that changes "
                    "nothing), 0 where it is estimated",
                    units="1",
                )
        if self.spec.method == "attribution+verify":
            variables["agreement"] = ArraySpec(
                ("sample", "agreement_stat"),
                {"agreement_stat": list(AGREEMENT_STATS)},
                long_name="agreement of the estimate with exact patching on checked cells",
                units="1",
            )
        return variables

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        spec = self.spec
        arrays = {
            name: np.full(variable.shape(len(samples)), np.nan, dtype=np.float32)
            for name, variable in self.variables().items()
        }
        device = next(patcher.adapter.root.parameters()).device
        batch_size = self.study.execution.batch_size

        def on_device(sample: Sample, run: str) -> dict[str, torch.Tensor]:
            return {key: value.to(device) for key, value in sample.runs[run].items()}

        def answers(sample: Sample) -> tuple[int, int]:
            return (sample.audio_answer_id, sample.visual_answer_id)

        if self.source is None:  # computed outside a study run: these samples are the dataset
            self.attach(SampleSource.from_list(samples))
        # Samples of one token layout travel as rows of one forward. Exact patching compares
        # source and target activations bit for bit (first_change) with a target run of its own,
        # so it records sources one at a time: a batched forward may round differently.
        rows_per_forward = 1 if spec.method == "exact" else batch_size
        batches = layout_batches([s.runs[spec.source] for s in samples], rows_per_forward)
        runner = ExactRunner(patcher, self.study.execution.reuse, batch_size)

        def prepare(batch: Sequence[int]) -> list[tuple[tuple[torch.Tensor, Activations], Any]]:
            """Source runs and, for attribution, target linearizations of one batch."""
            runs = [on_device(samples[row], spec.source) for row in batch]
            recorded = patcher.record_rows(runs, self.sites)
            if spec.method == "exact":
                return [(found, None) for found in recorded]
            targets = [on_device(samples[row], spec.target) for row in batch]
            linearized = linearize_rows(
                patcher.adapter,
                targets,
                self.sites,
                [answers(samples[row]) for row in batch],
                attention="qk" in self.corrections,
                readout="readout" in self.corrections,
                graddrop="graddrop" in self.corrections,
                cache=runner.resumable(targets[0]),
            )
            return list(zip(recorded, linearized, strict=True))

        sources: dict[int, tuple[torch.Tensor, Activations]] = {}
        linearizations: dict[int, Linearization] = {}
        preparing = Batches(batch_size)
        for batch in batches:
            for row, (recorded, found) in zip(batch, preparing.map(batch, prepare), strict=True):
                sources[row], linearizations[row] = recorded, found
        rows = {self.position[s.sample_id]: row for row, s in enumerate(samples)}
        outside: dict[int, tuple[Sample, Activations]] = {}

        def partner_source(index: int) -> tuple[Sample, Activations]:
            """A partner's sample and source activations (recorded once per unit)."""
            if index in rows:
                return samples[rows[index]], sources[rows[index]][1]
            if index not in outside:
                assert self.source is not None
                partner = self.source.load(index, index + 1)[0]
                outside[index] = (
                    partner,
                    patcher.record(on_device(partner, spec.source), self.sites)[1],
                )
            return outside[index]

        for row, sample in enumerate(samples):
            target = on_device(sample, spec.target)
            masks = patcher.adapter.position_groups(sample.runs[spec.target]["input_ids"])
            ids = answers(sample)
            clean = answer_metrics(sources[row][0], *ids)
            if spec.method == "exact":
                conflict = answer_metrics(runner.start(target, masks, self.sites), *ids)
            else:
                linearization = linearizations.pop(row)
                runner.adopt(target, masks, linearization)
                conflict = {
                    name: torch.tensor([value]) for name, value in linearization.metrics.items()
                }
            arrays["baseline"][row] = baseline_rows(clean, conflict)
            # (variable, index of the cell's row in it, source activations)
            passes: list[tuple[str, tuple[int, ...], Activations]] = [
                ("effect", (row,), sources[row][1])
            ]
            for slot, index in enumerate(self.partners[self.position[sample.sample_id]]):
                partner, activations = partner_source(index)
                if _same_layout(sample, partner, spec.target):
                    arrays["null_partner"][row, slot] = index
                    passes.append(("null_effect", (row, slot), activations))
            if spec.method == "exact":
                for name, at, activations in passes:
                    tables = runner.patch(self.conditions, activations, ids, clean, conflict)
                    for condition, values in zip(self.conditions, tables, strict=True):
                        arrays[name][(*at, *self.cell[condition])] = values
                continue
            for name, at, activations in passes:
                delta = deltas(activations, linearization)
                cells = self._estimate(linearization, delta, masks, ids)
                estimated = {
                    metric: conflict[metric]
                    + torch.as_tensor(condition_changes(self.conditions, cells[metric]))
                    for metric in cells
                }
                tables = metric_rows(estimated, clean, conflict)
                if name == "effect" and "graddrop" in self.corrections:
                    magnitudes = graddrop_magnitudes(self.conditions, linearization, delta, masks)
                    for condition, magnitude in zip(self.conditions, magnitudes, strict=True):
                        arrays["graddrop"][(row, *self.cell[condition])] = magnitude
                checked = (
                    self._checked(sample, tables, arrays, row)
                    if name == "effect" and spec.method == "attribution+verify"
                    else []
                )
                exact = sorted(self._uncertain(runner, activations, delta, masks) | set(checked))
                estimates = tables.copy()
                if exact:
                    chosen = [self.conditions[index] for index in exact]
                    tables[exact] = runner.patch(chosen, activations, ids, clean, conflict)
                if checked:
                    arrays["agreement"][row] = _agreement(
                        estimates[checked],
                        tables[checked],
                        conflict,
                        min(spec.verify_top_k, len(self.conditions)),
                    )
                flags = np.zeros(len(self.conditions), dtype=np.float32)
                flags[exact] = 1
                for condition, values, flag in zip(self.conditions, tables, flags, strict=True):
                    arrays[name][(*at, *self.cell[condition])] = values
                    arrays[VERIFIED[name]][(*at, *self.cell[condition])] = flag
        return arrays

    def _estimate(
        self,
        linearization: Linearization,
        delta: dict[tuple[int, str], torch.Tensor],
        masks: dict[str, torch.Tensor],
        ids: tuple[int, int],
    ) -> dict[str, Cells]:
        """Per metric, each (layer, component, group) cell's estimated change: linear, plus the
        study's corrections."""
        adapter, groups = self.loaded.adapter, self.spec.position_groups
        cells = {
            metric: site_changes(delta, gradients, masks, groups)
            for metric, gradients in linearization.gradients.items()
        }
        corrections = []
        if "qk" in self.corrections:
            corrections.append(qk_corrections(adapter, linearization, delta, masks, groups))
        if "readout" in self.corrections:
            corrections.append(
                readout_corrections(adapter, linearization, delta, masks, groups, *ids)
            )
        for correction in corrections:
            for metric, values in correction.items():
                for key, value in values.items():
                    cells[metric][key] += value
        return cells

    def _uncertain(
        self,
        runner: ExactRunner,
        activations: Activations,
        delta: Activations,
        masks: Mapping[str, torch.Tensor],
    ) -> set[int]:
        """Indices of the conditions to patch exactly: those whose patch changes nothing (no
        run), then, within ``verify_budget`` of an exact sweep's work, the conditions whose
        estimate is least certain per unit of that work.

        A first-order estimate errs by terms of second order in the patch's change ``Δ``: the
        uncertainty of a condition is ``Σ ‖Δ‖²`` over its sites and positions. Work is what the
        exact run computes (:meth:`ExactRunner.costs`). Conditions are taken greedily by
        uncertainty over work while the budget lasts.
        """
        costs = runner.costs(self.conditions, activations)
        squared = {site: per_position(widened(change) ** 2).cpu() for site, change in delta.items()}
        spread = [
            sum(
                float(squared[(layer, c.component)][masks[c.position_group]].sum())
                for layer in c.layers
            )
            for c in self.conditions
        ]
        return budgeted(spread, costs, self.spec.verify_budget)

    def _checked(
        self, sample: Sample, tables: np.ndarray, arrays: dict[str, np.ndarray], row: int
    ) -> list[int]:
        """attribution+verify's check: the ``verify_top_k`` conditions with the largest
        estimated change of the logit difference, then as many random others (seeded by the
        sample)."""
        metric = METRICS.index("logit_diff")
        conflict = float(arrays["baseline"][row, 1, metric])
        change = np.abs(tables[:, metric] - conflict)
        ranking = change
        if "graddrop" in self.corrections:  # also check cells whose paths may cancel
            graddrop = np.array([arrays["graddrop"][(row, *self.cell[c])] for c in self.conditions])
            ranking = np.maximum(change, graddrop)
        k = min(self.spec.verify_top_k, len(self.conditions))
        top = [int(index) for index in np.argsort(-ranking, kind="stable")[:k]]
        others = [i for i in range(len(self.conditions)) if i not in set(top)]
        seed = zlib.crc32(f"{self.study.execution.seed}:{sample.sample_id}".encode())
        controls = [int(i) for i in np.random.default_rng(seed).permutation(others)[:k]]
        return top + controls


def _agreement(
    estimated: np.ndarray, exact: np.ndarray, conflict: dict[str, torch.Tensor], k: int
) -> tuple[float, float, float]:
    """:data:`AGREEMENT_STATS` of checked conditions: the estimate's top ``k`` first, then ``k``
    random others (tables (2k, metrics), estimated and exact)."""
    metric = METRICS.index("logit_diff")
    base = float(conflict["logit_diff"][0])
    estimate, truth = (np.abs(t[:, metric] - base) for t in (estimated, exact))
    exact_top = set(np.argsort(-truth, kind="stable")[:k])
    random_mean = float(truth[k:].mean()) if len(truth) > k else float("nan")
    return (
        spearman(estimate, truth),
        len(exact_top & set(range(k))) / k,
        float(truth[:k].mean()) / random_mean if random_mean > 0 else float("nan"),
    )


def _same_layout(first: Sample, second: Sample, run: str) -> bool:
    a, b = first.runs[run]["input_ids"], second.runs[run]["input_ids"]
    return a.shape == b.shape and bool(torch.equal(a, b))
