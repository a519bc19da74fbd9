from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

import patchwork.analysis  # noqa: F401  (registers ds.patchwork)
from patchwork.analysis import (
    AnalysisError,
    layer_profile,
    locate,
    locate_table,
    sample_coverage,
)


def test_accessor_verbs_match_the_functions(results: xr.Dataset) -> None:
    options = {"n_resamples": 100, "seed": 2}
    assert results.patchwork.title == "synthetic · synthetic-model"
    assert results.patchwork.check() is results
    assert results.patchwork.done().sizes["sample"] == 24
    assert results.patchwork.sample_coverage() == sample_coverage(results)
    assert results.patchwork.sample_coverage("logit_diff").used == 24
    xr.testing.assert_identical(
        results.patchwork.layer_profile(**options), layer_profile(results, **options)
    )
    xr.testing.assert_identical(results.patchwork.locate(**options), locate(results, **options))
    assert results.patchwork.locate_table(**options).equals(
        locate_table(locate(results, **options))
    )
    assert results.patchwork.noise_floor(n_resamples=50).dims == ("position_group", "component")


def test_accessor_figures(results: xr.Dataset, tmp_path: Path) -> None:
    small = results.isel(component=[0], position_group=[1, 3])
    assert small.patchwork.plot_heatmap(n_resamples=50).axes
    assert small.patchwork.plot_layer_profile("residual", n_resamples=50).axes
    assert len(small.patchwork.plot_components(n_resamples=50).axes) == 2
    paths = small.patchwork.save_figures(tmp_path, formats=["png"], n_resamples=50)
    assert sorted(p.name for p in paths) == [
        "components.png",
        "heatmap.png",
        "profile_residual.png",
    ]


def test_accessor_on_something_else_says_what_is_missing() -> None:
    with pytest.raises(AnalysisError, match="no 'effect' variable"):
        xr.Dataset().patchwork.check()
