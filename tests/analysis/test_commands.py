"""``patchwork locate`` and ``patchwork plot`` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from patchwork.analysis import AnalysisError, locate
from patchwork.analysis.commands import located_as_json, parse_floor
from patchwork.cli import _register_subcommands, app

_register_subcommands()
runner = CliRunner()


def test_locate_prints_a_table(store: Path) -> None:
    result = runner.invoke(app, ["locate", str(store), "--resamples", "100"])
    assert result.exit_code == 0, result.output
    assert "synthetic · synthetic-model" in result.output
    assert "answer" in result.output and "none" in result.output


def test_locate_json_is_machine_readable(store: Path) -> None:
    result = runner.invoke(app, ["locate", str(store), "--format", "json", "--resamples", "100"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["floor_source"] == "fixed" and document["metric"] == "normalized_effect"
    windows = {(w["position_group"], w["component"]): w for w in document["windows"]}
    assert windows[("answer", "residual")]["window"] == "5"
    assert windows[("audio", "mlp")]["start_layer"] is None


def test_plot_writes_figures(small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    arguments = ["plot", str(small_store), "--out", str(out), "--image-format", "png"]
    result = runner.invoke(app, [*arguments, "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "components.png",
        "heatmap.png",
        "profile_residual.png",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["locate", "{missing}"], "no patchwork store"),
        (["locate", "{store}", "--floor", "loud"], "--floor must be"),
        (["locate", "{store}", "--floor", "-1"], "--floor must be a finite number"),
        (["locate", "{store}", "--metric", "accuracy"], "metric must be one of"),
        (["plot", "{missing}", "--out", "{missing}"], "no patchwork store"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    store: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    filled = [a.format(store=store, missing=tmp_path / "missing.zarr") for a in arguments]
    result = runner.invoke(app, filled)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_parse_floor_and_json_helpers(results) -> None:
    assert parse_floor("auto") == "auto" and parse_floor("0.2") == 0.2
    with pytest.raises(AnalysisError):
        parse_floor("-1")
    document = json.loads(located_as_json(locate(results, n_resamples=50)))
    assert len(document["windows"]) == 12
