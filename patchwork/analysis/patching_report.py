"""The report of activation patching: its summary is the layer profile the heatmap draws and
``locate`` reads — one estimator, one sample set (:func:`~patchwork.analysis.profile.mean_profile`)
— and its figures mark the windows ``locate`` reports (registered in ``pyproject.toml`` under
``patchwork.reports``; the contract is :class:`~patchwork.analysis.reports.Report`)."""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from patchwork.analysis.profile import estimator_label, layer_profile, mean_profile
from patchwork.analysis.reports import Report, coverage_excluded, describe_summary
from patchwork.analysis.results import AnalysisSettings, SampleCoverage, default_metric


class ActivationPatchingReport(Report):
    """Mean effect per layer, component and position group — the numbers the heatmap draws and
    ``locate`` reads, over the same samples."""

    kind = "activation_patching"
    keys = ("component", "layer")
    variables = ("effect", "baseline")
    optional = ("null_effect", "null_partner", "graddrop")
    locate_applies: ClassVar[bool] = True

    def summary(
        self,
        results: xr.Dataset,
        metric: str | None = None,
        estimator: str | None = None,
        min_relative_gap: float | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """Rows: (component, layer); columns: position groups; values: the mean of ``metric`` as
        :func:`~patchwork.analysis.profile.mean_profile` computes it — the heatmap's numbers.
        ``metric``: default :func:`~patchwork.analysis.results.default_metric` (the normalized
        effect, or the logit difference where no sample defines it, which the caption says)."""
        metric, note = (metric, "") if metric else default_metric(results)
        mean = mean_profile(results, metric, estimator=estimator, min_relative_gap=min_relative_gap)
        stacked = mean.transpose("component", "layer", "position_group").stack(
            row=("component", "layer")
        )
        frame = pd.DataFrame(stacked.transpose("row", "position_group").to_pandas())
        frame.columns = [str(group) for group in frame.columns]
        frame = frame.reset_index()
        frame.attrs["number_format"] = "{:+.2f}"
        coverage = SampleCoverage.from_attrs(mean.attrs)
        assert coverage is not None
        settings = AnalysisSettings.from_results(results, estimator, min_relative_gap)
        runs = [str(run) for run in results["baseline"]["run"].values]
        scale = (
            f" (0 = the {runs[1]} run's answer, 1 = the {runs[0]} run's)"
            if metric == "normalized_effect"
            else ""
        )
        return describe_summary(
            frame,
            self.kind,
            f"activation patching, {runs[0]} into {runs[1]}: mean {metric}{scale} per component, "
            "layer and position group (columns)",
            (f"{note}; " if note else "") + estimator_label(metric, settings.estimator),
            coverage.used,
            coverage.total,
            coverage_excluded(coverage),
        )

    def figures(
        self,
        results: xr.Dataset,
        metric: str | None = None,
        seed: int = 0,
        n_resamples: int = 1000,
        estimator: str | None = None,
        min_relative_gap: float | None = None,
        **options: Any,
    ) -> dict[str, Figure]:
        """``heatmap``, ``components`` and ``profile_<component>`` (see
        :func:`~patchwork.analysis.plots.standard_figures`), and for the first stored component
        the effect per sample (``samples_<component>``) and per category pair
        (``pairs_<component>``, when the store labels its samples; see
        :mod:`~patchwork.analysis.sample_views`)."""
        from patchwork.analysis import sample_views
        from patchwork.analysis.plots import standard_figures
        from patchwork.analysis.windows import locate

        metric = metric or default_metric(results)[0]
        settings: dict[str, Any] = {
            "seed": seed,
            "n_resamples": n_resamples,
            "estimator": estimator,
            "min_relative_gap": min_relative_gap,
        }
        profile = layer_profile(results, metric, **settings)
        located = locate(results, metric, **settings)
        drawn = standard_figures(profile, located)
        component = str(results["component"].values[0])
        chosen: dict[str, Any] = {"estimator": estimator, "min_relative_gap": min_relative_gap}
        per_sample = sample_views.sample_effects(results, metric, component, **chosen)
        drawn[f"samples_{component}"] = sample_views.plot_samples(per_sample, located)
        if "audio_answer" in results.coords and "visual_answer" in results.coords:
            pairs = sample_views.pair_profile(results, metric, component, **chosen)
            drawn[f"pairs_{component}"] = sample_views.plot_pairs(pairs, located)
        return drawn
