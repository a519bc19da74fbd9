"""Seeded bootstrap over samples.

Every resample draws whole *samples* with replacement and keeps all of a sample's cells together,
so correlations between layers, position groups and components within a sample are preserved.
A resample is stored as counts (how often each sample was drawn), which turns every resampled mean
into one weighted sum over the ``sample`` dimension.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from patchwork.analysis.results import AnalysisError

#: Most bootstrap resamples: the weights alone take ``resamples × samples × 8`` bytes, and every
#: resampled statistic as many again per cell; 100,000 gives intervals far finer than any effect.
MAX_RESAMPLES = 100_000


def bootstrap_weights(sample_count: int, n_resamples: int = 1000, seed: int = 0) -> xr.DataArray:
    """How many times each sample is drawn in each bootstrap resample.

    Args:
        sample_count: number of samples ``n`` (≥ 1).
        n_resamples: number of resamples ``B`` (1 to :data:`MAX_RESAMPLES`).
        seed: seed of the random generator; equal seeds give equal weights.

    Returns:
        int64 DataArray with dims ``(resample, sample)`` and shape ``(B, n)``; each row sums to n.
    """
    if sample_count < 1:
        raise AnalysisError(f"bootstrap needs at least one sample; got {sample_count}")
    if not 1 <= n_resamples <= MAX_RESAMPLES:
        raise AnalysisError(f"n_resamples must lie in [1, {MAX_RESAMPLES:,}]; got {n_resamples}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(
        sample_count, np.full(sample_count, 1.0 / sample_count), size=n_resamples
    )
    return xr.DataArray(counts, dims=("resample", "sample"), name="bootstrap_weights")


def resampled_means(
    values: xr.DataArray, weights: xr.DataArray, denominator: xr.DataArray | None = None
) -> xr.DataArray:
    """The mean over ``sample`` of ``values`` in every resample, skipping NaN cells; with a
    ``denominator``, the ratio of sums Σ values / Σ denominator over the same samples instead.

    Args:
        values: DataArray with a ``sample`` dimension of size n, any other dimensions.
        weights: counts from :func:`bootstrap_weights`, dims ``(resample, sample)``.
        denominator: per-sample DataArray (``sample``, or any dims ``values`` has); each cell
            sums it over the samples whose value is finite.

    Returns:
        float DataArray with dims ``(resample, *other dims of values)``; NaN where a resample drew
        no finite value for a cell.
    """
    if values.sizes.get("sample") != weights.sizes.get("sample"):
        raise AnalysisError(
            f"weights cover {weights.sizes.get('sample')} samples but the values have "
            f"{values.sizes.get('sample')}"
        )
    # Drop the sample index so that weights (which carry none) align by position.
    values = values.drop_vars("sample", errors="ignore").reset_coords(drop=True)
    finite = values.notnull().astype("float64")
    total = xr.dot(weights.astype("float64"), values.fillna(0.0), dim="sample")
    count = xr.dot(weights.astype("float64"), finite, dim="sample")
    if denominator is None:
        return (total / count.where(count > 0)).transpose("resample", ...)
    plain = denominator.drop_vars("sample", errors="ignore").reset_coords(drop=True)
    below = xr.dot(weights.astype("float64"), finite * plain.astype("float64"), dim="sample")
    return (total / below.where(count > 0)).transpose("resample", ...)


def ratio_mean(values: xr.DataArray, denominator: xr.DataArray | None = None) -> xr.DataArray:
    """The mean over ``sample`` of ``values`` (NaN skipped), or with a ``denominator`` the ratio
    of sums over the samples finite in each cell (see :func:`resampled_means`)."""
    plain = values.drop_vars("sample", errors="ignore").reset_coords(drop=True)
    if denominator is None:
        return plain.mean("sample", skipna=True)
    below = denominator.drop_vars("sample", errors="ignore").reset_coords(drop=True)
    finite = plain.notnull()
    total = plain.fillna(0.0).sum("sample")
    return (total / (below * finite).sum("sample")).where(finite.any("sample"))


def bootstrap_mean(
    values: xr.DataArray,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    denominator: xr.DataArray | None = None,
) -> xr.Dataset:
    """Mean over samples (or ratio of sums, with a ``denominator``) with a percentile bootstrap
    confidence interval.

    Args:
        values: DataArray with a ``sample`` dimension; NaN cells are skipped.
        denominator: see :func:`resampled_means`.
        confidence: coverage of the interval, in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        Dataset over the dimensions of ``values`` other than ``sample``, with ``mean``,
        ``ci_low``, ``ci_high`` (units of ``values``) and ``n_samples`` (finite samples per cell);
        its ``simultaneous_halfwidth`` attr bounds every cell's deviation at once.
    """
    if not 0.0 < confidence < 1.0:
        raise AnalysisError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    weights = bootstrap_weights(values.sizes["sample"], n_resamples, seed)
    means = resampled_means(values, weights, denominator)
    alpha = 1.0 - confidence
    bounds = means.quantile([alpha / 2, 1 - alpha / 2], dim="resample", skipna=True)
    plain = values.drop_vars("sample", errors="ignore")
    mean = ratio_mean(values, denominator)
    cells = [dim for dim in means.dims if dim != "resample"]
    deviation = abs(means - mean).max(cells, skipna=True) if cells else abs(means - mean)
    return xr.Dataset(
        {
            "mean": mean,
            "ci_low": bounds.isel(quantile=0, drop=True),
            "ci_high": bounds.isel(quantile=1, drop=True),
            "n_samples": plain.notnull().sum("sample"),
        },
        attrs={
            "confidence": confidence,
            "n_resamples": n_resamples,
            "seed": seed,
            # a half-width that holds for every cell at once: the confidence quantile of the
            # largest deviation of any cell's resampled mean from its mean
            "simultaneous_halfwidth": float(deviation.quantile(confidence)),
        },
    )
