"""The logit lens's truth on the window organisms: before the planted window the text and answer
positions never read the swapped medium, so the answer position's residual stream — and its lens —
is the same in the clean and the conflict run; the swapped medium's answer can become decodable
there only from the window's first layer on. :func:`lens_departure` finds, per clip, the first
layer at which the two runs' lenses part."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

#: The runs the logit lens reads, one study each (a study lists each kind once).
LENS_RUNS = ("clean", "conflict")
#: The lens's floor for a departure, in logits: float32 log-probabilities of the same residual
#: stream agree far closer; a clip's own tolerance also scales with its gap
#: (:data:`LENS_GAP_SHARE`).
LENS_FLOOR = 1e-3
#: A departure must exceed this share of the clip's clean − conflict gap.
LENS_GAP_SHARE = 0.01


def lens_pair(clean: xr.Dataset, conflict: xr.Dataset) -> xr.Dataset:
    """The logit lens of the clean and the conflict run (one study each, :data:`LENS_RUNS`) as
    one dataset: ``lens_probability`` over a ``lens_run`` dimension, ``done`` where both are."""
    probability = xr.concat(
        [clean["lens_probability"], conflict["lens_probability"]], "lens_run"
    ).assign_coords(lens_run=list(LENS_RUNS))
    variables: dict[str, Any] = {"lens_probability": probability}
    if "done" in clean and "done" in conflict:
        variables["done"] = clean["done"] & conflict["done"]
    return xr.Dataset(variables, attrs=dict(conflict.attrs))


def lens_preference(results: xr.Dataset) -> xr.DataArray:
    """(sample, lens_layer, lens_run): the answer position's preference through the logit lens
    for the conflict run's answer over the clean run's (the two the study's logit difference
    compares), log p(visual) − log p(audio), in logits; at the last layer, minus the model's own
    logit difference."""
    probability = results["lens_probability"].sel(lens_group="answer").astype(np.float64)
    logs = xr.apply_ufunc(np.log, probability.clip(min=np.finfo(np.float32).tiny))
    preference = logs.sel(lens_answer="visual") - logs.sel(lens_answer="audio")
    return preference.drop_vars(["lens_group"], errors="ignore").transpose(
        "sample", "lens_layer", "lens_run"
    )


def lens_departure(results: xr.Dataset) -> xr.DataArray:
    """(sample,): the first layer at which the conflict run's lens preference
    (:func:`lens_preference`) departs from the clean run's by more than
    max(:data:`LENS_FLOOR`, :data:`LENS_GAP_SHARE` × the clip's gap at the last layer) — where
    the picture's answer becomes decodable at the answer position. NaN where it never does."""
    preference = lens_preference(results).sortby("lens_layer")
    departure = abs(preference.sel(lens_run="conflict") - preference.sel(lens_run="clean"))
    tolerance = np.maximum(LENS_FLOOR, LENS_GAP_SHARE * departure.isel(lens_layer=-1).values)
    beyond = departure.values > tolerance[:, None]
    layers = departure["lens_layer"].values.astype(np.float64)
    first = np.where(beyond.any(axis=1), layers[np.argmax(beyond, axis=1)], np.nan)
    return xr.DataArray(first, dims=("sample",), coords={"sample": departure["sample"].values})
