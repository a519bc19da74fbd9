"""Turn a validated study and a loaded model into a sweep plan: cells and work units."""

from __future__ import annotations

from dataclasses import dataclass

from patchwork.errors import StudyError
from patchwork.interventions.patching import Condition, sweep_conditions
from patchwork.study.schema import Study


@dataclass(frozen=True)
class SweepPlan:
    """What to compute: the conditions of one sample, and the sample blocks (units)."""

    layers: tuple[int, ...]
    conditions: tuple[Condition, ...]
    units: tuple[tuple[int, int], ...]

    @property
    def sites(self) -> set[tuple[int, str]]:
        """(layer, component) pairs whose source activations the conditions read."""
        return {(layer, c.component) for c in self.conditions for layer in c.layers}


def plan_sweep(study: Study, num_layers: int, num_samples: int) -> SweepPlan:
    """Resolve the study's layers against the model and cut samples into units."""
    patching = study.patching
    layers = tuple(range(num_layers)) if patching.layers == "all" else patching.layers
    too_deep = [layer for layer in layers if layer >= num_layers]
    if too_deep:
        raise StudyError(
            f"{study.where('interventions', 0, 'layers')}: layer {too_deep[0]} is out of range; "
            f"the model has {num_layers} layers (0–{num_layers - 1})"
        )
    conditions = sweep_conditions(
        layers, patching.window, num_layers, patching.position_groups, patching.components
    )
    size = study.execution.unit_size
    units = tuple((start, min(start + size, num_samples)) for start in range(0, num_samples, size))
    return SweepPlan(layers=tuple(layers), conditions=tuple(conditions), units=units)
