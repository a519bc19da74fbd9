"""The unpatched runs' behaviour, counted over finished samples, and the samples that lack it."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from typer.testing import CliRunner

from patchwork.analysis.results import CLEAN_NOT_AUDIO, CONFLICT_NOT_PICTURE, baseline_report
from patchwork.cli import app

from .conftest import _write_store


def flipped(results: xr.Dataset) -> xr.Dataset:
    """``results`` where s0001's clean run prefers the picture and s0004's conflict run the
    sound (both done), and unfinished s0030's clean run too (it must not count)."""
    changed = results.copy(deep=True)
    logit = changed["baseline"].loc[{"metric": "logit_diff"}]
    logit.loc[{"sample": "s0001", "run": "clean"}] = -1.5
    logit.loc[{"sample": "s0004", "run": "conflict"}] = 0.7
    logit.loc[{"sample": "s0030", "run": "clean"}] = -2.0
    changed["baseline"].loc[{"metric": "logit_diff"}] = logit
    return changed


def test_the_report_counts_finished_samples_only(results: xr.Dataset) -> None:
    data = flipped(results)
    done = data.isel(sample=data["done"].values.astype(bool))
    logit = done["baseline"].sel(metric="logit_diff")
    report = baseline_report(data)
    assert report is not None
    assert report.done == int(data["done"].sum()) == 24
    assert report.clean_prefers_audio == int((logit.sel(run="clean") > 0).sum()) == 23
    assert report.conflict_prefers_picture == int((logit.sel(run="conflict") < 0).sum()) == 23
    assert report.flagged == {CLEAN_NOT_AUDIO: ("s0001",), CONFLICT_NOT_PICTURE: ("s0004",)}
    assert report.describe() == (
        "clean runs prefer the audio answer in 23/24 samples, conflict runs the picture's in 23/24"
    )


def test_status_lists_the_flagged_samples(tmp_path: Path, results: xr.Dataset) -> None:
    store = _write_store(tmp_path / "flipped.zarr", flipped(results))
    result = CliRunner().invoke(app, ["status", str(store)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "baselines: clean runs prefer the audio answer in 23/24 samples" in text
    assert f"flagged, {CLEAN_NOT_AUDIO}: s0001 (1)" in text
    assert f"flagged, {CONFLICT_NOT_PICTURE}: s0004 (1)" in text


def test_no_baseline_no_report(results: xr.Dataset) -> None:
    assert baseline_report(results.drop_vars("baseline")) is None
