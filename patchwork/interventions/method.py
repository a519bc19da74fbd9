"""What every intervention method provides to the engine: its store variables and its unit work.

A method is built from its study entry, the study and the loaded model; it checks what depends on
the model (layer ranges …), declares the arrays it stores (first dimension always ``sample``) and
computes them for a block of samples. The engine knows nothing else about it, so a new method is a
new module plus one line in :func:`method_registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from patchwork.data.sample import Sample
from patchwork.errors import StudyError
from patchwork.interventions.patching import Patcher
from patchwork.models.loading import LoadedModel
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.schema import Study


class Method(ABC):
    """One intervention entry of a study, bound to the loaded model."""

    kind: ClassVar[str]

    def __init__(self, spec: Any, index: int, study: Study, loaded: LoadedModel) -> None:
        self.spec = spec
        self.index = index
        self.study = study
        self.loaded = loaded

    def where(self, *field_path: str | int) -> str:
        """'file:line: interventions[i].field' for messages about this entry."""
        return self.study.where("interventions", self.index, *field_path)

    def resolve_layers(
        self, layers: Any, field_name: str | tuple[str | int, ...] = "layers"
    ) -> tuple[int, ...]:
        """'all' or explicit layer indices, checked against the model's depth.

        ``field_name`` is the field (or a field path inside this entry) named in errors.
        """
        count = self.loaded.adapter.num_layers
        resolved = tuple(range(count)) if layers == "all" else tuple(layers)
        too_deep = [layer for layer in resolved if layer >= count]
        path = field_name if isinstance(field_name, tuple) else (field_name,)
        if too_deep:
            raise StudyError(
                f"{self.where(*path)}: layer {too_deep[0]} is out of range; the model has "
                f"{count} layers (0–{count - 1})"
            )
        return resolved

    def runs(self) -> tuple[str, ...]:
        """The study runs this method reads."""
        return ()

    def check_sample(self, sample: Sample) -> None:  # noqa: B027 - optional hook
        """Raise DataError when a sample cannot serve this method."""

    @abstractmethod
    def variables(self) -> dict[str, ArraySpec]:
        """The arrays this method stores."""

    @abstractmethod
    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        """This method's arrays for a block of samples, each shaped ``variable.shape(len)``."""


def method_registry() -> dict[str, type[Method]]:
    """Every method by study ``kind``."""
    from patchwork.interventions.activation_patching import ActivationPatchingMethod
    from patchwork.interventions.attention_share import AttentionShareMethod
    from patchwork.interventions.base_comparison import BaseComparisonMethod
    from patchwork.interventions.knockout import AttentionKnockoutMethod
    from patchwork.interventions.logit_lens import LogitLensMethod
    from patchwork.interventions.probes import ProbesMethod

    methods: tuple[type[Method], ...] = (
        ActivationPatchingMethod,
        AttentionKnockoutMethod,
        LogitLensMethod,
        AttentionShareMethod,
        ProbesMethod,
        BaseComparisonMethod,
    )
    return {method.kind: method for method in methods}
