"""``run_bench``: run every organism's studies, grade them, measure the faithfulness curves, and
write ``bench.zarr``, ``bench.png`` and ``faithfulness.png``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from patchwork.bench.faithfulness import AREAS, RANKED, Cell, Curves, measure
from patchwork.bench.lens import LENS_RUNS, lens_pair
from patchwork.bench.suite import (
    GRADES,
    METHODS,
    MIN_USABLE,
    SUITE,
    Organism,
    cell_scores,
    grade,
    organism_path,
    study_text,
    to_train,
    train_in_process,
)
from patchwork.errors import PatchworkError
from patchwork.testbed.windows import in_spans

#: Per organism with curves: the planted truth's areas, the full patch, the clips used of all.
ORGANISM_GRADES = (
    *(f"planted_{area}{side}" for area in AREAS for side in ("", "_low", "_high")),
    "full_patch",
    "faithfulness_used",
    "faithfulness_total",
)


def run_bench(
    out: Path,
    organisms: Sequence[Organism] = SUITE,
    samples: int = 16,
    log: Callable[[str], None] = print,
    min_usable: int = MIN_USABLE,
    train_jobs: int = 1,
) -> xr.Dataset:
    """Run every organism's methods, grade them (a grade from fewer than ``min_usable`` usable
    clips is ``untestable``), measure the faithfulness curves of every testable ranking, and
    write ``bench.zarr`` (organism × technique, and the curves over ``ranked`` × ``k``),
    ``bench.png`` and ``faithfulness.png`` into ``out``; returns the graded dataset. Organisms
    not cached yet are trained first, ``train_jobs`` at a time in worker processes (each with
    the current torch thread count: the same weights as one at a time)."""
    from patchwork.analysis import save_figure
    from patchwork.bench.figures import plot_bench, plot_faithfulness

    out = Path(out)
    if samples < 2:
        raise PatchworkError(f"bench needs at least 2 samples per organism, got {samples}")
    train_organisms(organisms, out / "organisms", train_jobs, log)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    measured: dict[str, Curves] = {}
    for organism in organisms:
        checkpoint = organism_path(organism, out / "organisms", log)
        stored: dict[str, xr.Dataset] = {}
        folder = out / "studies" / organism.slug
        folder.mkdir(parents=True, exist_ok=True)
        for method in organism.methods:
            results = _run_method(organism, checkpoint, method, samples, folder, out / "stores")
            rows[(organism.name, method)] = grade(organism, method, results, min_usable)
            if rows[(organism.name, method)]["status"] != "untestable":
                stored[method] = results
        if organism.window is not None or organism.heads is not None:
            study_file = folder / f"{organism.methods[0].replace('+', '-')}.yaml"
            curves = organism_faithfulness(
                organism, stored, study_file, out / "stores" / organism.slug, samples, min_usable
            )
            measured[organism.name] = curves
            for method, scores in curves.scores.items():
                if method in stored:
                    rows[(organism.name, method)].update(scores)
        for method in organism.methods:
            log(f"{organism.name} · {method}: {_line(rows[(organism.name, method)])}")
    graded = _dataset(rows, [o.name for o in organisms], measured, min_usable)
    graded.to_zarr(out / "bench.zarr", mode="w")
    save_figure(plot_bench(graded), out, "bench")
    if "faithfulness" in graded:
        save_figure(plot_faithfulness(graded), out, "faithfulness")
    return graded


def train_organisms(
    organisms: Sequence[Organism], cache: Path, jobs: int, log: Callable[[str], None]
) -> None:
    """Train the models ``organisms`` need that ``cache`` lacks, ``jobs`` at a time in spawned
    worker processes (one at a time, in this process, for ``jobs`` 1)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    missing = to_train(organisms, cache)
    if jobs < 2 or len(missing) < 2:
        for organism in missing:
            organism_path(organism, cache, log)
        return
    log(f"training {len(missing)} organisms, {jobs} at a time, into {cache} (once; cached)")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    with ProcessPoolExecutor(min(jobs, len(missing)), mp_context=context) as pool:
        count = len(missing)
        trained = pool.map(
            train_in_process, missing, [cache] * count, [torch.get_num_threads()] * count
        )
        for organism, path in zip(missing, trained, strict=True):
            log(f"trained organism {organism.name!r} into {path}")


def _run_method(
    organism: Organism, checkpoint: Path, method: str, samples: int, folder: Path, stores: Path
) -> xr.Dataset:
    """Write and run ``method``'s study on ``organism`` (the logit lens: one per run it reads,
    joined by :func:`~patchwork.bench.lens.lens_pair`); its results."""
    from patchwork.engine.runner import run_study
    from patchwork.store.zarr_store import open_results
    from patchwork.study import load_study

    found = []
    for lens_run in LENS_RUNS if method == "logit_lens" else ("conflict",):
        suffix = f"-{lens_run}" if method == "logit_lens" else ""
        study_file = folder / f"{method.replace('+', '-')}{suffix}.yaml"
        study_file.write_text(study_text(organism, checkpoint, method, samples, lens_run))
        summary = run_study(load_study(study_file), store_root=stores / organism.slug)
        found.append(open_results(summary.store).load())
    return lens_pair(*found) if method == "logit_lens" else found[0]


def organism_faithfulness(
    organism: Organism,
    stored: Mapping[str, xr.Dataset],
    study_file: Path,
    store_root: Path,
    samples: int,
    min_usable: int = MIN_USABLE,
) -> Curves:
    """The faithfulness curves (:mod:`patchwork.bench.faithfulness`) of each method in ``stored``
    (method → its results) and of the planted truth, on the clips of ``study_file`` (any of the
    organism's studies: they share clips and runs). Cells: every layer's heads on the window
    organisms, every head on the head organisms."""
    from patchwork.engine.runner import prepare
    from patchwork.patching.heads import head_count
    from patchwork.study import load_study

    prepared = prepare(load_study(study_file), store_root=store_root)
    adapter = prepared.loaded.adapter
    layers, heads = range(adapter.num_layers), range(head_count(adapter))
    cells: list[Cell]
    if organism.heads is not None:
        cells = [frozenset({(layer, head)}) for layer in layers for head in heads]
        truth = set(organism.heads)
        planted = np.array([next(iter(cell)) in truth for cell in cells])
    else:
        assert organism.window is not None
        cells = [frozenset((layer, head) for head in heads) for layer in layers]
        planted = np.array([in_spans(layer, organism.window) for layer in layers])
    scored = {method: cell_scores(organism, method, results) for method, results in stored.items()}
    rankings = {method: scores for method, scores in scored.items() if scores is not None}
    return measure(prepared, cells, rankings, planted, samples, min_usable)


def _line(grades: dict[str, Any]) -> str:
    shown = [f"{key} {value}" for key, value in grades.items() if isinstance(value, str) and value]
    shown += [
        f"{key} {value:.3g}"
        for key, value in grades.items()
        if not isinstance(value, str) and np.isfinite(value)
    ]
    return ", ".join(shown)


def _dataset(
    rows: dict[tuple[str, str], dict[str, Any]],
    organisms: list[str],
    measured: Mapping[str, Curves] | None = None,
    min_usable: int = MIN_USABLE,
) -> xr.Dataset:
    methods = [method for method in METHODS if any(m == method for _, m in rows)]
    variables: dict[str, Any] = {}
    for name in GRADES:
        text = name == "status"
        values = np.full((len(organisms), len(methods)), "" if text else np.nan, dtype=object)
        for (organism, method), grades in rows.items():
            values[organisms.index(organism), methods.index(method)] = grades.get(name, np.nan)
        variables[name] = (("organism", "technique"), values.astype(str if text else np.float64))
    coords: dict[str, Any] = {"organism": organisms, "technique": methods}
    measured = measured or {}
    lengths = [len(c["top"]) for found in measured.values() for c in found.curves.values()]
    if lengths:
        width = max(lengths)
        curves = np.full((len(organisms), len(methods), len(RANKED), width), np.nan)
        planted = np.full((len(organisms), len(RANKED), width), np.nan)
        per_organism = {name: np.full(len(organisms), np.nan) for name in ORGANISM_GRADES}
        for organism, found in measured.items():
            row = organisms.index(organism)
            per_organism["faithfulness_used"][row] = found.used
            per_organism["faithfulness_total"][row] = found.total
            per_organism["full_patch"][row] = found.full_patch
            for name, sides in found.curves.items():
                stacked = np.stack([sides[side] for side in RANKED])
                if name == "planted":
                    planted[row, :, : stacked.shape[1]] = stacked
                    for key, value in found.scores[name].items():
                        per_organism[f"planted_{key}"][row] = value
                elif name in methods:
                    curves[row, methods.index(name), :, : stacked.shape[1]] = stacked
        variables["faithfulness"] = (("organism", "technique", "ranked", "k"), curves)
        variables["planted_faithfulness"] = (("organism", "ranked", "k"), planted)
        variables.update({name: (("organism",), values) for name, values in per_organism.items()})
        coords.update(ranked=list(RANKED), k=np.arange(1, width + 1))
    # not "method": Dataset.sel(method=...) is the inexact-matching argument
    graded = xr.Dataset(variables, coords=coords)
    graded.attrs.update(min_usable=min_usable)
    return graded
