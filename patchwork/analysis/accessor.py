"""``ds.patchwork``: the analysis verbs on a result dataset itself.

Importing :mod:`patchwork.analysis` registers the accessor::

    import patchwork
    results = patchwork.open_results("store/quickstart.zarr")
    results.patchwork.locate_table()
    results.patchwork.plot_heatmap()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from patchwork.analysis import plots as _plots
from patchwork.analysis import profile as _profile
from patchwork.analysis import windows as _windows
from patchwork.analysis.reports import Report, reports_for
from patchwork.analysis.results import (
    SampleCoverage,
    check_results,
    describe,
    done_samples,
    sample_coverage,
)


@xr.register_dataset_accessor("patchwork")
class PatchworkAccessor:
    """Analysis of one result dataset: ``results.patchwork.<verb>(...)``.

    Every verb forwards to the function of the same name in :mod:`patchwork.analysis`, with the
    dataset as first argument; see those functions for shapes and units.
    """

    def __init__(self, results: xr.Dataset) -> None:
        self._results = results

    @property
    def title(self) -> str:
        """``"<study> · <model>"``, as used in figure titles."""
        return describe(self._results)

    def check(self) -> xr.Dataset:
        """Raise :class:`~patchwork.analysis.AnalysisError` unless this looks like a result
        store; returns the dataset for chaining."""
        check_results(self._results)
        return self._results

    def done(self) -> xr.Dataset:
        """The samples marked done (see :func:`~patchwork.analysis.done_samples`)."""
        return done_samples(self._results)

    def sample_coverage(self, metric: str = "normalized_effect") -> SampleCoverage:
        """Samples an analysis of ``metric`` uses, of all, and which it leaves out and why
        (see :func:`~patchwork.analysis.sample_coverage`)."""
        return sample_coverage(self._results, metric)

    def layer_profile(self, metric: str = "normalized_effect", **options) -> xr.Dataset:
        """Mean effect per (layer, position_group, component) with bootstrap intervals
        (see :func:`~patchwork.analysis.layer_profile`): the estimator and samples of the
        heatmap, ``locate`` and the summary ``patchwork run`` prints."""
        return _profile.layer_profile(self._results, metric, **options)

    def reports(self) -> list[Report]:
        """The report of every method kind in the store (see
        :func:`~patchwork.analysis.reports.reports_for`)."""
        return reports_for(self._results)

    def summaries(self, **options: Any) -> dict[str, pd.DataFrame]:
        """Kind → summary table of every method kind in the store, as ``patchwork run`` and
        ``patchwork status`` print them; each names its estimator and samples in
        ``attrs["caption"]``."""
        return {report.kind: report.summary(self._results, **options) for report in self.reports()}

    def noise_floor(self, metric: str = "normalized_effect", **options) -> xr.DataArray:
        """Floor per (position_group, component) from ``null_effect``
        (see :func:`~patchwork.analysis.noise_floor`)."""
        return _profile.noise_floor(self._results, metric, **options)

    def locate(self, metric: str = "normalized_effect", **options) -> xr.Dataset:
        """Located windows per (position_group, component) (see
        :func:`~patchwork.analysis.locate`)."""
        return _windows.locate(self._results, metric, **options)

    def locate_table(self, metric: str = "normalized_effect", **options) -> pd.DataFrame:
        """:meth:`locate` as a tidy table (see :func:`~patchwork.analysis.locate_table`)."""
        return _windows.locate_table(self.locate(metric, **options))

    def _profile_and_windows(
        self, metric: str, seed: int, n_resamples: int, **options: Any
    ) -> tuple[xr.Dataset, xr.Dataset]:
        options.update(seed=seed, n_resamples=n_resamples)
        return self.layer_profile(metric, **options), self.locate(metric, **options)

    def plot_heatmap(
        self,
        metric: str = "normalized_effect",
        components: Sequence[str] | None = None,
        seed: int = 0,
        n_resamples: int = 1000,
    ) -> Figure:
        """Layer × position-group heatmap per component, windows outlined
        (see :func:`~patchwork.analysis.plot_heatmap`)."""
        profile, located = self._profile_and_windows(metric, seed, n_resamples)
        return _plots.plot_heatmap(profile, located, components)

    def plot_layer_profile(
        self,
        component: str = "residual",
        metric: str = "normalized_effect",
        seed: int = 0,
        n_resamples: int = 1000,
    ) -> Figure:
        """Per-layer lines with interval bands for one component
        (see :func:`~patchwork.analysis.plot_layer_profile`)."""
        profile, located = self._profile_and_windows(metric, seed, n_resamples)
        return _plots.plot_layer_profile(profile, component, located)

    def plot_components(
        self, metric: str = "normalized_effect", seed: int = 0, n_resamples: int = 1000
    ) -> Figure:
        """Small multiples across position groups and components
        (see :func:`~patchwork.analysis.plot_components`)."""
        profile, located = self._profile_and_windows(metric, seed, n_resamples)
        return _plots.plot_components(profile, located)

    def save_figures(
        self,
        directory: str | Path,
        metric: str = "normalized_effect",
        formats: Sequence[str] = ("png", "svg"),
        seed: int = 0,
        n_resamples: int = 1000,
        **options: Any,
    ) -> list[Path]:
        """Write every standard figure into ``directory``; returns the paths
        (see :func:`~patchwork.analysis.save_figures`). ``options`` (``estimator``,
        ``min_relative_gap``) go to the profile and the windows."""
        profile, located = self._profile_and_windows(metric, seed, n_resamples, **options)
        return _plots.save_figures(profile, located, directory, formats)
