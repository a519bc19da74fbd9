"""Fixtures of the analysis tests: small synthetic result datasets with a known step."""

from __future__ import annotations

import pytest
import xarray as xr

from patchwork.analysis import synthetic_results


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "notebook: runs a documentation notebook in a Jupyter kernel (seconds; in the default run)",
    )


@pytest.fixture(scope="session")
def results() -> xr.Dataset:
    """Default synthetic results: 32 samples (24 done), 8 layers, steps at layer 5."""
    return synthetic_results(n_samples=32, done_fraction=0.75, seed=3)


def _write_store(path, results: xr.Dataset):
    import zarr

    # Variable-length strings, as the real store writes them (fixed-width ones warn in Zarr v3).
    as_text = {
        name: results[name].astype(object)
        for name in results.coords
        if results[name].dtype.kind == "U"
    }
    results.assign_coords(as_text).to_zarr(
        path, group="synthetic-model", mode="w", zarr_format=3, consolidated=False
    )
    zarr.open_group(path, mode="a", zarr_format=3).attrs["study_name"] = "synthetic"
    return path


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, results: xr.Dataset):
    """The default synthetic results written as a store with one model group."""
    return _write_store(tmp_path_factory.mktemp("stores") / "synthetic.zarr", results)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory, results: xr.Dataset):
    """Two position groups and one component only: quick to draw."""
    small = results.sel(position_group=["video", "answer"], component=["residual"])
    return _write_store(tmp_path_factory.mktemp("stores") / "small.zarr", small)
