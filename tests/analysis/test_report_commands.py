"""``patchwork plot``, ``locate`` and ``status`` on stores of every method kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from patchwork import open_results
from patchwork.analysis import synthetic_results
from patchwork.analysis.results import MIN_SAMPLES
from patchwork.cli import _register_subcommands, app

from .conftest import _write_store

_register_subcommands()
runner = CliRunner()

NOT_LOCATED = (
    "attention_knockout",
    "logit_lens",
    "attention_share",
    "probes",
    "base_comparison",
    "steering",
    "head_patching",
    "path_patching",
)


@pytest.fixture(scope="module")
def without_patching(every_kind_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of every kind but activation patching (its checksums no longer match)."""
    results = open_results(every_kind_store).load()
    kept = results.drop_vars(["effect", "baseline", "null_effect", "null_partner"])
    return _write_store(tmp_path_factory.mktemp("stores") / "no_patching.zarr", kept)


def test_plot_writes_the_figures_of_every_kind(every_kind_store: Path, tmp_path: Path) -> None:
    arguments = ["plot", str(every_kind_store), "--out", str(tmp_path), "--image-format", "png"]
    # random init: no sample suits the normalized effect, the logit difference is defined
    result = runner.invoke(app, [*arguments, "--resamples", "20", "--metric", "logit_diff"])
    assert result.exit_code == 0, result.output
    assert sorted(path.stem for path in tmp_path.iterdir()) == sorted(
        [
            "knockout",
            "logit_lens",
            "attention_share",
            "attention_heads",
            "probes",
            "base_comparison",
            "heatmap",
            "components",
            "profile_residual",
            "profile_attention",
            "samples_residual",
            "pairs_residual",
            "steering",
            "heads",
            "paths",
        ]
    )
    assert all(path.stat().st_size > 1000 for path in tmp_path.iterdir())


def test_plot_writes_what_it_can_and_says_what_it_could_not(
    every_kind_store: Path, tmp_path: Path
) -> None:
    arguments = ["plot", str(every_kind_store), "--out", str(tmp_path), "--image-format", "png"]
    result = runner.invoke(app, [*arguments, "--metric", "normalized_effect"])  # undefined here
    assert result.exit_code == 2
    assert "no figures for activation_patching: no done sample has a usable" in result.stderr
    assert (tmp_path / "knockout.png").exists() and not (tmp_path / "heatmap.png").exists()


def test_locate_falls_back_to_the_logit_difference_and_says_so(every_kind_store: Path) -> None:
    result = runner.invoke(app, ["locate", str(every_kind_store), "--resamples", "20"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "no sample defines the normalized effect" in text and "where logit_diff" in text
    named = runner.invoke(app, ["locate", str(every_kind_store), "--metric", "normalized_effect"])
    assert named.exit_code == 2 and "no done sample has a usable" in named.stderr


def test_locate_says_what_to_use_for_every_other_kind(every_kind_store: Path) -> None:
    arguments = ["locate", str(every_kind_store), "--resamples", "20", "--metric", "logit_diff"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "does not apply" in line]
    assert [line.split(":")[0] for line in lines] == [
        f"locate does not apply to {kind}" for kind in NOT_LOCATED
    ]
    assert "window" in result.stdout  # the table of activation patching

    as_json = runner.invoke(app, [*arguments, "--format", "json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["metric"] == "logit_diff"  # the lines went to stderr
    assert as_json.stderr.count("does not apply") == len(NOT_LOCATED)


def test_locate_without_anything_to_locate_exits_2_with_the_lines(without_patching) -> None:
    result = runner.invoke(app, ["locate", str(without_patching), "--no-verify"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: locate does not apply to attention_knockout: ")
    assert "locate does not apply to path_patching: rank paths" in lines[0]


def test_status_prints_every_kind_summary(every_kind_store: Path) -> None:
    result = runner.invoke(app, ["status", str(every_kind_store)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for title in (
        "attention knockout: per rule",
        "logit lens: probability",
        "attention share: share",
        "probes: does a linear probe decode audio_answer",
        "base comparison: KL",
        "steering: share of held-out clips",
        "head patching: the top 5 heads",
        "path patching: the top 10 paths",
    ):
        assert title in text
    assert "no sample defines the normalized effect (0 of 6 samples" in text
    assert "activation patching, clean into conflict: mean logit_diff" in text


def test_locate_notes_intervals_from_few_samples(tmp_path: Path) -> None:
    store = _write_store(tmp_path / "few.zarr", synthetic_results(n_samples=5, seed=1))
    result = runner.invoke(app, ["locate", str(store), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert f"note: only 5 samples (fewer than {MIN_SAMPLES})" in " ".join(result.stdout.split())
    document = json.loads(
        runner.invoke(app, ["locate", str(store), "--resamples", "50", "--format", "json"]).stdout
    )
    assert all("fewer than 8" in window["note"] for window in document["windows"])
