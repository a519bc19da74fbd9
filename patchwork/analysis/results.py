"""What analysis expects of a result store, and the checks that say so early.

A result store opened with :func:`patchwork.open_results` is an :class:`xarray.Dataset` holding

``effect``
    ``(sample, layer, position_group, component, metric)`` float, NaN where not computed.
``baseline``
    ``(sample, run, metric)``: the unpatched ``clean`` and ``conflict`` runs.
``null_effect`` *(optional)*
    like ``effect``, but each patch taken from a *mismatched* sample's clean run.
``done``
    ``(sample,)`` bool: samples whose results are complete.

Analysis reads only samples marked done, so a store still being filled can be analysed.
"""

from __future__ import annotations

import xarray as xr

from patchwork.errors import PatchworkError

EFFECT_DIMS = ("sample", "layer", "position_group", "component", "metric")
METRICS = ("logit_diff", "audio_probability", "normalized_effect")

METRIC_LABELS = {
    "normalized_effect": "normalized effect (1 = audio answer restored, 0 = no change)",
    "logit_diff": "logit difference, audio − visual answer (nats)",
    "audio_probability": "probability of the audio answer",
}


class AnalysisError(PatchworkError):
    """A result dataset lacks what an analysis needs, or an argument does not fit it."""


def check_results(results: xr.Dataset, variable: str = "effect") -> None:
    """Raise :class:`AnalysisError` unless ``results[variable]`` has the effect dimensions.

    Args:
        results: a result dataset (see the module docstring).
        variable: ``"effect"`` or ``"null_effect"``.
    """
    if not isinstance(results, xr.Dataset):
        raise AnalysisError(
            f"expected an xarray.Dataset of patching results, got {type(results).__name__}"
        )
    if variable not in results.data_vars:
        present = ", ".join(sorted(map(str, results.data_vars))) or "nothing"
        raise AnalysisError(
            f"the results have no {variable!r} variable (they hold: {present}); "
            "open a store written by `patchwork run`"
        )
    missing = [dim for dim in EFFECT_DIMS if dim not in results[variable].dims]
    if missing:
        raise AnalysisError(
            f"{variable!r} lacks the dimension(s) {', '.join(missing)}; "
            f"expected {', '.join(EFFECT_DIMS)}, got {', '.join(map(str, results[variable].dims))}"
        )


def check_choice(name: str, value: str, allowed: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`AnalysisError` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise AnalysisError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def done_samples(results: xr.Dataset) -> xr.Dataset:
    """The samples of ``results`` marked done (all of them when there is no ``done`` mark).

    Returns:
        ``results`` restricted along ``sample``; other dimensions are untouched.

    Raises:
        patchwork.analysis.AnalysisError: when no sample is done yet.
    """
    check_results(results)
    if "done" in results.data_vars:
        results = results.isel(sample=results["done"].values.astype(bool))
    if results.sizes["sample"] == 0:
        raise AnalysisError("no sample in the store is marked done yet: nothing to analyse")
    return results


def select_metric(results: xr.Dataset, metric: str, variable: str = "effect") -> xr.DataArray:
    """``results[variable]`` at one metric, as float64 with dims (sample, layer, position_group,
    component).

    Raises:
        patchwork.analysis.AnalysisError: when the variable is absent or the metric is not stored.
    """
    check_results(results, variable)
    stored = [str(m) for m in results[variable]["metric"].values]
    check_choice("metric", metric, stored)
    return (
        results[variable]
        .sel(metric=metric, drop=True)
        .astype("float64")
        .transpose("sample", "layer", "position_group", "component")
        .compute()
    )


def describe(results: xr.Dataset) -> str:
    """A short title naming the study and the model, e.g. ``"quickstart · testbed"``."""
    study = results.attrs.get("study_name", "unnamed study")
    model = results.attrs.get("model_name")
    return f"{study} · {model}" if model else str(study)
