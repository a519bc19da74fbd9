"""``patchwork bench`` grades methods against planted truth: on the shipped organisms exact
patching + ``locate`` recovers the planted window, knockout recovers inside and not outside, head
methods put a planted head first; the graded dataset round-trips through its Zarr store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
import xarray as xr
from rich.text import Text
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


def synthetic_graded() -> xr.Dataset:
    """Grades shaped as ``run_bench`` writes them, for the table and the figure."""
    from patchwork.bench.suite import GRADES, _dataset

    def grades(**values: object) -> dict[str, object]:
        return {**dict.fromkeys(GRADES, np.nan), "status": "", **values}

    rows = {}
    for organism in ("window 4-5", "window 1"):
        for method, error in (("exact", 0), ("attribution", 4), ("attribution+verify", 0)):
            rows[(organism, method)] = grades(
                status="located", error_layers=error, auroc=1 - error / 10, samples_used=16
            )
        rows[(organism, "knockout")] = grades(inside=0.99, outside=2e-8, samples_used=16)
    for method in ("head_patching", "head_knockout"):
        rows[("heads 4:1 4:3", method)] = grades(first_planted=1.0, planted_share=0.9)
    return _dataset(rows, ["window 4-5", "heads 4:1 4:3", "window 1"])


@pytest.mark.parametrize("terminal", [False, True])
def test_the_table_cuts_no_cell_on_a_narrow_console(terminal: bool) -> None:
    import io

    from rich.console import Console

    from patchwork.cli.bench import bench_table, print_uncut

    out = io.StringIO()
    console = Console(file=out, width=60, force_terminal=terminal)
    print_uncut(console, bench_table(synthetic_graded(), "bench", Path("out")))
    text = out.getvalue()
    assert "…" not in text
    if terminal:  # folded within the terminal's width
        assert max(map(len, Text.from_ansi(text).plain.splitlines())) <= 60
    else:  # one line per row, however wide
        assert "attribution+verify" in text and "heads 4:1 4:3" in text


def test_the_figure_has_a_title_per_panel_and_its_legend_beside_the_bars() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from patchwork.bench.suite import plot_bench

    figure = plot_bench(synthetic_graded())
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    panels = [axes for axes in figure.axes if axes.axison]
    assert len(panels) == 3
    assert all(axes.get_title() for axes in panels)
    assert all(axes.get_legend() is None for axes in panels)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "exact",
        "attribution",
        "attribution+verify",
        "head_patching",
        "head_knockout",
    ]
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(axes.get_window_extent(renderer)) for axes in panels)
