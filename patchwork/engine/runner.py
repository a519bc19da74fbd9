"""Run a study: validate everything, create the store, then compute and write unit by unit.

Data flows one way: study → plan → traces → store. A *unit* is a block of samples that owns whole
chunks of the store; it writes its data, then its ``done`` mark. Units already marked done are
skipped, so re-running an interrupted study resumes it. Units run in this process, or as tasks of
any :class:`concurrent.futures.Executor` (e.g. Dask's): each task loads the model once per worker
process, writes its own unit and returns only a small report.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from patchwork.data.sample import Sample
from patchwork.data.source import SampleSource
from patchwork.engine.lock import store_lock
from patchwork.errors import DataError, StoreError
from patchwork.interventions.method import Method, method_registry
from patchwork.interventions.patching import Patcher
from patchwork.models.loading import LoadedModel, load_model
from patchwork.store.zarr_store import (
    ResultStore,
    SampleCoords,
    open_results,
    provenance,
    resolve_store_path,
    template,
)
from patchwork.study.loader import describe_changes, parse_study, study_hash
from patchwork.study.schema import Study

Report = Callable[[int], None]
Note = Callable[[str], None]


@dataclass(frozen=True)
class RunSummary:
    """What a run did: where it wrote, how much it computed and skipped, how long it took
    (``store_seconds``: time spent writing units to the store, serial runs)."""

    store: Path
    model: str
    samples: int
    units_run: int
    units_skipped: int
    seconds: float
    store_seconds: float
    layer_profile: xr.DataArray | None
    """Mean normalized effect over finished samples, (layer, position_group), of the first
    patched component; None when the study has no activation patching."""


@dataclass(frozen=True)
class Prepared:
    """A study checked against its model and data, ready to run."""

    study: Study
    store: Path
    loaded: LoadedModel
    samples: SampleSource
    methods: tuple[Method, ...]
    units: tuple[tuple[int, int], ...]

    def template(self) -> xr.Dataset:
        """The store template: every method's arrays over every sample."""
        infos = self.samples.infos
        arrays = {}
        for method in self.methods:
            arrays.update(method.variables())
        coords = SampleCoords(
            samples=[info.sample_id for info in infos],
            audio_answers=[info.audio_answer for info in infos],
            visual_answers=[info.visual_answer for info in infos],
        )
        return template(coords, arrays, self.study.execution.unit_size)

    def unit(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Compute one unit's arrays (in this process)."""
        samples = self.samples.load(start, stop)
        check_samples(self, samples)
        patcher = _patcher(self.loaded)
        arrays: dict[str, np.ndarray] = {}
        for method in self.methods:
            arrays.update(method.compute(samples, patcher))
        return arrays


def prepare(study: Study, store_root: Path | None = None) -> Prepared:
    """Load the model and samples and check everything a run needs; writes nothing."""
    torch.manual_seed(study.execution.seed)
    root = Path(store_root) if store_root is not None else Path("store")
    store = resolve_store_path(root, study.store or Path(f"{study.name}.zarr"))
    loaded = load_model(study.model, study.where("model"))
    registry = method_registry()
    methods = tuple(
        registry[spec.kind](spec, index, study, loaded)
        for index, spec in enumerate(study.interventions)
    )
    root.mkdir(parents=True, exist_ok=True)  # generated media are written under it, briefly
    samples = load_samples(study, loaded, media_root=root)
    size = study.execution.unit_size
    units = tuple(
        (start, min(start + size, len(samples))) for start in range(0, len(samples), size)
    )
    prepared = Prepared(study, store, loaded, samples, methods, units)
    check_samples(prepared, samples.load(0, 1))
    return prepared


def run_study(
    study: Study,
    store_root: Path | None = None,
    *,
    executor: Executor | None = None,
    fresh: bool = False,
    on_start: Report | None = None,
    on_unit: Report | None = None,
    on_note: Note | None = None,
) -> RunSummary:
    """Run ``study``; results go to ``store_root / study.store`` (default ``store/<name>.zarr``).

    ``executor`` runs units as tasks (serial in this process when None). ``fresh`` removes an
    existing store first (saying so through ``on_note``). ``on_start(total_samples)`` and
    ``on_unit(samples_in_unit)`` report progress. Nothing is written before every check passed.
    """
    started = time.perf_counter()
    prepared = prepare(study, store_root)
    store_path = prepared.store
    with store_lock(store_path):
        if fresh and store_path.exists():
            _remove_store(store_path, on_note)
        store = ResultStore.create_or_resume(
            store_path,
            prepared.loaded.name,
            prepared.template(),
            study.execution.unit_size,
            provenance(study.text, study.name, study_hash(study)),
            describe=lambda stored_text: describe_changes(stored_text, study),
        )
        done = store.done()
        if on_start:
            on_start(len(prepared.samples))
        pending = []
        for start, stop in prepared.units:
            if done[start:stop].all():
                if on_unit:
                    on_unit(stop - start)
            else:
                pending.append((start, stop))
        store_seconds = 0.0
        if executor is None:
            for start, stop in pending:
                arrays = prepared.unit(start, stop)
                writing = time.perf_counter()
                store.write_unit(start, arrays)
                store_seconds += time.perf_counter() - writing
                if on_unit:
                    on_unit(stop - start)
        else:
            root = Path(store_root if store_root is not None else "store").resolve()
            task = UnitTask(study.text, _source_label(study), str(root))
            futures = [executor.submit(run_unit_task, task, start, stop) for start, stop in pending]
            for future in as_completed(futures):
                start, stop = future.result()
                if on_unit:
                    on_unit(stop - start)
    return _summary(
        prepared, len(pending), len(prepared.units) - len(pending), started, store_seconds
    )


@dataclass(frozen=True)
class UnitTask:
    """What a worker needs to rebuild the run: the study text, its file, the store root."""

    study_text: str
    study_source: str | None
    store_root: str


_WORKER_CACHE: dict[tuple[str, str], tuple[Prepared, ResultStore]] = {}


def run_unit_task(task: UnitTask, start: int, stop: int) -> tuple[int, int]:
    """Executor task: compute samples ``start … stop-1`` and write them to the store.

    The model and samples are loaded once per worker process. Writing the unit's whole chunks,
    then its mark, makes a retried task (a worker killed mid-unit) harmless.
    """
    key = (task.study_text, task.store_root)
    if key not in _WORKER_CACHE:
        study = parse_study(task.study_text, Path(task.study_source) if task.study_source else None)
        prepared = prepare(study, Path(task.store_root))
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (prepared, ResultStore(prepared.store, prepared.loaded.name))
    prepared, store = _WORKER_CACHE[key]
    if not store.done()[start:stop].all():
        store.write_unit(start, prepared.unit(start, stop))
    return start, stop


def load_samples(study: Study, loaded: LoadedModel, media_root: Path | None = None) -> SampleSource:
    """The study's samples, from its generator or its manifest."""
    if study.dataset.manifest is not None:
        from patchwork.data.manifest import load_manifest

        return SampleSource.from_list(load_manifest(study, loaded))
    from patchwork.data.generators import generate_samples

    return generate_samples(study, loaded, media_root=media_root)


def check_samples(prepared: Prepared, samples: list[Sample]) -> None:
    """Every run a method reads fits the model, and each method accepts the sample."""
    for sample in samples:
        for method in prepared.methods:
            for run in method.runs():
                if run not in sample.runs:
                    raise DataError(f"sample {sample.sample_id}: has no run {run!r}")
                prepared.loaded.adapter.check_inputs(
                    sample.runs[run], f"sample {sample.sample_id}, run {run}"
                )
            method.check_sample(sample)


_PATCHERS: dict[int, Patcher] = {}


def _patcher(loaded: LoadedModel) -> Patcher:
    if id(loaded.model) not in _PATCHERS:
        _PATCHERS.clear()
        _PATCHERS[id(loaded.model)] = Patcher(loaded.adapter)
    return _PATCHERS[id(loaded.model)]


def _source_label(study: Study) -> str | None:
    return str(study.source_path.resolve()) if study.source_path else None


def _remove_store(path: Path, on_note: Note | None) -> None:
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path} exists but is not a patchwork store; not removing it")
    done = sum(int(open_results(path, model)["done"].sum()) for model in _models(path))
    if on_note:
        on_note(f"--fresh: removing the existing store {path} ({done} finished samples)")
    shutil.rmtree(path)


def _models(path: Path) -> list[str]:
    import zarr

    return sorted(name for name, _ in zarr.open_group(path, mode="r").groups())


def _summary(
    prepared: Prepared, run: int, skipped: int, started: float, store_seconds: float
) -> RunSummary:
    results = open_results(prepared.store, prepared.loaded.name)
    profile = None
    if "effect" in results:
        effect = results["effect"].sel(metric="normalized_effect").isel(component=0)
        profile = effect.where(results["done"]).mean("sample").compute()
    return RunSummary(
        store=prepared.store,
        model=prepared.loaded.name,
        samples=len(prepared.samples),
        units_run=run,
        units_skipped=skipped,
        seconds=time.perf_counter() - started,
        store_seconds=store_seconds,
        layer_profile=profile,
    )
