"""``patchwork bench`` grades methods against planted truth: on the shipped organisms exact
patching + ``locate`` recovers the planted window, knockout recovers inside and not outside, head
methods put a planted head first, each read from its usable clips only; the graded dataset
round-trips through its Zarr store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
import xarray as xr
from rich.text import Text
from typer.testing import CliRunner

from patchwork.analysis import ground_truth
from patchwork.bench import SUITE, grade

from .conftest import CLIPS, stored

HEADS = next(organism for organism in SUITE if organism.heads is not None)


def test_exact_patching_and_locate_recover_the_planted_window(bench_run):
    results, _ = bench_run
    window = results.sel(organism="window 4-5")
    exact = window.sel(technique="exact")
    assert str(exact["status"].values) == "located"
    assert float(exact["error_layers"]) == 0
    assert float(exact["auroc"]) >= 0.9
    assert float(window["auroc"].sel(technique="attribution+verify")) >= 0.9
    knockout = window.sel(technique="knockout")
    assert float(knockout["inside"]) >= 0.9
    assert abs(float(knockout["outside"])) <= 0.01
    assert int(exact["samples_used"]) == int(exact["samples_total"]) == CLIPS


def test_exact_patching_and_locate_recover_the_planted_audio_window(bench_run):
    """``audio 0-2``: ``testbed-windowed`` with the sound swapped, the picture blank in both runs;
    patching the text and answer positions together steps inside layers 0-2."""
    results, _ = bench_run
    audio = results.sel(organism="audio 0-2")
    for method in ("exact", "attribution+verify"):
        row = audio.sel(technique=method)
        assert (str(row["status"].values), float(row["error_layers"])) == ("located", 0)
    assert int(audio["samples_used"].sel(technique="exact")) == CLIPS
    knockout = audio.sel(technique="knockout")
    assert float(knockout["inside"]) >= 0.3 and abs(float(knockout["outside"])) <= 0.01


def test_head_methods_put_a_planted_head_first(bench_run):
    results, _ = bench_run
    heads = results.sel(organism="heads 4:1 4:3")
    for method in ("head_patching", "head_knockout"):
        assert float(heads["first_planted"].sel(technique=method)) >= 0.9
        assert float(heads["planted_share"].sel(technique=method)) >= 0.8
    assert np.isnan(float(heads["auroc"].sel(technique="exact")))  # not run on this organism


def test_head_grades_read_the_usable_clips_only_and_say_how_many(bench_run):
    """Two of the heads organism's first 12 clips already prefer the sound in their conflict run
    (counted here from the stored runs). They are left out and reported: a head ranked first in
    such a clip changes no grade, though grading every clip would count it."""
    results, out = bench_run
    patched = stored(out, "heads 4:1 4:3", "head_patching")
    runs = patched["head_baseline"].sel(metric="logit_diff")
    clean, conflict = runs.isel(head_run=0), runs.isel(head_run=1)
    right_way = ((clean > 0) & (conflict < 0)).values
    row = results.sel(organism="heads 4:1 4:3", technique="head_patching")
    assert int(row["samples_used"]) == int(right_way.sum()) == CLIPS - 2
    assert int(row["samples_total"]) == CLIPS

    doctored = patched.copy(deep=True)
    wrong = int(np.flatnonzero(~right_way)[0])
    cell = {
        "sample": patched["sample"].values[wrong],
        "head_layer": 7,
        "head": 0,
        "head_group": "answer",
        "metric": "logit_diff",
    }  # head 7:0 restores most in that clip
    doctored["head_effect"].loc[cell] += 100.0 * np.sign(float(clean[wrong] - conflict[wrong]))
    everything = ground_truth.planted_recovery(ground_truth.head_restoration(doctored), HEADS.heads)
    assert everything["first_planted"].mean() < 1.0  # grading every clip would count it
    graded = grade(HEADS, "head_patching", doctored)
    assert graded["first_planted"] == float(row["first_planted"]) == 1.0
    assert graded["samples_used"] == CLIPS - 2


def test_the_graded_store_reads_back_equal_and_the_figures_are_written(bench_run):
    results, out = bench_run
    xr.testing.assert_equal(xr.open_zarr(out / "bench.zarr").load(), results)
    assert (out / "bench.png").stat().st_size > 0
    assert (out / "faithfulness.png").stat().st_size > 0


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
    from patchwork.bench.run import _dataset
    from patchwork.bench.suite import GRADES

    def grades(**values: object) -> dict[str, object]:
        return {**dict.fromkeys(GRADES, np.nan), "status": "", **values}

    rows = {}
    for organism in ("window 4-5", "window 1"):
        for method, error in (("exact", 0), ("attribution", 4), ("attribution+verify", 0)):
            rows[(organism, method)] = grades(
                status="located",
                error_layers=error,
                auroc=1 - error / 10,
                samples_used=16,
                samples_total=16,
            )
        rows[(organism, "knockout")] = grades(
            inside=0.99, outside=2e-8, samples_used=16, samples_total=16
        )
        rows[(organism, "logit_lens")] = grades(lens_error=0.0, samples_used=16, samples_total=16)
    for method in ("head_patching", "head_knockout", "path_patching"):
        rows[("heads 4:1 4:3", method)] = grades(
            first_planted=1.0, planted_share=0.9, samples_used=13, samples_total=16
        )
    return _dataset(rows, ["window 4-5", "heads 4:1 4:3", "window 1"])


def test_the_table_says_how_many_clips_each_grade_read() -> None:
    import io

    from rich.console import Console

    from patchwork.cli.bench import bench_table, print_uncut

    out = io.StringIO()
    print_uncut(Console(file=out, width=200), bench_table(synthetic_graded(), "bench", Path("o")))
    lines = out.getvalue().splitlines()
    assert any("head_patching" in line and "13 of 16" in line for line in lines)
    assert any("knockout" in line and "16 of 16" in line for line in lines)
    assert any("logit_lens" in line and "16 of 16" in line for line in lines)
    assert any("path_patching" in line and "13 of 16" in line for line in lines)


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

    from patchwork.bench.figures import plot_bench

    figure = plot_bench(synthetic_graded())
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    panels = [axes for axes in figure.axes if axes.axison]
    assert len(panels) == 4
    assert all(axes.get_title() for axes in panels)
    assert all(axes.get_legend() is None for axes in panels)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "exact",
        "attribution",
        "attribution+verify",
        "logit_lens",
        "head_patching",
        "head_knockout",
        "path_patching",
    ]
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(axes.get_window_extent(renderer)) for axes in panels)
