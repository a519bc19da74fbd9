"""What every intervention method provides to the engine: its store variables and its unit work.

A method is built from its study entry, the study and the loaded model; it checks what depends on
the model (layer ranges …), declares the arrays it stores (first dimension always ``sample``) and
computes them for a block of samples. The engine knows nothing else about it, so a new method is a
new module plus one entry point (``patchwork.methods`` in ``pyproject.toml``; see
:mod:`patchwork.plugins`). A method from another package also names the pydantic model of its
study entry (:attr:`Method.spec_model`), which the study loader checks with file and line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from patchwork import plugins
from patchwork.data.sample import Sample
from patchwork.data.source import SampleSource
from patchwork.errors import DataError, StudyError
from patchwork.loading.model import LoadedModel
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.schema import PluginIntervention, Study
from patchwork.study.specs import METRICS


@dataclass(frozen=True)
class Cost:
    """One sample's work for a method, as ``patchwork plan`` estimates it (see
    :mod:`patchwork.engine.cost`): full forwards of ``run`` that change nothing (``baselines``:
    the unpatched runs) and one entry per cell, the first decoder layer and the first position
    that cell changes — a run resumed there costs the share (L − layer)/L · (S − position)/S of a
    forward; ``(0, 0)`` is a whole forward. ``sites`` counts the activations recorded per
    position (for the memory estimate)."""

    run: str
    baselines: int
    cells: tuple[tuple[int, int], ...] = ()
    sites: int = 0


#: Answer metrics are finite but for the normalized effect, which is NaN where a sample's two runs
#: give the same logit difference (nothing to normalize by).
NORMALIZED_MAY_BE_NAN = {"metric": ["normalized_effect"]}


class Method(ABC):
    """One intervention entry of a study, bound to the loaded model."""

    kind: ClassVar[str]
    #: The study entry's model, for a method from another package (patchwork's own are in
    #: :mod:`patchwork.study.schema`); its entry arrives validated by it.
    spec_model: ClassVar[type[BaseModel] | None] = None
    #: A study entry (YAML, indented as an item of ``interventions:``) that runs this method on a
    #: tiny model of three decoder layers with runs ``clean`` and ``conflict``: the command
    #: matrix test runs every registered kind's example through every command.
    example: ClassVar[str | None] = None

    def __init__(self, spec: Any, index: int, study: Study, loaded: LoadedModel) -> None:
        if isinstance(spec, PluginIntervention) and self.spec_model is not None:
            spec = self.spec_model.model_validate(spec.model_dump())
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

    def attach(self, source: SampleSource) -> None:  # noqa: B027 - optional hook
        """Called once the study's samples are known, before any unit runs: a method that reads
        samples outside the unit it computes (e.g. noise-floor partners) keeps ``source``."""

    def notes(self) -> tuple[str, ...]:
        """Warnings about the study's samples for this method (after :meth:`attach`)."""
        return ()

    def check_sample(self, sample: Sample) -> None:  # noqa: B027 - optional hook
        """Raise DataError when a sample cannot serve this method."""

    @property
    def sites(self) -> set[tuple[int, str]]:
        """(layer, component) module sites this method reads or patches, resolved against the
        model by ``validate`` and ``plan``; none by default."""
        return set()

    def cost(self, sample: Sample) -> Cost:
        """This method's work on one sample (:class:`Cost`); by default one full forward of
        each run it reads and no cells."""
        runs = self.runs() or tuple(sample.runs)
        return Cost(run=runs[0], baselines=len(runs))

    def first_positions(self, sample: Sample, run: str) -> dict[str, int]:
        """The first position of each position group in ``run`` (its length where empty)."""
        groups = self.loaded.adapter.position_groups(sample.runs[run]["input_ids"])
        return {
            name: int(mask.reshape(-1).nonzero()[0]) if bool(mask.any()) else mask.numel()
            for name, mask in groups.items()
        }

    @abstractmethod
    def variables(self) -> dict[str, ArraySpec]:
        """The arrays this method stores."""

    @abstractmethod
    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        """This method's arrays for a block of samples, each shaped ``variable.shape(len)``."""


def method_class(kind: str) -> type[Method]:
    """The method registered for study ``kind`` (entry point ``patchwork.methods``)."""
    method: type[Method] = plugins.load(plugins.METHODS, kind)
    return method


def method_registry() -> dict[str, type[Method]]:
    """Every installed method by study ``kind`` (imports them all)."""
    return {kind: method_class(kind) for kind in plugins.names(plugins.METHODS)}


class SourceIntoTarget(Method):
    """A method that patches activations of its entry's ``source`` run into its ``target`` run:
    both runs of a sample must hold the same tokens at the same positions."""

    def runs(self) -> tuple[str, ...]:
        return (self.spec.source, self.spec.target)

    def check_sample(self, sample: Sample) -> None:
        first, second = (sample.runs[run]["input_ids"] for run in self.runs())
        if first.shape != second.shape or not torch.equal(first, second):
            raise DataError(
                f"sample {sample.sample_id}: runs {self.spec.source!r} and "
                f"{self.spec.target!r} differ in token layout; patching needs the same tokens at "
                "the same positions"
            )

    def baseline_variable(self, run_dim: str) -> ArraySpec:
        """The unpatched runs' metrics, (sample, ``run_dim`` = [source, target], metric)."""
        return ArraySpec(
            ("sample", run_dim, "metric"),
            {run_dim: list(self.runs()), "metric": list(METRICS)},
            long_name="answer metric of each unpatched run",
            units="1",
            may_be_nan=NORMALIZED_MAY_BE_NAN,
        )
