"""Steering as a study method: add ``α·d`` to the residual stream and measure the answer.

The direction ``d`` at layer ``l`` is the mean, over the *fit* samples, of the ``source`` run's
residual stream (the decoder layer's output) minus the steered ``run``'s, each averaged over the
positions of ``position_group`` — with the defaults, what hearing the clip without a conflicting
picture adds at the answer position. The study splits the dataset itself: a share
``fit_fraction`` of the samples, drawn by ``execution.seed`` from the whole dataset (the same
whatever the units and workers), fits the directions; every other sample is steered and measured,
so no clip is measured with a direction fitted on it. A control direction with the same norm and
no meaning — ``d``'s coordinates shuffled, seeded per layer — is steered alike.

For each held-out sample, layer, ``α`` in ``alphas`` and direction (``mean_difference`` |
``shuffled``), the ``run`` is run with ``α·d`` added to the layer's residual stream at the group's
positions (where activation patching writes it: after Qwen3-Omni's DeepStack additions, on every
Gemma 3n stream). Stored:

- ``steering_effect`` (sample, steering_layer, steering_alpha, steering_direction, metric): the
  answer metrics, ``normalized_effect`` against the ``source`` (1) and ``run`` (0) runs;
- ``steering_audio_top`` (same dims but metric): 1 where the audio answer is the top token;
- ``steering_baseline`` (sample, steering_run, metric): the unsteered runs;
- ``steering_held_out`` (sample,): 1 for measured samples, 0 for those the directions were
  fitted on (their effects stay NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from patchwork.data.sample import Sample
from patchwork.data.source import SampleSource
from patchwork.errors import StudyError
from patchwork.methods.method import Method
from patchwork.models.adapter import ModelAdapter
from patchwork.patching.batches import Batches
from patchwork.patching.metrics import answer_metrics, baseline_rows, metric_rows
from patchwork.patching.patcher import Activations, Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import Steering
from patchwork.study.specs import METRICS

DIRECTIONS = ("mean_difference", "shuffled")


def fit_split(count: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean (count,): True for the samples the directions are fitted on — ``round(fraction ×
    count)`` of them, at least one and leaving at least one, drawn by a generator seeded with
    (``seed``, "steering")."""
    fitted = min(max(round(fraction * count), 1), count - 1)
    chosen = np.random.default_rng([seed, *b"steering"]).permutation(count)[:fitted]
    split = np.zeros(count, dtype=bool)
    split[chosen] = True
    return split


def group_mean(activation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A site's activation (…, seq, hidden) averaged over the masked positions: (…, hidden)."""
    return activation[..., mask.to(activation.device), :].double().mean(-2)


def steered_logits(
    patcher: Patcher,
    inputs: dict[str, torch.Tensor],
    shifts: dict[int, torch.Tensor],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Answer logits (rows, vocab) of ``inputs`` repeated once per row, with ``shifts[layer]``
    (rows, …, hidden: the row's vector, zero for rows not steered there) added to the layer's
    residual stream at the ``mask`` positions."""
    adapter: ModelAdapter = patcher.adapter
    rows = next(iter(shifts.values())).shape[0]
    batch = adapter.forward_kwargs(adapter.repeat_inputs(inputs, rows))
    with torch.no_grad(), patcher.traced.trace(**batch):
        for layer in sorted(shifts):
            module, where = adapter.site(patcher.traced, layer, "residual")
            output = getattr(module, where)
            hidden = adapter.output_tensor("residual", output)
            # rows to the batch axis, a positions axis before hidden: (…, rows, 1, hidden)
            shift = shifts[layer].movedim(0, adapter.batch_axis("residual")).unsqueeze(-2)
            where_steered = mask.to(hidden.device).reshape(-1, 1)
            steered = hidden + (shift.to(hidden.device) * where_steered).to(hidden.dtype)
            value = (steered, *output[1:]) if isinstance(output, tuple) else steered
            setattr(module, where, value)
        logits = patcher.traced.output.logits.save()
    return adapter.answer_logits(logits)


class SteeringMethod(Method):
    kind = "steering"
    example = """\
  - kind: steering
    run: conflict
    source: clean
    layers: [0, 2]
    position_group: video
    alphas: [0, 1, 3]
    fit_fraction: 0.4
"""
    spec: Steering

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.layers = self.resolve_layers(self.spec.layers)
        self.directions: dict[int, dict[str, torch.Tensor]] | None = None
        self.source: SampleSource | None = None

    def runs(self) -> tuple[str, ...]:
        return (self.spec.run, self.spec.source)

    def attach(self, source: SampleSource) -> None:
        if len(source) < 2:
            raise StudyError(
                f"{self.where('fit_fraction')}: steering needs at least 2 samples, one to fit "
                f"the direction on and one to measure; the dataset has {len(source)}"
            )
        self.source = source
        self.fitted = fit_split(len(source), self.spec.fit_fraction, self.study.execution.seed)
        self.position = {info.sample_id: index for index, info in enumerate(source.infos)}

    def variables(self) -> dict[str, ArraySpec]:
        coords: dict[str, list] = {
            "steering_layer": list(self.layers),
            "steering_alpha": list(self.spec.alphas),
            "steering_direction": list(DIRECTIONS),
        }
        dims = ("sample", "steering_layer", "steering_alpha", "steering_direction")
        what = f"the {self.spec.run} run with α × direction added at layer"
        return {
            "steering_effect": ArraySpec(
                (*dims, "metric"),
                {**coords, "metric": list(METRICS)},
                long_name=f"answer metric of {what}",
                units="1",
            ),
            "steering_audio_top": ArraySpec(
                dims, coords, long_name=f"1 where the audio answer is the top token of {what}"
            ),
            "steering_baseline": ArraySpec(
                ("sample", "steering_run", "metric"),
                {"steering_run": [self.spec.run, self.spec.source], "metric": list(METRICS)},
                long_name="answer metric of each unsteered run",
                units="1",
            ),
            "steering_held_out": ArraySpec(
                ("sample",),
                long_name="1: measured (held out from the direction's fit); 0: fitted on",
                units="1",
            ),
        }

    def fit(self, patcher: Patcher) -> dict[int, dict[str, torch.Tensor]]:
        """Per layer, the mean-difference direction and its shuffled control, from the fit
        samples (computed once per process: the same in every worker)."""
        if self.directions is not None:
            return self.directions
        assert self.source is not None, "attach() first"
        spec, sites = self.spec, [(layer, "residual") for layer in self.layers]
        device = next(patcher.adapter.root.parameters()).device
        totals: dict[int, torch.Tensor] = {}
        for index in np.flatnonzero(self.fitted):
            sample = self.source.load(int(index), int(index) + 1)[0]
            means = {}
            for run in (spec.source, spec.run):
                inputs = {key: value.to(device) for key, value in sample.runs[run].items()}
                mask = patcher.adapter.position_groups(inputs["input_ids"])[spec.position_group]
                if not bool(mask.any()):
                    raise StudyError(
                        f"{self.where('position_group')}: sample {sample.sample_id}, run {run} "
                        f"has no {spec.position_group} position to measure the direction at"
                    )
                means[run] = _means(patcher.record(inputs, sites)[1], mask)
            for layer in self.layers:
                difference = means[spec.source][layer] - means[spec.run][layer]
                totals[layer] = totals.get(layer, 0) + difference
        count = int(self.fitted.sum())
        self.directions = {}
        for layer in self.layers:
            direction = (totals[layer] / count).float()
            order = np.random.default_rng([self.study.execution.seed, layer]).permutation(
                direction.shape[-1]
            )
            shuffled = direction[..., torch.as_tensor(order, device=direction.device)]
            self.directions[layer] = {"mean_difference": direction, "shuffled": shuffled}
        return self.directions

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        if self.source is None:  # computed outside a study run: these samples are the dataset
            self.attach(SampleSource.from_list(samples))
        spec = self.spec
        arrays = {
            name: np.full(variable.shape(len(samples)), np.nan, dtype=np.float32)
            for name, variable in self.variables().items()
        }
        directions = self.fit(patcher)
        device = next(patcher.adapter.root.parameters()).device
        conditions = [
            (li, ai, di)
            for li in range(len(self.layers))
            for ai in range(len(spec.alphas))
            for di in range(len(DIRECTIONS))
        ]
        batches = Batches(self.study.execution.batch_size)
        for row, sample in enumerate(samples):
            held_out = not self.fitted[self.position[sample.sample_id]]
            arrays["steering_held_out"][row] = float(held_out)
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            runs = {
                run: {key: value.to(device) for key, value in sample.runs[run].items()}
                for run in self.runs()
            }
            base = {run: answer_metrics(patcher.record(runs[run], [])[0], *ids) for run in runs}
            reference, steered_run = base[spec.source], base[spec.run]
            # stored in the order (run, source)
            arrays["steering_baseline"][row] = baseline_rows(reference, steered_run)[::-1]
            inputs = runs[spec.run]
            if not held_out:
                continue
            mask = patcher.adapter.position_groups(inputs["input_ids"])[spec.position_group]

            def steer(
                chunk: Sequence[tuple[int, int, int]], mask: Any = mask, inputs: Any = inputs
            ) -> torch.Tensor:
                shifts = {}
                for li, layer in enumerate(self.layers):
                    vectors = [
                        spec.alphas[ai] * directions[layer][DIRECTIONS[di]]
                        if cli == li
                        else torch.zeros_like(directions[layer]["mean_difference"])
                        for cli, ai, di in chunk
                    ]
                    if any(cli == li for cli, _, _ in chunk):
                        shifts[layer] = torch.stack(vectors)
                return steered_logits(patcher, inputs, shifts, mask)

            for chunk, logits in batches.run(conditions, steer):
                metrics = answer_metrics(logits, *ids)
                steered = metric_rows(metrics, reference, steered_run)
                top = (logits.argmax(-1) == sample.audio_answer_id).cpu().numpy()
                for (li, ai, di), value, audio_top in zip(chunk, steered, top, strict=True):
                    arrays["steering_effect"][row, li, ai, di] = value
                    arrays["steering_audio_top"][row, li, ai, di] = float(audio_top)
        return arrays


def _means(activations: Activations, mask: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each recorded residual averaged over the masked positions, keyed by layer."""
    return {layer: group_mean(value, mask) for (layer, _), value in activations.items()}
