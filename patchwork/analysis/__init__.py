"""Analysis of a patching sweep: per-layer profiles, the noise floor, located windows, figures.

Pure functions over the :class:`xarray.Dataset` that :func:`patchwork.open_results` returns, and
the same verbs as an accessor on the dataset (``results.patchwork.locate()``), registered when this
package is imported.
"""

from __future__ import annotations

from patchwork.analysis.accessor import PatchworkAccessor
from patchwork.analysis.bootstrap import bootstrap_mean, bootstrap_weights, resampled_means
from patchwork.analysis.plots import (
    plot_components,
    plot_heatmap,
    plot_layer_profile,
    save_figure,
    save_figures,
    standard_figures,
    window_layers,
)
from patchwork.analysis.profile import (
    DEFAULT_FIXED_FLOOR,
    layer_changes,
    layer_profile,
    mean_profile,
    noise_floor,
)
from patchwork.analysis.reports import Report, reports_for
from patchwork.analysis.results import (
    AnalysisError,
    SampleCoverage,
    check_results,
    done_samples,
    sample_coverage,
    select_metric,
)
from patchwork.analysis.synthetic import synthetic_results
from patchwork.analysis.windows import TABLE_COLUMNS, locate, locate_table, located_spans

__all__ = [
    "DEFAULT_FIXED_FLOOR",
    "TABLE_COLUMNS",
    "AnalysisError",
    "PatchworkAccessor",
    "Report",
    "SampleCoverage",
    "bootstrap_mean",
    "bootstrap_weights",
    "check_results",
    "done_samples",
    "layer_changes",
    "layer_profile",
    "locate",
    "locate_table",
    "located_spans",
    "mean_profile",
    "noise_floor",
    "plot_components",
    "plot_heatmap",
    "plot_layer_profile",
    "reports_for",
    "resampled_means",
    "sample_coverage",
    "save_figure",
    "save_figures",
    "select_metric",
    "standard_figures",
    "synthetic_results",
    "window_layers",
]
