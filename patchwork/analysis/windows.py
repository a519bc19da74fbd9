"""Where in depth does the audio answer's restoration change, and how sure are we?

For each position group and component, :func:`locate` asks three questions of the mean effect
profile over layers:

1. *Is there a change?* The largest net change between any two stored layers must exceed both the
   sampling noise — a simultaneous bootstrap bound over all layer pairs, so picking the largest
   change does not fool the test — and a practical floor (default: a tenth of the clean–conflict
   gap). Otherwise the answer is *none*.
2. *Where?* The window is the shortest run of layers that carries ``coverage`` (default 90%) of
   that change: sharp steps give short windows, gradual ones long windows. Where the change comes
   in separate stretches — a run of layers inside it is flat (it moves by less than the noise and
   the floor) while the stretches on either side each change by more than both — each stretch
   gets a window of its own, the shortest run carrying ``coverage`` of *its* change: a model that
   reads the picture in layer 1 and again in layers 5–6 gives the windows ``1`` and ``5–6``.
3. *How sure?* The change across the window has a bootstrap interval, and the single largest step
   a *peak layer* with the range of layers where it falls across resamples.

A rising window (patching at or after it restores the audio answer, patching before it does not) is
where the conflict run's picture takes over; a falling one is where the patched positions stop
carrying what matters. When the store has ``null_effect``, the same window's change under
mismatched patches is reported beside it (``null_change``): a change the mismatched patch also
produces is not specific to the sample's own clean run.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from patchwork.analysis.bootstrap import bootstrap_weights, ratio_mean, resampled_means
from patchwork.analysis.profile import (
    DEFAULT_FIXED_FLOOR,
    _provenance,
    estimator_terms,
    noise_floor,
)
from patchwork.analysis.results import (
    AnalysisError,
    AnalysisSettings,
    few_samples_note,
    used_samples,
)

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
    "noise",
    "null_change",
)
#: Variables of :func:`locate` over the extra ``window`` dimension: one entry per separate window.
_WINDOW_FIELDS = ("window_start", "window_end", "window_change")


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
    "null_change",
    "noise",
    "floor",
    "n_samples",
    "note",
)


def locate(
    results: xr.Dataset,
    metric: str = "normalized_effect",
    floor: float | str = "auto",
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    coverage: float = 0.9,
    estimator: str | None = None,
    min_relative_gap: float | None = None,
) -> xr.Dataset:
    """The layer window where the effect changes most, per position group and component.

    Args:
        results: a result dataset; only samples marked done with a defined ``metric`` are used
            (see :func:`~patchwork.analysis.results.sample_coverage`).
        metric: which stored metric to follow across layers.
        floor: the smallest change worth reporting, in units of the metric: a number, ``"auto"``
            (:data:`~patchwork.analysis.profile.DEFAULT_FIXED_FLOOR` times the median gap between
            the clean and the conflict run, i.e. 0.1 for the normalized effect) or ``"null"``
            (from ``null_effect``, see :func:`~patchwork.analysis.profile.noise_floor`).
        confidence: coverage of every interval and of the noise bound, in (0, 1).
        n_resamples: bootstrap resamples (of samples).
        seed: seed of the resampling; equal seeds give equal answers.
        coverage: the window is the shortest run of layers carrying this fraction of the largest
            change, in (0, 1].
        estimator: how the normalized effect is averaged over samples (``"ratio_of_means"`` or
            ``"mean_of_ratios"``, see :mod:`patchwork.analysis.profile`); default: the stored
            study's ``analysis.estimator``, else ratio of means.
        min_relative_gap: samples with a smaller clean − conflict gap (relative to the median)
            are left out (see :func:`~patchwork.analysis.results.sample_coverage`).

    Returns:
        Dataset with dims ``(position_group, component)``:

        - ``status``: ``"located"``, ``"none"`` (no change clears noise and floor) or
          ``"not computed"``;
        - ``direction``: ``"rise"`` or ``"fall"`` of the effect across the window (``""`` if none);
        - ``start_layer``, ``end_layer``: the window, inclusive (layer numbers; NaN if none); the
          effect changes between the layer stored before ``start_layer`` and ``end_layer``. Where
          the change comes in separate stretches, these span all of them;
        - ``window_start``, ``window_end``, ``window_change`` over the extra dimension ``window``:
          each separate window, in layer order, and its own change (NaN where a cell has fewer
          windows than another); ``n_windows``: how many (0 if none);
        - ``peak_layer`` and its interval ``peak_layer_low``..``peak_layer_high``: the single
          largest step in that direction, and where it falls in ``confidence`` of the resamples;
        - ``change`` with ``change_low``, ``change_high``: effect at the end minus before the
          window, with its interval (metric units); ``before``, ``after``: those two means;
        - ``noise``: the simultaneous bootstrap bound a change had to exceed (metric units);
        - ``null_change``: the same window's change under mismatched patches (NaN without
          ``null_effect``); ``floor``: the floor used; ``n_samples``: samples used in the cell.

        Its attrs add ``floor_source`` (``"auto"``, ``"fixed"`` for a number, or ``"null"``),
        ``estimator`` and ``min_relative_gap``, and the samples used of all: ``n_used``,
        ``n_total`` and ``excluded_samples``
        (:meth:`~patchwork.analysis.results.SampleCoverage.attrs`).
    """
    if not 0.0 < confidence < 1.0:
        raise AnalysisError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    if not 0.0 < coverage <= 1.0:
        raise AnalysisError(f"coverage must lie in (0, 1]; got {coverage}")
    settings = AnalysisSettings.from_results(results, estimator, min_relative_gap)
    done, used = used_samples(results, metric, settings)
    effect, denominator = estimator_terms(done, metric, settings.estimator)
    effect = effect.sortby("layer")
    if effect.sizes["layer"] < 2:
        raise AnalysisError("locating a window needs at least two layers in the store")
    floors = _resolve_floor(done, floor, metric, confidence, n_resamples, seed, settings)
    weights = bootstrap_weights(done.sizes["sample"], n_resamples, seed)
    boot = resampled_means(effect, weights, denominator)
    mean_effect = ratio_mean(effect, denominator)
    null_mean = _null_mean(done, metric, settings.estimator)
    layers = effect["layer"].values

    groups = effect["position_group"].values
    components = effect["component"].values
    rows: dict[str, list[Any]] = {}
    for group in groups:
        for component in components:
            cell = {"position_group": group, "component": component}
            found = _locate_cell(
                mean_effect.sel(cell).transpose("layer").values,
                boot.sel(cell).transpose("resample", "layer").values,
                layers,
                float(floors.sel(cell)),
                confidence,
                coverage,
                int(effect.sel(cell).notnull().all("layer").sum()),
            )
            found["null_change"] = _window_change(null_mean, cell, found, layers)
            found["n_samples"] = int(effect.sel(cell).notnull().all("layer").sum())
            found["floor"] = float(floors.sel(cell))
            for key, value in found.items():
                rows.setdefault(key, []).append(value)

    shape = (len(groups), len(components))
    dims = ("position_group", "component")
    spans = rows.pop("windows")
    located = xr.Dataset(
        {key: (dims, np.asarray(values).reshape(shape)) for key, values in rows.items()},
        coords={"position_group": groups, "component": components},
    )
    located["n_windows"] = (dims, np.array([len(cell) for cell in spans]).reshape(shape))
    width = max(1, int(located["n_windows"].max()))
    for number, name in enumerate(_WINDOW_FIELDS):
        padded = [
            [span[number] for span in cell] + [np.nan] * (width - len(cell)) for cell in spans
        ]
        located[name] = ((*dims, "window"), np.array(padded, dtype=float).reshape(*shape, width))
    located.attrs.update(
        {**_provenance(results), **used.attrs(), **settings.attrs()},
        metric=metric,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        coverage=coverage,
        floor_source=floors.attrs["source"],
        layers=[int(layer) for layer in layers],
    )
    return located


def locate_table(located: xr.Dataset) -> pd.DataFrame:
    """:func:`locate`'s answer as a tidy table, one row per (position group, component).

    Returns:
        DataFrame with columns ``position_group``, ``component``, ``status``, ``window`` (e.g.
        ``"4–5"``, ``"5"`` or ``"none"``), ``direction``, the layer columns as nullable integers,
        the change and its interval, ``before``, ``after``, ``floor``, ``n_samples`` and ``note``
        (e.g. ``"from 2 samples (fewer than 8): intervals are rough"``, else ``""``; see
        :data:`~patchwork.analysis.results.MIN_SAMPLES`); its ``attrs`` are those of ``located``
        (metric, floor source, samples used of all).
    """
    table = located.drop_dims("window", errors="ignore").to_dataframe().reset_index()
    table["window"] = [_window_label(located.sel(cell)) for cell in _cells(table)]
    for column in ("start_layer", "end_layer", "peak_layer", "peak_layer_low", "peak_layer_high"):
        table[column] = table[column].round().astype("Int64")
    table["note"] = [few_samples_note(int(n)) for n in table["n_samples"]]
    table = table[list(TABLE_COLUMNS)]
    table.attrs = dict(located.attrs)
    return table


def _cells(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"position_group": group, "component": component}
        for group, component in zip(table["position_group"], table["component"], strict=True)
    ]


def _window_label(cell: xr.Dataset) -> str:
    """``"4–5"``, ``"5"``, ``"1, 5–6"`` for separate windows, else the status."""
    if str(cell["status"].values) != "located":
        return str(cell["status"].values)
    return ", ".join(
        str(first) if first == last else f"{first}–{last}" for first, last in located_spans(cell)
    )


def located_spans(cell: xr.Dataset) -> list[tuple[int, int]]:
    """The separate windows of one located cell (``locate(...).sel(position_group=…,
    component=…)``) as inclusive (first, last) layer pairs, in layer order; empty if none."""
    if str(cell["status"].values) != "located":
        return []
    return [
        (int(first), int(last))
        for first, last in zip(cell["window_start"].values, cell["window_end"].values, strict=True)
        if np.isfinite(first)
    ]


def _resolve_floor(
    done: xr.Dataset,
    floor: float | str,
    metric: str,
    confidence: float,
    n_resamples: int,
    seed: int,
    settings: AnalysisSettings,
) -> xr.DataArray:
    """The floor per (position_group, component) over the used samples ``done``; its ``source``
    attr says which kind."""
    template = xr.zeros_like(
        done["effect"].isel(sample=0, layer=0, metric=0, drop=True), dtype="float64"
    ).reset_coords(drop=True)
    source = "fixed"
    if isinstance(floor, str):
        if floor == "null":
            # the samples are chosen already: no second gap threshold over them
            return noise_floor(done, metric, confidence, n_resamples, seed, settings.estimator, 0.0)
        if floor != "auto":
            raise AnalysisError(f"floor must be 'auto', 'null' or a number; got {floor!r}")
        source, floor = "auto", DEFAULT_FIXED_FLOOR * _clean_conflict_gap(done, metric)
    if not np.isfinite(floor) or floor < 0:
        raise AnalysisError(f"a fixed floor must be a finite number ≥ 0; got {floor}")
    fixed = template + float(floor)
    fixed.attrs["source"] = source
    return fixed


def _clean_conflict_gap(done: xr.Dataset, metric: str) -> float:
    """Median |clean − conflict| of the metric over samples; 1 for the normalized effect."""
    if metric == "normalized_effect" or "baseline" not in done.data_vars:
        return 1.0
    runs = done["baseline"].sel(metric=metric).compute()
    gap = float(abs(runs.sel(run="clean") - runs.sel(run="conflict")).median(skipna=True))
    return gap if np.isfinite(gap) and gap > 0 else 1.0


def _null_mean(done: xr.Dataset, metric: str, estimator: str) -> xr.DataArray | None:
    if "null_effect" not in done.data_vars:
        return None
    null, denominator = estimator_terms(done, metric, estimator, "null_effect")
    null = null.sortby("layer")
    return ratio_mean(null, denominator) if bool(null.notnull().any()) else None


def _window_change(
    null_mean: xr.DataArray | None, cell: dict[str, Any], found: dict[str, Any], layers: np.ndarray
) -> float:
    if null_mean is None or found["status"] != "located":
        return float("nan")
    profile = null_mean.sel(cell).transpose("layer").values
    before = int(np.searchsorted(layers, found["start_layer"])) - 1
    after = int(np.searchsorted(layers, found["end_layer"]))
    return float(profile[after] - profile[before])


def _locate_cell(
    mean_effect: np.ndarray,
    boot_effect: np.ndarray,
    layers: np.ndarray,
    floor: float,
    confidence: float,
    coverage: float,
    n_samples: int,
) -> dict[str, Any]:
    """One cell: ``mean_effect`` (layer,) and ``boot_effect`` (resample, layer) mean profiles."""
    answer: dict[str, Any] = dict.fromkeys(_FLOAT_FIELDS, np.nan)
    answer.update(status="none", direction="", windows=[])
    if not np.isfinite(mean_effect).all():
        answer["status"] = "not computed" if np.isnan(mean_effect).all() else "none"
        return answer
    alpha = 1.0 - confidence
    # Sampling noise of every pair difference at once: the range of the centred resampled profile
    # bounds |(m_j − m_i) − true| over all pairs i < j simultaneously.
    centred = (boot_effect - mean_effect[None, :]) * _small_sample_factor(n_samples, confidence)
    noise = float(
        np.nanquantile(np.nanmax(centred, axis=1) - np.nanmin(centred, axis=1), confidence)
    )
    answer["noise"] = noise
    differences = mean_effect[None, :] - mean_effect[:, None]  # [i, j] = m_j − m_i
    upper = np.triu(np.ones_like(differences, dtype=bool), k=1)
    first, last = np.unravel_index(
        np.argmax(np.where(upper, np.abs(differences), -1.0)), differences.shape
    )
    largest = differences[first, last]
    if abs(largest) - noise <= floor:
        return answer
    sign = 1.0 if largest > 0 else -1.0
    windows = [
        _shortest_window(mean_effect, a, b, coverage * (mean_effect[b] - mean_effect[a]))
        for a, b in _stretches(mean_effect, int(first), int(last), sign, noise, floor)
    ]
    start, end = windows[0][0], windows[-1][1]
    answer["windows"] = [
        (float(layers[a + 1]), float(layers[b]), float(mean_effect[b] - mean_effect[a]))
        for a, b in windows
    ]

    window_change = boot_effect[:, end] - boot_effect[:, start]
    steps = sign * np.diff(boot_effect, axis=1)
    peaks = layers[1:][np.nanargmax(steps, axis=1)]
    in_window = sign * np.diff(mean_effect)[start:end]
    answer.update(
        status="located",
        direction="rise" if sign > 0 else "fall",
        start_layer=float(layers[start + 1]),
        end_layer=float(layers[end]),
        peak_layer=float(layers[start + 1 + int(np.argmax(in_window))]),
        peak_layer_low=float(np.quantile(peaks, alpha / 2, method="lower")),
        peak_layer_high=float(np.quantile(peaks, 1 - alpha / 2, method="higher")),
        change=float(mean_effect[end] - mean_effect[start]),
        change_low=float(np.nanquantile(window_change, alpha / 2)),
        change_high=float(np.nanquantile(window_change, 1 - alpha / 2)),
        before=float(mean_effect[start]),
        after=float(mean_effect[end]),
    )
    return answer


def _small_sample_factor(n_samples: int, confidence: float) -> float:
    """Widen bootstrap deviations of a mean of n samples towards Student-t ones.

    The bootstrap spreads a mean like a normal with the 1/n variance; with few samples the true
    spread is a Student t with n − 1 degrees of freedom and the 1/(n − 1) variance. The ratio of the
    two quantiles (Cornish–Fisher expansion of t) times sqrt(n / (n − 1)).
    """
    if n_samples < 3:
        return 3.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    freedom = n_samples - 1
    t = z + (z**3 + z) / (4 * freedom) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * freedom**2)
    return t / z * math.sqrt(n_samples / freedom)


def _stretches(
    mean_effect: np.ndarray, first: int, last: int, sign: float, noise: float, floor: float
) -> list[tuple[int, int]]:
    """The span ``first``..``last`` (profile indices) cut at a flat run: the longest run i..j
    inside it whose every point stays closer to the effect at i than both ``noise`` and ``floor``,
    while the effect changes in the direction ``sign`` by more than both before i and after j;
    then each side again. No such run: the whole span."""
    flat, worth = min(noise, floor), max(noise, floor)
    best: tuple[int, int] | None = None
    for i in range(first + 1, last):
        if sign * (mean_effect[i] - mean_effect[first]) <= worth:
            continue
        for j in range(i + 1, last):
            if np.abs(mean_effect[i : j + 1] - mean_effect[i]).max() >= flat:
                break
            if sign * (mean_effect[last] - mean_effect[j]) > worth and (
                best is None or j - i > best[1] - best[0]
            ):
                best = (i, j)
    if best is None:
        return [(first, last)]
    return [
        *_stretches(mean_effect, first, best[0], sign, noise, floor),
        *_stretches(mean_effect, best[1], last, sign, noise, floor),
    ]


def _shortest_window(
    mean_effect: np.ndarray, first: int, last: int, target: float
) -> tuple[int, int]:
    """Indices (a, b), first ≤ a < b ≤ last, of the shortest span whose change reaches ``target``
    (signed); among equally short spans, the one with the largest change."""
    sign = 1.0 if target > 0 else -1.0
    for length in range(1, last - first + 1):
        spans = [(a, a + length) for a in range(first, last - length + 1)]
        changes = [sign * (mean_effect[b] - mean_effect[a]) for a, b in spans]
        best = int(np.argmax(changes))
        if changes[best] >= abs(target):
            return spans[best]
    return first, last
