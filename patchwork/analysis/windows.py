"""Where in depth does the audio answer's restoration change, and how sure are we?

For each position group and component, :func:`locate` looks at how the mean effect changes from
one stored layer to the next. The largest change is reported when its bootstrap interval clears the
noise floor; the window then grows over neighbouring layers whose change goes the same way, is
credibly non-zero (its interval excludes 0) and is at least a fraction of the largest one.

A rising window (patching at or after it restores the audio answer, patching before it does not) is
where the conflict run's picture takes over; a falling one is where the patched positions stop
carrying what matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from patchwork.analysis.bootstrap import bootstrap_weights, resampled_means
from patchwork.analysis.profile import (
    DEFAULT_FIXED_FLOOR,
    _provenance,
    layer_changes,
    noise_floor,
)
from patchwork.analysis.results import AnalysisError, done_samples, select_metric

_FLOAT_FIELDS = (
    "start_layer",
    "end_layer",
    "peak_layer",
    "peak_layer_low",
    "peak_layer_high",
    "change",
    "change_low",
    "change_high",
    "before",
    "after",
)


#: Column order of :func:`locate_table`.
TABLE_COLUMNS = (
    "position_group",
    "component",
    "status",
    "window",
    "direction",
    "start_layer",
    "end_layer",
    "peak_layer",
    "peak_layer_low",
    "peak_layer_high",
    "change",
    "change_low",
    "change_high",
    "before",
    "after",
    "floor",
    "n_samples",
)


def locate(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    floor: float | str = "auto",
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    extend_fraction: float = 0.1,
) -> xr.Dataset:
    """The layer window where the effect changes most, per position group and component.

    Args:
        results: a result dataset; only samples marked done are used.
        metric: which stored metric to follow across layers.
        floor: ``"null"`` (from ``null_effect``, see :func:`noise_floor`), a number in units of
            the metric, or ``"auto"``: the null floor when the store has ``null_effect``, else
            :data:`~patchwork.analysis.profile.DEFAULT_FIXED_FLOOR`.
        confidence: coverage of every interval, in (0, 1).
        n_resamples: bootstrap resamples (of samples).
        seed: seed of the resampling; equal seeds give equal answers.
        extend_fraction: a neighbouring layer joins the window when its change goes the same way,
            its interval excludes 0, and it is at least this fraction of the largest change.

    Returns:
        Dataset with dims ``(position_group, component)``:

        - ``status``: ``"located"``, ``"none"`` (nothing clears the floor) or ``"not computed"``;
        - ``direction``: ``"rise"`` or ``"fall"`` of the effect across the window (``""`` if none);
        - ``start_layer``, ``end_layer``: the window, inclusive (layer numbers; NaN if none);
        - ``peak_layer`` and its interval ``peak_layer_low``..``peak_layer_high``: the layer of the
          single largest change, and where it falls in ``confidence`` of the resamples;
        - ``change`` with ``change_low``, ``change_high``: effect after minus before the window,
          and its interval (metric units);
        - ``before``, ``after``: mean effect at the layer stored before the window and at its end;
        - ``floor``: the noise floor used (metric units); ``n_samples``: samples used.
    """
    if not 0.0 < confidence < 1.0:
        raise AnalysisError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    if not 0.0 <= extend_fraction <= 1.0:
        raise AnalysisError(f"extend_fraction must lie in [0, 1]; got {extend_fraction}")
    done = done_samples(results)
    effect = select_metric(done, metric).sortby("layer")
    floors = _resolve_floor(results, floor, metric, confidence, n_resamples, seed)

    changes = layer_changes(effect)
    weights = bootstrap_weights(done.sizes["sample"], n_resamples, seed)
    boot = resampled_means(changes, weights)
    mean_change = changes.mean("sample", skipna=True)
    mean_effect = effect.mean("sample", skipna=True)
    all_layers = effect["layer"].values

    groups = effect["position_group"].values
    components = effect["component"].values
    rows: dict[str, list[list[Any]]] = {}
    for group in groups:
        for component in components:
            cell = {"position_group": group, "component": component}
            found = _locate_cell(
                mean_change.sel(cell).transpose("layer").values,
                boot.sel(cell).transpose("resample", "layer").values,
                mean_effect.sel(cell).transpose("layer").values,
                all_layers,
                float(floors.sel(cell)),
                confidence,
                extend_fraction,
            )
            found["n_samples"] = int(effect.sel(cell).notnull().all("layer").sum())
            found["floor"] = float(floors.sel(cell))
            for key, value in found.items():
                rows.setdefault(key, []).append(value)

    shape = (len(groups), len(components))
    dims = ("position_group", "component")
    located = xr.Dataset(
        {key: (dims, np.asarray(values).reshape(shape)) for key, values in rows.items()},
        coords={"position_group": groups, "component": components},
    )
    located.attrs.update(
        _provenance(results),
        metric=metric,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        extend_fraction=extend_fraction,
        floor_source=floors.attrs.get("source", "fixed"),
        layers=[int(layer) for layer in all_layers],
    )
    return located


def locate_table(located: xr.Dataset) -> pd.DataFrame:
    """:func:`locate`'s answer as a tidy table, one row per (position group, component).

    Returns:
        DataFrame with columns ``position_group``, ``component``, ``status``, ``window`` (e.g.
        ``"4–5"``, ``"5"`` or ``"none"``), ``direction``, the layer columns as nullable integers,
        the change and its interval, ``before``, ``after``, ``floor`` and ``n_samples``.
    """
    table = located.to_dataframe().reset_index()
    for column in ("start_layer", "end_layer", "peak_layer", "peak_layer_low", "peak_layer_high"):
        table[column] = table[column].round().astype("Int64")
    table["window"] = [_window_label(row) for row in table.itertuples()]
    return table[list(TABLE_COLUMNS)]


def _window_label(row: Any) -> str:
    if row.status != "located":
        return str(row.status)
    if row.start_layer == row.end_layer:
        return str(row.start_layer)
    return f"{row.start_layer}–{row.end_layer}"


def _resolve_floor(
    results: xr.Dataset,
    floor: float | str,
    metric: str,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> xr.DataArray:
    effect = results["effect"]
    template = xr.zeros_like(
        effect.isel(sample=0, layer=0, metric=0, drop=True), dtype="float64"
    ).reset_coords(drop=True)
    if isinstance(floor, str):
        has_null = "null_effect" in results.data_vars and bool(
            done_samples(results)["null_effect"].notnull().any()
        )
        if floor == "null" or (floor == "auto" and has_null):
            return noise_floor(results, metric, confidence, n_resamples, seed)
        if floor != "auto":
            raise AnalysisError(f"floor must be 'auto', 'null' or a number; got {floor!r}")
        floor = DEFAULT_FIXED_FLOOR
    if not np.isfinite(floor) or floor < 0:
        raise AnalysisError(f"a fixed floor must be a finite number ≥ 0; got {floor}")
    fixed = template + float(floor)
    fixed.attrs["source"] = "fixed"
    return fixed


def _locate_cell(
    mean_change: np.ndarray,
    boot_change: np.ndarray,
    mean_effect: np.ndarray,
    all_layers: np.ndarray,
    floor: float,
    confidence: float,
    extend_fraction: float,
) -> dict[str, Any]:
    """One cell; index k of the changes is the change into ``all_layers[k + 1]``."""
    answer: dict[str, Any] = dict.fromkeys(_FLOAT_FIELDS, np.nan)
    answer.update(status="none", direction="")
    if not np.isfinite(mean_change).any():
        answer["status"] = "not computed"
        return answer
    alpha = 1.0 - confidence
    peak = int(np.nanargmax(np.abs(mean_change)))
    sign = 1.0 if mean_change[peak] > 0 else -1.0

    def beyond(k: int, margin: float) -> bool:
        """Change k goes the peak's way and its whole interval lies beyond ``margin``."""
        if k < 0 or k >= len(mean_change) or not np.isfinite(mean_change[k]):
            return False
        if np.sign(mean_change[k]) != sign:
            return False
        low, high = np.nanquantile(boot_change[:, k], [alpha / 2, 1 - alpha / 2])
        return bool(low > margin) if sign > 0 else bool(high < -margin)

    def joins(k: int) -> bool:
        if not beyond(k, 0.0):
            return False
        return bool(abs(mean_change[k]) >= extend_fraction * abs(mean_change[peak]))

    if not beyond(peak, floor):
        return answer
    start = end = peak
    while joins(start - 1):
        start -= 1
    while joins(end + 1):
        end += 1

    window_change = boot_change[:, start : end + 1].sum(axis=1)
    peaks = all_layers[1:][np.nanargmax(np.abs(np.nan_to_num(boot_change, nan=0.0)), axis=1)]
    answer.update(
        status="located",
        direction="rise" if sign > 0 else "fall",
        start_layer=float(all_layers[start + 1]),
        end_layer=float(all_layers[end + 1]),
        peak_layer=float(all_layers[peak + 1]),
        peak_layer_low=float(np.quantile(peaks, alpha / 2, method="lower")),
        peak_layer_high=float(np.quantile(peaks, 1 - alpha / 2, method="higher")),
        change=float(np.sum(mean_change[start : end + 1])),
        change_low=float(np.nanquantile(window_change, alpha / 2)),
        change_high=float(np.nanquantile(window_change, 1 - alpha / 2)),
        before=float(mean_effect[start]),
        after=float(mean_effect[end + 1]),
    )
    return answer
