"""Fixtures of the analysis tests: small synthetic result datasets with a known step."""

from __future__ import annotations

import numpy as np
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


def raise_normalized(results: xr.Dataset, cell: dict, amount) -> None:
    """Add ``amount`` to the normalized effect of ``cell`` in place, and the same share of each
    sample's clean − conflict gap to its logit difference, as a store would hold them."""
    runs = results["baseline"].sel(metric="logit_diff")
    gap = runs.sel(run="clean", drop=True) - runs.sel(run="conflict", drop=True)
    for metric, step in (("normalized_effect", amount), ("logit_diff", amount * gap)):
        where = {**cell, "metric": metric}
        results["effect"].loc[where] = results["effect"].loc[where] + step


#: The done sample of :func:`flagged_results` whose normalized effect is undefined.
ZERO_GAP_SAMPLE = "s0002"


def with_zero_gap(results: xr.Dataset, sample: str) -> xr.Dataset:
    """``results`` with ``sample``'s clean run equal to its conflict run, as the store writes it:
    equal ``logit_diff`` baselines and an all-NaN normalized effect (metrics.MIN_GAP)."""
    flagged = results.copy(deep=True)
    baseline = flagged["baseline"]
    conflict = baseline.sel(sample=sample, run="conflict").values
    baseline.loc[{"sample": sample, "run": "clean"}] = conflict
    for name in ("effect", "null_effect"):
        if name in flagged:
            flagged[name].loc[{"sample": sample, "metric": "normalized_effect"}] = np.nan
    return flagged


@pytest.fixture(scope="session")
def flagged_results(results: xr.Dataset) -> xr.Dataset:
    """The default results (24 of 32 done) with one done sample whose clean–conflict gap is 0."""
    return with_zero_gap(results, ZERO_GAP_SAMPLE)


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


@pytest.fixture(scope="session")
def flagged_store(tmp_path_factory: pytest.TempPathFactory, flagged_results: xr.Dataset):
    """:func:`flagged_results` written as a store."""
    return _write_store(tmp_path_factory.mktemp("stores") / "flagged.zarr", flagged_results)


@pytest.fixture(scope="session")
def store_without_null(tmp_path_factory: pytest.TempPathFactory, results: xr.Dataset):
    """The default results without ``null_effect`` (a study run without mismatched patches)."""
    return _write_store(
        tmp_path_factory.mktemp("stores") / "no_null.zarr", results.drop_vars("null_effect")
    )


#: The kinds ``tests.methods.helpers.METHODS`` lacks: with it, every kind patchwork ships.
EVERY_KIND = """\
  - kind: activation_patching
    from: clean
    into: conflict
    components: [residual, attention]
    layers: all
    position_groups: [video, answer]
  - kind: steering
    run: conflict
    source: clean
    layers: [0, 2]
    position_group: audio
    alphas: [0, 1]
    fit_fraction: 0.4
  - kind: head_patching
    from: clean
    into: conflict
    layers: [0, 2]
    position_groups: [audio, answer]
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    sender_layers: [0, 1]
    receiver_layers: [1, 2]
"""


@pytest.fixture(scope="session")
def every_kind_store(tmp_path_factory: pytest.TempPathFactory):
    """A store written by ``run_study`` holding all nine method kinds (6 samples, 3 layers; a
    random-init thinker, so activation patching has no sample usable for the normalized effect)."""
    from patchwork import parse_study, run_study
    from tests.methods.helpers import METHODS, study_text

    study = parse_study(study_text(samples=6, methods=METHODS + EVERY_KIND))
    return run_study(study, store_root=tmp_path_factory.mktemp("every-kind")).store
