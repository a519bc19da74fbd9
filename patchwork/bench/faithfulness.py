"""Faithfulness curves in the style of MIB (Mueller et al. 2025, arXiv 2504.13151): how much of
the picture's effect do a method's top-ranked cells carry on their own, and how little its
bottom-ranked ones?

A *cell* is a set of attention heads' outputs at the text and answer positions, where the planted
organisms read the picture: all heads of one layer on the window organisms (the truth is a set of
layers), one head on the head organisms. A *circuit* of cells is patched from the clean run into
the conflict run at once (every other head keeps the conflict run's output; MLPs and everything
after recompute), and its faithfulness is

    f(C) = Σ_clips (ld(C) − ld(conflict)) / Σ_clips (ld(all cells) − ld(conflict))

over the usable clips (:func:`~patchwork.analysis.ground_truth.usable_clips`; ld: logit
difference): 0 is the conflict run, 1 the full patch — which on these organisms is the clean run
itself (``full_patch``, the full patch's share of the clean − conflict gap, says so).

Each ranking of the cells (a method's mean score per cell over its usable clips, or the planted
truth's: planted cells first) gives a top-k curve (its k highest cells patched) and a bottom-k
curve (its k lowest), k = 1…K. Areas are trapezoids over the fraction of cells k/K from
f(0) = 0:

- ``cpr``: area under the top-k curve (1: the full patch's restoration from the first cell on;
  MIB's CPR);
- ``cmd``: area between the top-k curve and the full patch, ∫|1 − f| (0 best; MIB's CMD);
- ``bottom_area``: area under the bottom-k curve (low: the cells ranked last carry little).

Each area has a 95% interval over clips (``NAME_low``, ``NAME_high``): the percentile bootstrap
of whole usable clips (:func:`~patchwork.analysis.bootstrap_weights`, 1000 resamples, seed 0),
each resample's sums giving its curves and areas; the rankings, and so the circuits patched, are
held fixed.

Ties in a ranking (scores within :data:`~patchwork.analysis.ground_truth.TIE_TOLERANCE`) are
broken against the planted truth — unplanted cells first among equals on the top curve, planted
ones first on the bottom curve — so no method earns area from a tie.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from patchwork.analysis.ground_truth import TIE_TOLERANCE, average_ranks, usable_clips

if TYPE_CHECKING:
    import torch

    from patchwork.engine.runner import Prepared

#: A cell: the (layer, query head) pairs whose outputs it patches.
Cell = frozenset[tuple[int, int]]
#: Patched runs per forward.
ROWS_PER_FORWARD = 64
RANKED = ("top", "bottom")
#: The areas of a ranking, each stored with its interval (``NAME_low``, ``NAME_high``).
AREAS = ("cpr", "cmd", "bottom_area")
#: Bootstrap resamples of the areas' intervals.
RESAMPLES = 1000


def cell_orders(
    scores: np.ndarray, planted: np.ndarray, tolerance: float = TIE_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """The cells' indices from the highest score (top curve) and from the lowest (bottom curve),
    ties (:func:`~patchwork.analysis.ground_truth.average_ranks`) broken against ``planted``
    (bool per cell), then by index. NaN scores rank lowest."""
    values = np.where(np.isfinite(scores), scores, -np.inf)
    finite = values[np.isfinite(values)]
    floor = (finite.min() - 1.0) if finite.size else 0.0
    ranks = average_ranks(np.where(np.isfinite(values), values, floor), tolerance)
    marked = np.asarray(planted, dtype=int)
    top = np.lexsort((marked, -ranks))
    bottom = np.lexsort((-marked, ranks))
    return top, bottom


def areas(curve: np.ndarray) -> dict[str, float]:
    """``area`` (under ``curve``, f(1…K)) and ``distance`` (between it and 1): trapezoids over
    k/K from f(0) = 0."""
    found = _areas(np.asarray(curve, dtype=np.float64)[None])
    return {name: float(values[0]) for name, values in found.items()}


def _areas(curves: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`areas` of every row of ``curves`` (rows, K)."""
    values = np.concatenate([np.zeros((len(curves), 1)), curves], axis=1)
    width = 1.0 / (values.shape[1] - 1)

    def trapezoid(heights: np.ndarray) -> np.ndarray:
        return ((heights[:, 1:] + heights[:, :-1]) / 2).sum(axis=1) * width

    return {"area": trapezoid(values), "distance": trapezoid(np.abs(1.0 - values))}


@dataclass
class Curves:
    """Faithfulness of one organism: per ranking (a method, or ``"planted"``) its ``top`` and
    ``bottom`` curves (K,) and areas (:data:`AREAS`, each with ``_low`` and ``_high``, its 95%
    interval over clips); the full patch's share of the clean − conflict gap; the
    clips used of all."""

    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    full_patch: float = float("nan")
    used: int = 0
    total: int = 0


def measure(
    prepared: Prepared,
    cells: Sequence[Cell],
    rankings: Mapping[str, np.ndarray],
    planted: np.ndarray,
    samples: int,
    min_usable: int,
) -> Curves:
    """Patch every ranking's top-k and bottom-k circuits of ``cells`` into the conflict run of
    the first ``samples`` clips of ``prepared`` (a :class:`~patchwork.engine.runner.Prepared`
    study with ``clean`` and ``conflict`` runs) and grade them. ``rankings``: name → score per
    cell. The planted truth's ranking is added as ``"planted"``: planted cells first, each
    class ordered by the cell's own faithfulness (patched alone), so the truth's curves are the
    best its cells allow one at a time. Fewer than ``min_usable`` usable clips: no curves
    (untestable)."""
    orders = {name: cell_orders(values, planted) for name, values in rankings.items()}
    singles = [np.array([cell]) for cell in range(len(cells))]
    changed, clean, conflict = _measure_orders(prepared, cells, orders, singles, samples)
    usable = usable_clips(xr.DataArray(clean), xr.DataArray(conflict)).values
    result = Curves(used=int(usable.sum()), total=len(usable))
    if result.used < min_usable:
        return result

    from patchwork.analysis.bootstrap import bootstrap_weights

    # row 0: every usable clip once; rows 1…: the bootstrap resamples of whole clips
    weights = np.vstack(
        [np.ones(result.used), bootstrap_weights(result.used, RESAMPLES, seed=0).values]
    )

    def restored(found: Mapping[frozenset[int], np.ndarray], order: np.ndarray) -> np.ndarray:
        prefixes = [found[frozenset(order[:k].tolist())] for k in range(1, len(order) + 1)]
        return np.stack(prefixes, axis=-1)  # (1 + resamples, K)

    found = {
        circuit: weights @ (values[usable] - conflict[usable])
        for circuit, values in changed.items()
    }
    alone = np.array([found[frozenset({cell})][0] for cell in range(len(cells))])
    marked = np.asarray(planted, dtype=int)
    orders["planted"] = (np.lexsort((-alone, -marked)), np.lexsort((alone, marked)))
    missing, _, _ = _measure_orders(
        prepared, cells, {"planted": orders["planted"]}, [], samples, skip=set(found)
    )
    found.update({c: weights @ (v[usable] - conflict[usable]) for c, v in missing.items()})
    whole = found[frozenset(range(len(cells)))]
    result.full_patch = float(whole[0]) / float((clean[usable] - conflict[usable]).sum())
    for name, (top, bottom) in orders.items():
        curves = {
            side: restored(found, order) / whole[:, None]
            for side, order in zip(RANKED, (top, bottom), strict=True)
        }
        result.curves[name] = {side: curve[0] for side, curve in curves.items()}
        top_areas = _areas(curves["top"])
        measured = {
            "cpr": top_areas["area"],
            "cmd": top_areas["distance"],
            "bottom_area": _areas(curves["bottom"])["area"],
        }
        result.scores[name] = {}
        for key, values in measured.items():
            low, high = np.quantile(values[1:], [0.025, 0.975])
            result.scores[name].update(
                {key: float(values[0]), f"{key}_low": float(low), f"{key}_high": float(high)}
            )
    return result


def _measure_orders(
    prepared: Prepared,
    cells: Sequence[Cell],
    orders: Mapping[str, tuple[np.ndarray, np.ndarray]],
    extra: Sequence[np.ndarray],
    samples: int,
    skip: set[frozenset[int]] | None = None,
) -> tuple[dict[frozenset[int], np.ndarray], np.ndarray, np.ndarray]:
    """Logit differences (clips,) of every prefix circuit of ``orders`` and of the circuits
    ``extra`` (not those in ``skip``), and of the clean and conflict runs."""
    circuits = [frozenset(circuit.tolist()) for circuit in extra]
    circuits += [
        frozenset(order[:k].tolist())
        for top, bottom in orders.values()
        for order in (top, bottom)
        for k in range(1, len(cells) + 1)
    ]
    unique = list(dict.fromkeys(c for c in circuits if c not in (skip or set())))
    if not unique:
        return {}, np.empty(0), np.empty(0)
    changed, clean, conflict = _patched_runs(prepared, cells, unique, samples)
    return dict(zip(unique, changed.T, strict=True)), clean, conflict


def _patched_runs(
    prepared: Prepared, cells: Sequence[Cell], circuits: Sequence[frozenset[int]], samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logit differences of each circuit's patched run (clips, circuits), and of the clean and
    conflict runs (clips,)."""
    import torch

    from patchwork.patching.heads import head_count, record_heads, with_head_edits
    from patchwork.patching.metrics import answer_metrics

    adapter = prepared.loaded.adapter
    device = next(adapter.root.parameters()).device
    clips = prepared.samples.load(0, min(samples, len(prepared.samples)))
    heads, layers = head_count(adapter), range(adapter.num_layers)
    changed = np.full((len(clips), len(circuits)), np.nan)
    clean = np.full(len(clips), np.nan)
    conflict = np.full(len(clips), np.nan)
    for row, clip in enumerate(clips):
        ids = (clip.audio_answer_id, clip.visual_answer_id)
        runs = {
            run: {key: value.to(device) for key, value in clip.runs[run].items()}
            for run in ("clean", "conflict")
        }
        clean_logits, source = record_heads(adapter, runs["clean"], layers)
        conflict_logits, _ = record_heads(adapter, runs["conflict"], layers)
        clean[row] = float(answer_metrics(clean_logits, *ids)["logit_diff"][0])
        conflict[row] = float(answer_metrics(conflict_logits, *ids)["logit_diff"][0])
        groups = adapter.position_groups(clip.runs["conflict"]["input_ids"])
        reading = groups["text"] | groups["answer"]
        for first in range(0, len(circuits), ROWS_PER_FORWARD):
            chunk = circuits[first : first + ROWS_PER_FORWARD]
            masks = {
                layer: torch.zeros(len(chunk), reading.numel(), heads, 1, dtype=torch.bool)
                for layer in layers
            }
            for number, circuit in enumerate(chunk):
                for cell in circuit:
                    for layer, head in cells[cell]:
                        masks[layer][number, reading, head] = True
            logits = with_head_edits(adapter, runs["conflict"], len(chunk), _edits(masks, source))
            values = answer_metrics(logits, *ids)["logit_diff"].cpu().numpy()
            changed[row, first : first + len(chunk)] = values
    return changed, clean, conflict


def _edits(masks: dict[int, torch.Tensor], source: dict[int, torch.Tensor]) -> dict[int, Callable]:
    """Per layer, the edit writing ``source``'s head outputs where ``masks`` (rows, seq, heads,
    1) say."""

    import torch

    def edit(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def patch(hidden: torch.Tensor) -> torch.Tensor:
            mask = masks[layer].to(hidden.device)
            return torch.where(mask, source[layer].to(hidden.dtype), hidden)

        return patch

    return {layer: edit(layer) for layer in masks}
