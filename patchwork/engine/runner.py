"""Run a study: validate everything, create the store, then compute and write unit by unit.

Data flows one way: study → plan → traces → store. A *unit* is a block of samples that owns whole
chunks of the store; it writes its data, then its ``done`` mark. Units already marked done are
skipped, so re-running an interrupted study resumes it. Units run in this process, or as tasks of
any :class:`concurrent.futures.Executor` (e.g. Dask's): each task loads the model once per worker
process, writes its own unit and returns only a small report.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from patchwork.data.sample import Sample
from patchwork.data.source import SampleSource
from patchwork.engine.distributed import workers_alive
from patchwork.engine.lock import check_unlocked, store_lock
from patchwork.errors import DataError, PatchworkError, RunInterrupted, StoreError, ctrl_c_behind
from patchwork.loading.model import LoadedModel, load_model
from patchwork.methods.method import Method, method_class
from patchwork.models.checkpoint import weights_fingerprint
from patchwork.patching.patcher import Patcher
from patchwork.store.metadata import recorded_root, refuse_links, unreadable_metadata
from patchwork.store.zarr_store import (
    DAMAGE,
    WEIGHTS_FINGERPRINT,
    ResultStore,
    SampleCoords,
    open_results,
    provenance,
    resolve_store_path,
    root_attributes,
    template,
)
from patchwork.study.loader import describe_changes, parse_study, study_hash
from patchwork.study.schema import Study

Report = Callable[[int], None]
Start = Callable[[int, int], None]
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


@dataclass(frozen=True)
class Prepared:
    """A study checked against its model and data, ready to run."""

    study: Study
    store: Path
    loaded: LoadedModel
    samples: SampleSource
    methods: tuple[Method, ...]
    units: tuple[tuple[int, int], ...]
    notes: tuple[str, ...] = ()
    """Warnings found while checking (nothing wrong, but worth a look)."""

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

    def unit(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], frozenset[str]]:
        """Compute one unit's arrays (in this process), and the position groups that had at
        least one position in one of its samples' runs."""
        samples = self.samples.load(start, stop)
        check_samples(self, samples)
        patcher = _patcher(self.loaded)
        arrays: dict[str, np.ndarray] = {}
        for method in self.methods:
            arrays.update(method.compute(samples, patcher))
        return arrays, self.present_groups(samples)

    def present_groups(self, samples: list[Sample]) -> frozenset[str]:
        """Position groups with at least one position in some run a method reads."""
        adapter = self.loaded.adapter
        runs = {run for method in self.methods for run in method.runs()}
        return frozenset(
            name
            for sample in samples
            for run in runs & set(sample.runs)
            for name, mask in adapter.position_groups(sample.runs[run]["input_ids"]).items()
            if bool(mask.any())
        )

    def requested_groups(self) -> tuple[str, ...]:
        """The position groups the study's interventions name."""
        named = (getattr(spec, "position_groups", ()) for spec in self.study.interventions)
        return tuple(dict.fromkeys(group for groups in named for group in groups))


def check_study(study: Study, config_only: bool = False) -> Prepared:
    """Every check :func:`run_study` makes before it computes, without the model's weights: the
    checkpoint's files and config, layer ranges, manifest rows and media files, token layouts and
    placeholder counts, answer and question words. The model is built on the meta device (no
    weights read, no memory); nothing is written. ``config_only=True`` accepts a checkpoint
    directory without its weight files."""
    return prepare(study, weights=False, config_only=config_only)


def store_path(study: Study, store_root: Path | None = None) -> Path:
    """Where ``study``'s store goes: ``store_root / study.store`` (default ``store/<name>.zarr``),
    refused when it would leave the store root."""
    root = Path(store_root) if store_root is not None else Path("store")
    return resolve_store_path(root, study.store or Path(f"{study.name}.zarr"))


def prepare(
    study: Study, store_root: Path | None = None, weights: bool = True, config_only: bool = False
) -> Prepared:
    """Load the model and samples and check everything a run needs; writes nothing.

    ``weights=False`` builds the model from its config alone (see :func:`check_study`)."""
    torch.manual_seed(study.execution.seed)
    torch.set_num_threads(study.execution.threads)
    root = Path(store_root) if store_root is not None else Path("store")
    store = store_path(study, store_root)
    loaded = load_model(study.model, study.where("model"), weights, config_only)
    methods = tuple(
        method_class(spec.kind)(spec, index, study, loaded)
        for index, spec in enumerate(study.interventions)
    )
    if weights:
        root.mkdir(parents=True, exist_ok=True)  # generated media are written under it, briefly
    samples = load_samples(
        study,
        loaded,
        media_root=root if weights else None,
        check=lambda sample: check_sample(loaded, methods, sample),
    )
    size = study.execution.unit_size
    units = tuple(
        (start, min(start + size, len(samples))) for start in range(0, len(samples), size)
    )
    for method in methods:
        method.attach(samples)
    first = samples.load(0, 1)
    notes = (*media_notes(loaded, first), *(note for m in methods for note in m.notes()))
    prepared = Prepared(study, store, loaded, samples, methods, units, notes)
    check_samples(prepared, first)  # a manifest's rows were each checked as they were read
    return prepared


def media_notes(loaded: LoadedModel, samples: list[Sample]) -> tuple[str, ...]:
    """Runs whose media lie far from what the model was trained on, where its loader can tell
    (testbed checkpoints: other clip lengths, picture sizes)."""
    if loaded.input_notes is None:
        return ()
    return tuple(
        note
        for sample in samples
        for run, inputs in sample.runs.items()
        for note in loaded.input_notes(inputs, f"sample {sample.sample_id}, run {run}")
    )


def run_study(
    study: Study,
    store_root: Path | None = None,
    *,
    executor: Executor | None = None,
    fresh: bool = False,
    progress: bool = False,
    on_start: Start | None = None,
    on_unit: Report | None = None,
    on_note: Note | None = None,
) -> RunSummary:
    """Run ``study``; results go to ``store_root / study.store`` (default ``store/<name>.zarr``).

    ``executor`` runs units as tasks (serial in this process when None). ``fresh`` removes an
    existing store first (saying so through ``on_note``). ``progress=True`` shows a progress bar
    that suits a notebook or a terminal (tqdm); or report progress yourself:
    ``on_start(total_samples, samples_to_compute)`` once, then ``on_unit(samples_in_unit)``
    after each unit this run computes. Nothing is written before every check passed; a second run
    on the same store is refused before its model loads.

    Raises:
        patchwork.errors.RunInterrupted: on Ctrl-C (a ``KeyboardInterrupt``), saying how many
            units are done; finished units stay in the store and a re-run resumes after them.
    """
    started = time.perf_counter()
    note = on_note or (lambda _: None)
    if progress:
        on_start, on_unit = _notebook_progress(study.name, on_start, on_unit)
    path = store_path(study, store_root)
    for folder in (path, path.parent):
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder} is a file, not a folder: choose another store")
    check_unlocked(path)  # before the model loads
    finished = None if fresh else _finished(study, store_path(study, store_root))
    if finished is not None:  # nothing to compute: the model is not loaded
        model, samples, units = finished
        if on_start:
            on_start(samples, 0)
        seconds = time.perf_counter() - started
        return RunSummary(store_path(study, store_root), model, samples, 0, units, seconds, 0.0)
    threads = torch.get_num_threads()
    prepared: Prepared | None = None
    try:
        # held from before the model loads: a run started meanwhile is refused, not the one
        # already loading (which would otherwise find its store taken over, or removed by --fresh)
        with store_lock(path):
            prepared = prepare(study, store_root)
            for line in prepared.notes:
                note(line)
            store_seconds, pending, present = _run_units(
                prepared, store_root, executor, fresh, on_start, on_unit, note
            )
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreError(_disk_full(store_path(study, store_root), prepared)) from None
    finally:
        torch.set_num_threads(threads)  # the caller's setting, as it was
    for group in prepared.requested_groups():
        if pending and group not in present:
            note(
                f"position group {group!r} has no position in any sample run here: its effects "
                "are those of an empty patch"
            )
    return _summary(
        prepared, len(pending), len(prepared.units) - len(pending), started, store_seconds
    )


def _refuse_nonfinite(
    store: ResultStore, arrays: dict[str, np.ndarray], prepared: Prepared, start: int
) -> None:
    """A unit whose results hold NaN or infinity where a method declares none is not written (it
    would fail verification and be computed again for ever): one line naming the samples."""
    found = store.nonfinite(arrays)
    if found:
        infos = prepared.samples.infos
        samples = sorted({infos[start + row].sample_id for _, row in found})
        names = sorted({name for name, _ in found})
        raise DataError(
            f"samples {', '.join(samples)}: {', '.join(names)} not finite (NaN or infinity) "
            "where the method declares finite values; check those samples' inputs (media, "
            "image_features) and the checkpoint's weights"
        )


def _disk_full(store: Path, prepared: Prepared | None) -> str:
    """One line for a full disk: the store, the space left and a unit's size (uncompressed)."""
    folder = store if store.exists() else store.parent
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    need = ""
    if prepared is not None:
        template = prepared.template()
        per_sample = sum(v.nbytes for v in template.data_vars.values()) / template.sizes["sample"]
        unit = per_sample * prepared.study.execution.unit_size
        need = f"; a unit needs up to {unit / 2**20:.1f} MiB"
    return (
        f"{store}: the disk is full ({free / 2**20:.1f} MiB free{need}) — free some space and "
        "run again to resume (finished units are kept)"
    )


def _run_units(
    prepared: Prepared,
    store_root: Path | None,
    executor: Executor | None,
    fresh: bool,
    on_start: Start | None,
    on_unit: Report | None,
    on_note: Note,
) -> tuple[float, list[tuple[int, int]], set[str]]:
    """Create or resume the store and compute every unit not yet done: (seconds spent writing,
    units computed, position groups present in their samples)."""
    study, store_path = prepared.study, prepared.store
    if fresh and store_path.exists():
        _remove_store(store_path, on_note)
    store = ResultStore.create_or_resume(
        store_path,
        prepared.loaded.name,
        prepared.template(),
        study.execution.unit_size,
        {
            **provenance(study.text, study.name, study_hash(study), study.overrides),
            WEIGHTS_FINGERPRINT: weights_fingerprint(prepared.loaded.model),
        },
        describe=lambda stored: describe_changes(
            str(stored.get("study", "")), study, stored.get("overrides") or ()
        ),
    )
    for line in store.repairs:
        on_note(line)
    done = store.done()
    pending = [(start, stop) for start, stop in prepared.units if not done[start:stop].all()]
    if on_start:
        on_start(len(prepared.samples), sum(stop - start for start, stop in pending))
    store_seconds, present = 0.0, set[str]()
    try:
        if executor is None:
            for start, stop in pending:
                arrays, groups = prepared.unit(start, stop)
                _refuse_nonfinite(store, arrays, prepared, start)
                writing = time.perf_counter()
                store.write_unit(start, arrays)
                store_seconds += time.perf_counter() - writing
                present |= groups
                if on_unit:
                    on_unit(stop - start)
        else:
            root = Path(store_root if store_root is not None else "store").resolve()
            task = UnitTask(study.text, study.overrides, _source_label(study), str(root))
            futures = [executor.submit(run_unit_task, task, start, stop) for start, stop in pending]
            waiting, alone_since = set(futures), None
            while waiting:
                completed, waiting = wait(waiting, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in completed:
                    start, stop, groups = _unit_result(future)
                    present |= groups
                    if on_unit:
                        on_unit(stop - start)
                if waiting and workers_alive(executor) == 0:
                    alone_since = alone_since or time.monotonic()
                    if time.monotonic() - alone_since > WORKERLESS_SECONDS:
                        for future in waiting:
                            future.cancel()
                        done = store.done()
                        units = sum(bool(done[a:b].all()) for a, b in prepared.units)
                        raise PatchworkError(
                            f"no Dask worker left for {WORKERLESS_SECONDS:g} s "
                            f"({units}/{len(prepared.units)} units done): start workers (or run "
                            "without --workers/--scheduler) and re-run to resume"
                        )
                else:
                    alone_since = None
    except BaseException as error:
        if ctrl_c_behind(error) is None:
            raise
        done = store.done()
        finished = sum(bool(done[start:stop].all()) for start, stop in prepared.units)
        raise RunInterrupted(
            f"{finished}/{len(prepared.units)} units done; re-run to resume"
        ) from None
    return store_seconds, pending, present


#: How long a distributed run waits with no worker at all before it gives up (seconds).
WORKERLESS_SECONDS = 30.0


def _unit_result(future: Any) -> tuple[int, int, frozenset[str]]:
    """A unit task's result; a task that killed its workers over and over is one line."""
    try:
        return future.result()  # type: ignore[no-any-return]
    except Exception as error:
        if type(error).__name__ != "KilledWorker":
            raise
        raise PatchworkError(
            f"a unit's task killed its Dask worker on every retry ({error}); a worker running "
            "out of memory is the usual cause: lower execution.batch_size or give workers more "
            "memory, then re-run to resume"
        ) from None


@dataclass(frozen=True)
class UnitTask:
    """What a worker needs to rebuild the run: the study text and overrides, its file, the store
    root."""

    study_text: str
    overrides: tuple[str, ...]
    study_source: str | None
    store_root: str


_WORKER_CACHE: dict[tuple[str, tuple[str, ...], str], tuple[Prepared, ResultStore]] = {}


def run_unit_task(task: UnitTask, start: int, stop: int) -> tuple[int, int, frozenset[str]]:
    """Executor task: compute samples ``start … stop-1`` and write them to the store; returns
    the unit and the position groups present in its samples.

    The model and samples are loaded once per worker process. Writing the unit's whole chunks,
    then its mark, makes a retried task (a worker killed mid-unit) harmless.
    """
    key = (task.study_text, task.overrides, task.store_root)
    if key not in _WORKER_CACHE:
        source = Path(task.study_source) if task.study_source else None
        study = parse_study(task.study_text, source, task.overrides)
        prepared = prepare(study, Path(task.store_root))
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (prepared, ResultStore(prepared.store, prepared.loaded.name))
    prepared, store = _WORKER_CACHE[key]
    groups = frozenset[str]()
    if not store.done()[start:stop].all():
        arrays, groups = prepared.unit(start, stop)
        _refuse_nonfinite(store, arrays, prepared, start)
        store.write_unit(start, arrays)
    return start, stop, groups


def load_samples(
    study: Study,
    loaded: LoadedModel,
    media_root: Path | None = None,
    check: Callable[[Sample], None] | None = None,
) -> SampleSource:
    """The study's samples, from its generator or its manifest (each of whose rows is built and
    ``check``-ed once now, then dropped: a block's rows are built again when it runs)."""
    if study.dataset.manifest is not None:
        from patchwork.loading.manifest import manifest_source

        return manifest_source(study, loaded, check)
    from patchwork.loading.generators import generate_samples

    return generate_samples(study, loaded, media_root=media_root)


def check_samples(prepared: Prepared, samples: list[Sample]) -> None:
    """:func:`check_sample` for each of ``samples``."""
    for sample in samples:
        check_sample(prepared.loaded, prepared.methods, sample)


def check_sample(loaded: LoadedModel, methods: Sequence[Method], sample: Sample) -> None:
    """Every run a method reads fits the model, and each method accepts the sample; errors name
    the manifest line of a manifest's sample."""
    try:
        for method in methods:
            for run in method.runs():
                if run not in sample.runs:
                    raise DataError(f"sample {sample.sample_id}: has no run {run!r}")
                loaded.adapter.check_inputs(
                    sample.runs[run], f"sample {sample.sample_id}, run {run}"
                )
            method.check_sample(sample)
    except PatchworkError as error:
        line = sample.meta.get("manifest_line")
        if line is None:
            raise
        raise type(error)(f"{line}: {error}") from None


_PATCHERS: dict[int, Patcher] = {}


def _patcher(loaded: LoadedModel) -> Patcher:
    if id(loaded.model) not in _PATCHERS:
        _PATCHERS.clear()
        _PATCHERS[id(loaded.model)] = Patcher(loaded.adapter)
    return _PATCHERS[id(loaded.model)]


def _notebook_progress(
    name: str, on_start: Start | None, on_unit: Report | None
) -> tuple[Start, Report]:
    """Callbacks that drive a tqdm bar (a widget in Jupyter, text elsewhere) and then the
    caller's own."""
    from tqdm.auto import tqdm

    bar = None

    def start(total: int, pending: int) -> None:
        nonlocal bar
        bar = tqdm(
            total=pending, desc=f"{name} ({total - pending}/{total} done before)", unit="sample"
        )
        if on_start:
            on_start(total, pending)

    def unit(count: int) -> None:
        if bar is not None:
            bar.update(count)
            if bar.n >= (bar.total or 0):
                bar.close()
        if on_unit:
            on_unit(count)

    return start, unit


def _source_label(study: Study) -> str | None:
    return str(study.source_path.resolve()) if study.source_path else None


def _remove_store(path: Path, on_note: Note) -> None:
    if not (path / "zarr.json").exists() and recorded_root(path) is None:
        raise StoreError(f"{path} exists but is not a patchwork store; not removing it")
    try:  # a damaged store is what --fresh is for: never verify it first
        count = sum(
            int(open_results(path, model, verify=False)["done"].sum()) for model in _models(path)
        )
        finished = f"{count} finished samples"
    except (StoreError, *DAMAGE):
        finished = "damaged; finished samples unknown"
    on_note(f"--fresh: removing the existing store {path} ({finished})")
    shutil.rmtree(path)


def _models(path: Path) -> list[str]:
    import zarr

    return sorted(name for name, _ in zarr.open_group(path, mode="r").groups())


def _summary(
    prepared: Prepared, run: int, skipped: int, started: float, store_seconds: float
) -> RunSummary:
    return RunSummary(
        store=prepared.store,
        model=prepared.loaded.name,
        samples=len(prepared.samples),
        units_run=run,
        units_skipped=skipped,
        seconds=time.perf_counter() - started,
        store_seconds=store_seconds,
    )


def _finished(study: Study, path: Path) -> tuple[str, int, int] | None:
    """(model, samples, units) when ``path`` holds this study's store with every unit done and
    reading back whole (checksums, declared finiteness, coordinates); None otherwise — then the
    run loads its model and resumes (or refuses) as usual."""
    if not (path / "zarr.json").exists():
        return None
    try:
        if root_attributes(path).get("config_sha256") != study_hash(study):
            return None
        refuse_links(path)  # a store holding a link is refused by the run itself
        models = _models(path)
        if len(models) != 1 or unreadable_metadata(path, models[0]):
            return None  # metadata to restore first
        store = ResultStore(path, models[0], mode="r")
        if not all(mark is True for mark in store.marks()):
            return None  # units to compute, or marks to restore
        if store.damaged_units() or store.damaged_coordinates():
            return None
    except (StoreError, *DAMAGE):
        return None
    units = store.units()
    return models[0], units[-1][1], len(units)
