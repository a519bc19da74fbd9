"""Grading head-level methods against planted heads: on a model whose answer reads the picture
only through known (layer, head) pairs (``patchwork testbed train --video-access-heads``, the
shipped ``testbed-heads``), does each method put those heads first, clip by clip?

Each method's store gives one signed restoration per clip and head, in logit-difference units
toward the reference run — (changed − run) · sign(reference − run) — and
:func:`planted_recovery` grades a clip: is its first-ranked head planted, are the planted heads
its top k, and what share of the clip's positive restoration do they hold.

Shared grading rules: :func:`usable_clips` (which clips a grade may read: the reference run
prefers the audio answer, the run the picture's, by a gap worth a ratio — the rules of
:func:`~patchwork.analysis.results.sample_coverage`) and :func:`auroc` (how well scores pick
out planted cells, ties counted half as in the Mann-Whitney statistic).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr

from patchwork.analysis.results import MIN_GAP


def _toward(changed: xr.DataArray, run: xr.DataArray, reference: xr.DataArray) -> xr.DataArray:
    return (changed - run) * np.sign(reference - run)


def head_restoration(results: xr.Dataset, group: str = "answer") -> xr.DataArray:
    """Head patching (``kind: head_patching``) at ``group``: (sample, layer, head)."""
    base = results["head_baseline"].sel(metric="logit_diff")
    patched = results["head_effect"].sel(head_group=group, metric="logit_diff")
    restored = _toward(patched, base.isel(head_run=1), base.isel(head_run=0))
    return restored.rename(head_layer="layer").drop_vars(
        ["head_group", "metric", "head_run"], errors="ignore"
    )


def knockout_restoration(results: xr.Dataset, rule: str) -> xr.DataArray:
    """Single-head knockouts of ``rule`` (``heads: each`` with ``window: 1``, labels
    ``rule@l-l#hN``): (sample, layer, head)."""
    from patchwork.analysis.method_figures import knockout_frame

    base = results["knockout_baseline"].sel(metric="logit_diff")
    knocked = results["knockout_effect"].sel(metric="logit_diff")
    labels = knockout_frame(results, "logit_diff").drop_duplicates("knockout")
    single = labels[
        (labels["rule"] == rule)
        & labels["heads"].str.isdigit()
        & (labels["first"] == labels["last"])
    ]
    cells = {
        (int(first), int(head)): label
        for first, head, label in zip(
            single["first"], single["heads"], single["knockout"], strict=True
        )
    }
    if not cells:
        raise ValueError(f"rule {rule!r} has no single-layer, single-head knockouts")
    restored = _toward(knocked, base.isel(knockout_run=0), base.isel(knockout_run=1))
    index = pd.MultiIndex.from_tuples(list(cells), names=["layer", "head"])
    chosen = restored.sel(knockout=list(cells.values())).drop_vars(
        ["metric", "knockout_run"], errors="ignore"
    )
    chosen = chosen.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "knockout"))
    return chosen.unstack("knockout").transpose("sample", "layer", "head")


def path_restoration(
    results: xr.Dataset, sender_layer: int, sender: str = "residual", receiver_input: str = "values"
) -> xr.DataArray:
    """Path patching from ``sender`` ('residual', 'mlp', 'head h') of ``sender_layer`` into
    every later head's ``receiver_input``: (sample, layer, head) over the receiving layers after
    it."""
    from patchwork.analysis.method_figures import path_effects

    base = results["path_baseline"].sel(metric="logit_diff")
    patched = path_effects(results).sel(
        sender=sender, sender_layer=sender_layer, receiver_input=receiver_input, metric="logit_diff"
    )
    patched = patched.sel(receiver_layer=patched["receiver_layer"] > sender_layer)
    restored = _toward(patched, base.isel(path_run=1), base.isel(path_run=0))
    return restored.rename(receiver_layer="layer", receiver_head="head").drop_vars(
        ["sender", "sender_layer", "receiver_input", "metric", "path_run"], errors="ignore"
    )


def path_cells(
    results: xr.Dataset, sender: str = "residual", receiver_input: str = "values"
) -> xr.DataArray:
    """Path patching from ``sender`` ('residual', 'mlp', 'head h') of every sender layer into
    every receiving head's ``receiver_input``: (sample, sender_layer, layer, head), NaN where the
    receiving layer does not follow the sender's."""
    from patchwork.analysis.method_figures import path_effects

    base = results["path_baseline"].sel(metric="logit_diff")
    patched = path_effects(results).sel(
        sender=sender, receiver_input=receiver_input, metric="logit_diff"
    )
    later = patched["receiver_layer"] > patched["sender_layer"]
    restored = _toward(patched, base.isel(path_run=1), base.isel(path_run=0)).where(later)
    return (
        restored.rename(receiver_layer="layer", receiver_head="head")
        .drop_vars(["sender", "receiver_input", "metric", "path_run"], errors="ignore")
        .transpose("sample", "sender_layer", "layer", "head")
    )


def paths_restoration(
    results: xr.Dataset, sender: str = "residual", receiver_input: str = "values"
) -> xr.DataArray:
    """Every path of :func:`path_cells` (a sender layer → a later head) as one ``path``
    dimension (a (sender_layer, layer, head) index): (sample, path)."""
    cells = path_cells(results, sender, receiver_input).stack(
        path=("sender_layer", "layer", "head")
    )
    following = cells["layer"].values > cells["sender_layer"].values
    return cells.isel(path=following).transpose("sample", "path")


def planted_recovery(restoration: xr.DataArray, planted: Iterable[tuple[int, int]]) -> pd.DataFrame:
    """Per clip of ``restoration`` (sample, layer, head): ``first_planted`` (the head restoring
    most is planted), ``planted_top`` (the planted heads are the top k, k = their number, ties
    broken by layer and head order) and ``planted_share`` (their share of the clip's positive
    restoration; NaN where nothing restores)."""
    planted = {(int(layer), int(head)) for layer, head in planted}
    cells = restoration.stack(cell=("layer", "head")).transpose("sample", "cell")
    names = [(int(layer), int(head)) for layer, head in cells["cell"].values]
    missing = planted - set(names)
    if missing:
        raise ValueError(f"planted heads {sorted(missing)} are not in the results")
    return _recovery(cells, np.array([name in planted for name in names]))


def planted_path_recovery(
    restoration: xr.DataArray, planted: Iterable[tuple[int, int]]
) -> pd.DataFrame:
    """:func:`planted_recovery` over paths (``restoration``: (sample, path), as
    :func:`paths_restoration` gives): a path is planted when its receiving (layer, head) is one
    of the ``planted`` heads, through which alone the answer reads the sender's positions — from
    every sender layer before it."""
    planted = {(int(layer), int(head)) for layer, head in planted}
    receivers = zip(restoration["layer"].values, restoration["head"].values, strict=True)
    mask = np.array([(int(layer), int(head)) in planted for layer, head in receivers])
    if not mask.any():
        raise ValueError(f"no path in the results reaches a planted head {sorted(planted)}")
    return _recovery(restoration.transpose("sample", "path"), mask)


def _recovery(cells: xr.DataArray, mask: np.ndarray) -> pd.DataFrame:
    """The grades of :func:`planted_recovery` from (sample, cell) restorations and the planted
    cells' ``mask``."""
    values = cells.values
    order = np.argsort(-values, axis=1, kind="stable")
    positive = np.clip(values, 0, None)
    total = positive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, positive[:, mask].sum(axis=1) / total, np.nan)
    return pd.DataFrame(
        {
            "sample": cells["sample"].values,
            "first_planted": mask[order[:, 0]],
            "planted_top": mask[order[:, : int(mask.sum())]].all(axis=1),
            "planted_share": share,
        }
    )


#: Scores closer than this tie (in the units of the scores: for normalized effects, a
#: hundred-thousandth of the clean–conflict gap, far below any effect and above float32 error).
TIE_TOLERANCE = 1e-5


def average_ranks(scores: np.ndarray, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Ranks 1…n of ``scores`` (n,), lowest first; scores that chain within ``tolerance`` of
    their sorted neighbours share the average of their ranks (so a float32 ramp's equal steps
    tie, where exact equality would order them by rounding error)."""
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or values[order[end]] - values[order[end - 1]] > tolerance:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 … end
            start = end
    return ranks


def auroc(scores: np.ndarray, planted: np.ndarray, tolerance: float = TIE_TOLERANCE) -> float:
    """Area under the ROC curve of ``scores`` (n,) for the boolean labels ``planted`` (n,): the
    chance that a planted cell outscores an unplanted one, ties counting half — the
    Mann-Whitney U over the product of the class sizes, from :func:`average_ranks`. NaN when a
    class is empty."""
    planted = np.asarray(planted, dtype=bool)
    positives, negatives = int(planted.sum()), int((~planted).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = average_ranks(scores, tolerance)
    u_statistic = ranks[planted].sum() - positives * (positives + 1) / 2
    return float(u_statistic / (positives * negatives))


def usable_clips(
    reference: xr.DataArray, run: xr.DataArray, min_relative_gap: float = 0.05
) -> xr.DataArray:
    """Which clips (sample,) a grade may read, from the logit differences of the ``reference``
    run (e.g. clean) and the ``run`` a method changes (e.g. conflict): the reference prefers the
    audio answer (> 0) and the run the picture's (< 0), and their gap is at least
    ``min_relative_gap`` times the median gap of such clips. Elsewhere there is no suppression to
    undo, or a ratio to it would swamp the rest (the rules of
    :func:`~patchwork.analysis.results.sample_coverage`)."""
    with np.errstate(invalid="ignore"):
        right_way = (reference > 0) & (run < 0)
    gap = abs(reference - run)
    median = float(gap.where(right_way).median(skipna=True)) if bool(right_way.any()) else 0.0
    return right_way & (gap >= max(MIN_GAP, min_relative_gap * median))


def layer_knockout_restoration(results: xr.Dataset, rule: str) -> xr.DataArray:
    """Single-layer knockouts of every head of ``rule`` (``window: 1``, labels ``rule@l-l``):
    (sample, layer), in logit-difference units toward the reference run."""
    from patchwork.analysis.method_figures import knockout_frame

    labels = knockout_frame(results, "logit_diff").drop_duplicates("knockout")
    single = labels[
        (labels["rule"] == rule) & (labels["heads"] == "all") & (labels["first"] == labels["last"])
    ]
    if single.empty:
        raise ValueError(f"rule {rule!r} has no single-layer knockouts")
    base = results["knockout_baseline"].sel(metric="logit_diff")
    knocked = results["knockout_effect"].sel(metric="logit_diff", knockout=list(single["knockout"]))
    restored = _toward(knocked, base.isel(knockout_run=0), base.isel(knockout_run=1))
    restored = restored.drop_vars(["metric", "knockout_run"], errors="ignore")
    restored = restored.assign_coords(knockout=[int(first) for first in single["first"]])
    return restored.rename(knockout="layer").sortby("layer").transpose("sample", "layer")
