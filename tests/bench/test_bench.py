"""``patchwork bench`` grades methods against planted truth: on the shipped organisms exact
patching + ``locate`` recovers the planted window, knockout recovers inside and not outside, head
methods put a planted head first; the graded dataset round-trips through its Zarr store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
import xarray as xr
from typer.testing import CliRunner

from patchwork.bench import SUITE, Organism, run_bench

SHIPPED = [organism for organism in SUITE if organism.checkpoint is not None]


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, Path]:
    out = tmp_path_factory.mktemp("bench")
    return run_bench(out, SHIPPED, samples=8, log=lambda line: None), out


def test_exact_patching_and_locate_recover_the_planted_window(graded):
    results, _ = graded
    window = results.sel(organism="window 4-5")
    exact = window.sel(technique="exact")
    assert str(exact["status"].values) == "located"
    assert float(exact["error_layers"]) == 0
    assert float(exact["auroc"]) >= 0.9
    assert float(window["auroc"].sel(technique="attribution+verify")) >= 0.9
    knockout = window.sel(technique="knockout")
    assert float(knockout["inside"]) >= 0.9
    assert abs(float(knockout["outside"])) <= 0.01
    assert int(exact["samples_used"]) >= 6


def test_head_methods_put_a_planted_head_first(graded):
    results, _ = graded
    heads = results.sel(organism="heads 4:1 4:3")
    for method in ("head_patching", "head_knockout"):
        assert float(heads["first_planted"].sel(technique=method)) >= 0.9
        assert float(heads["planted_share"].sel(technique=method)) >= 0.8
    assert np.isnan(float(heads["auroc"].sel(technique="exact")))  # not run on this organism


def test_the_graded_store_reads_back_equal_and_the_figure_is_written(graded):
    results, out = graded
    xr.testing.assert_equal(xr.open_zarr(out / "bench.zarr").load(), results)
    assert (out / "bench.png").stat().st_size > 0


def test_an_organism_without_a_window_is_graded_nothing_or_spurious():
    """The control's grade is ``nothing`` for a flat profile and ``spurious`` when ``locate``
    finds a window where there should be none."""
    from patchwork.analysis import synthetic_results
    from patchwork.bench.suite import grade

    flat = synthetic_results(steps={("answer", "residual"): (0.0, 0.0)}, null=False)
    stepped = synthetic_results(steps={("answer", "residual"): (0.0, 1.0)}, null=False)
    control = Organism("control")
    assert grade(control, "exact", flat)["status"] == "nothing"
    assert grade(control, "exact", stepped)["status"] == "spurious"
    window = Organism("window", window=(5, 5))
    graded = grade(window, "exact", stepped)
    assert (graded["status"], graded["error_layers"]) == ("located", 0)
    assert graded["auroc"] >= 0.9
    assert grade(Organism("early", window=(1, 2)), "exact", stepped)["error_layers"] >= 3


def test_cli_refuses_an_unknown_organism(tmp_path):
    from patchwork.cli.bench import register

    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)  # more than one command: `bench` is named
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path), "--organism", "window 9"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --organism: unknown 'window 9'")
    assert not any(tmp_path.iterdir())
