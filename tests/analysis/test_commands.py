"""``patchwork locate`` and ``patchwork plot`` through the real command line."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from patchwork.analysis import AnalysisError, SampleCoverage, locate, synthetic_results
from patchwork.analysis.results import WRONG_DIRECTION
from patchwork.cli import _register_subcommands, app
from patchwork.cli.analysis import excluded_lines, located_as_json, parse_floor

from .conftest import ZERO_GAP_SAMPLE

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
    assert document["floor_source"] == "auto" and document["metric"] == "normalized_effect"
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
        "pairs_residual.png",
        "profile_residual.png",
        "samples_residual.png",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["locate", "{missing}"], "no patchwork store"),
        (["locate", "{store}", "--floor", "loud"], "--floor must be"),
        (["locate", "{store}", "--floor", "-1"], "--floor must be a finite number"),
        (["locate", "{store}", "--metric", "accuracy"], "metric must be one of"),
        # 10^11 resamples once tried to allocate 5.8 TiB of bootstrap weights
        (["locate", "{store}", "--resamples", "100000000000"], "'--resamples'"),
        (["locate", "{store}", "--resamples", "0"], "'--resamples'"),
        (["plot", "{missing}", "--out", "{missing}"], "no patchwork store"),
        # an output path that cannot be a folder is refused before the store or study is read
        (["plot", "{missing}", "--out", "{file}"], "--out {file}: {file} is a file, not a folder"),
        (["plot", "{missing}", "--out", "{file}/figs"], "{file} is a file, not a folder"),
        (["plot", "{missing}", "--out", "/dev/null"], "/dev/null is not a folder"),
        (["inspect", "{missing}", "--sample", "s0", "--out", "{file}"], "is a file, not a folder"),
        (["inspect", "{missing}", "--sample", "s0", "--out", "/dev/null"], "is not a folder"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    store: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    file = tmp_path / "figures.png"
    file.write_bytes(b"png")
    names = {"store": store, "missing": tmp_path / "missing.zarr", "file": file}
    filled = [a.format(**names) for a in arguments]
    message = message.format(**names)
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


def _flat(text: str) -> str:
    """The output with every run of whitespace as one space: rich wraps long titles."""
    return " ".join(text.split())


def _json_locate(store: Path, *options: str) -> dict:
    arguments = ["locate", str(store), "--format", "json", "--resamples", "50", *options]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_locate_header_says_how_many_samples_of_all_and_which_were_excluded(
    store: Path, flagged_store: Path
) -> None:
    result = runner.invoke(app, ["locate", str(store), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert "synthetic-model, 24 of 32 samples (partial: 8 unfinished) where" in _flat(result.output)
    assert "excluded," not in result.output

    result = runner.invoke(app, ["locate", str(flagged_store), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert "synthetic-model, 23 of 32 samples (partial: 8 unfinished, 1 excluded) where" in text
    assert f"excluded, {WRONG_DIRECTION}: {ZERO_GAP_SAMPLE} (1)" in text


def test_locate_json_lists_the_excluded_samples_by_reason(flagged_store: Path) -> None:
    document = _json_locate(flagged_store)
    assert (document["n_used"], document["n_total"]) == (23, 32)
    assert document["excluded"] == {
        "unfinished": [f"s{i:04d}" for i in range(24, 32)],
        WRONG_DIRECTION: [ZERO_GAP_SAMPLE],
    }
    assert document["samples"] == f"23 of 32 samples (partial: 8 unfinished, 1 {WRONG_DIRECTION})"
    assert max(w["n_samples"] for w in document["windows"]) == 23


def test_excluded_lines_show_the_first_ids_and_the_count() -> None:
    coverage = SampleCoverage(
        3, 10, {"unfinished": ("s8", "s9"), "flagged": ("s1", "s2", "s3", "s4", "s5")}
    )
    assert excluded_lines(coverage) == ["excluded, flagged: s1, s2, s3, … (5)"]
    assert excluded_lines(SampleCoverage(8, 10, {"unfinished": ("s8", "s9")})) == []


def test_floor_help_describes_what_auto_does() -> None:
    result = runner.invoke(app, ["locate", "--help"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output.replace("│", " "))
    assert "auto (0.1 × the median clean–conflict gap of the metric" in text
    assert "null patches if stored" not in text


@pytest.mark.parametrize("with_null", [True, False])
def test_floor_auto_is_a_tenth_of_the_gap_whether_or_not_null_patches_are_stored(
    store: Path, store_without_null: Path, with_null: bool
) -> None:
    document = _json_locate(store if with_null else store_without_null)
    assert document["floor_source"] == "auto"
    assert {w["floor"] for w in document["windows"]} == {0.1}


def test_floor_auto_of_logit_diff_is_a_tenth_of_its_median_gap(store: Path, results) -> None:
    done = results.isel(sample=results["done"].values)
    runs = done["baseline"].sel(metric="logit_diff").astype("float64")
    gap = float(abs(runs.sel(run="clean") - runs.sel(run="conflict")).median())
    document = _json_locate(store, "--metric", "logit_diff")
    assert document["floor_source"] == "auto"
    assert gap > 3.0  # synthetic gaps are about 5 nats: far from the normalized effect's 0.1
    floors = [w["floor"] for w in document["windows"]]
    assert floors == pytest.approx([0.1 * gap] * 12, rel=1e-6)


def test_floor_null_and_a_number_say_so(store: Path) -> None:
    null = _json_locate(store, "--floor", "null")
    assert null["floor_source"] == "null"
    floors = [w["floor"] for w in null["windows"]]
    assert len(set(floors)) > 1 and all(0 < floor < 0.5 for floor in floors)
    fixed = _json_locate(store, "--floor", "0.25")
    assert fixed["floor_source"] == "fixed"
    assert {w["floor"] for w in fixed["windows"]} == {0.25}
    table = runner.invoke(app, ["locate", str(store), "--floor", "null", "--resamples", "50"])
    assert "floor: null;" in _flat(table.output)


def test_floor_null_without_null_patches_is_one_line_and_exit_2(store_without_null: Path) -> None:
    result = runner.invoke(app, ["locate", str(store_without_null), "--floor", "null"])
    assert result.exit_code == 2
    assert "the store has no null_effect" in result.output
    assert "Traceback" not in result.output


def test_a_store_with_every_sample_done_says_n_of_n(tmp_path: Path) -> None:
    from .conftest import _write_store

    path = _write_store(tmp_path / "full.zarr", synthetic_results(n_samples=5, n_layers=3))
    result = runner.invoke(app, ["locate", str(path), "--resamples", "20"])
    assert result.exit_code == 0, result.output
    assert "synthetic-model, 5 of 5 samples where" in _flat(result.output)


@pytest.mark.parametrize("target", ["outside.png", "missing.png"])
def test_plot_writes_nothing_through_a_link_in_its_folder(
    small_store: Path, tmp_path: Path, target: str
) -> None:
    """`figures/heatmap.png -> a file outside` was once overwritten with the heatmap."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not a figure")
    out = tmp_path / "figures"
    out.mkdir()
    (out / "heatmap.png").symlink_to(tmp_path / target)
    arguments = ["plot", str(small_store), "--out", str(out), "--image-format", "png"]
    result = runner.invoke(app, [*arguments, "--resamples", "20"])
    assert result.exit_code == 2, result.output
    assert f"heatmap.png is a symbolic link (to {tmp_path / target})" in _flat(result.output)
    assert outside.read_bytes() == b"not a figure" and not (tmp_path / "missing.png").exists()


@pytest.mark.parametrize("inside", ["", "synthetic-model", "synthetic-model/figures"])
def test_plot_never_writes_figures_into_a_store(small_store: Path, inside: str) -> None:
    """Fourth campaign, attack 2331: `--out` naming the store's model group put the figures
    among its arrays."""
    before = sorted(small_store.rglob("*"))
    out = small_store / inside
    result = runner.invoke(app, ["plot", str(small_store), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"inside the Zarr store {small_store}, which holds" in _flat(result.output)
    assert sorted(small_store.rglob("*")) == before


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_plot_refuses_a_figure_name_taken_by_a_folder_or_fifo(
    small_store: Path, tmp_path: Path, kind: str
) -> None:
    """`figures/heatmap.png` as a folder or a FIFO once ended in a traceback from savefig."""
    out = tmp_path / "figures"
    out.mkdir()
    heatmap = out / "heatmap.png"
    if kind == "folder":
        heatmap.mkdir()
    else:
        os.mkfifo(heatmap)
    arguments = ["plot", str(small_store), "--out", str(out), "--image-format", "png"]
    result = runner.invoke(app, [*arguments, "--resamples", "20"])
    assert result.exit_code == 2, result.output
    what = "is a directory" if kind == "folder" else "is a FIFO"
    assert f"--out: {heatmap} {what}" in _flat(result.output)


def test_plot_on_a_full_disk_says_so_in_one_line(
    small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while a figure was saved once ended in a traceback (OSError ENOSPC)."""
    from patchwork.analysis import plots

    def full_disk(*arguments: object, **options: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plots, "save_figure", full_disk)
    out = tmp_path / "figures"
    arguments = ["plot", str(small_store), "--out", str(out), "--image-format", "png"]
    result = runner.invoke(app, [*arguments, "--resamples", "20"])
    assert result.exit_code == 2, result.output
    assert f"--out {out}: cannot write there (No space left on device)" in _flat(result.output)


def test_bootstrap_resamples_are_bounded() -> None:
    from patchwork.analysis.bootstrap import MAX_RESAMPLES, bootstrap_weights

    with pytest.raises(AnalysisError, match="n_resamples must lie in"):
        bootstrap_weights(8, MAX_RESAMPLES + 1)
