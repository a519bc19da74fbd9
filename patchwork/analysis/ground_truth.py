"""Grading head-level methods against planted heads: on a model whose answer reads the picture
only through known (layer, head) pairs (``patchwork testbed train --video-access-heads``, the
shipped ``testbed-heads``), does each method put those heads first, clip by clip?

Each method's store gives one signed restoration per clip and head, in logit-difference units
toward the reference run — (changed − run) · sign(reference − run) — and
:func:`planted_recovery` grades a clip: is its first-ranked head planted, are the planted heads
its top k, and what share of the clip's positive restoration do they hold.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr


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


def path_restoration(results: xr.Dataset, sender_layer: int) -> xr.DataArray:
    """Path patching from the sender after ``sender_layer`` into every later head's values:
    (sample, layer, head) over the receiving layers after it."""
    base = results["path_baseline"].sel(metric="logit_diff")
    patched = results["path_effect"].sel(sender_layer=sender_layer, metric="logit_diff")
    patched = patched.sel(receiver_layer=patched["receiver_layer"] > sender_layer)
    restored = _toward(patched, base.isel(path_run=1), base.isel(path_run=0))
    return restored.rename(receiver_layer="layer", receiver_head="head").drop_vars(
        ["sender_layer", "metric", "path_run"], errors="ignore"
    )


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
    mask = np.array([name in planted for name in names])
    values = cells.values
    order = np.argsort(-values, axis=1, kind="stable")
    positive = np.clip(values, 0, None)
    total = positive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, positive[:, mask].sum(axis=1) / total, np.nan)
    return pd.DataFrame(
        {
            "sample": restoration["sample"].values,
            "first_planted": mask[order[:, 0]],
            "planted_top": mask[order[:, : len(planted)]].all(axis=1),
            "planted_share": share,
        }
    )
