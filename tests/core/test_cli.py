"""The command line: the smoke study end to end, and one-line errors with exit code 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from patchwork import open_results
from patchwork.cli import app

from .helpers import SMOKE, study_text

runner = CliRunner()


def test_smoke_study_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "patchwork", "run", str(SMOKE), "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "8 samples" in result.stdout and "smoke.zarr" in result.stdout
    results = open_results(tmp_path / "smoke.zarr").load()
    assert results["effect"].dims == ("sample", "layer", "position_group", "component", "metric")
    assert results.sizes == {
        "sample": 8,
        "layer": 4,
        "position_group": 4,
        "component": 3,
        "metric": 3,
        "run": 2,
        "partner": 1,
    }
    assert np.isfinite(results["effect"].values).all()
    assert np.isfinite(results["null_effect"].values).all()
    # each sample's noise-floor partner: another sample, recorded by index
    partners = results["null_partner"].values[:, 0]
    assert (partners != np.arange(8)).all() and set(partners) <= set(range(8))
    assert results.attrs["study"] == SMOKE.read_text()
    assert set(results.attrs["versions"]) >= {"torch", "transformers", "nnsight", "zarr"}

    status = runner.invoke(app, ["status", str(tmp_path / "smoke.zarr")])
    assert status.exit_code == 0
    assert "8/8 samples done (complete)" in status.stdout


def test_validate_accepts_a_good_study() -> None:
    result = runner.invoke(app, ["validate", str(SMOKE)])
    assert result.exit_code == 0
    assert "valid for random_init (4 layers, 8 samples)" in " ".join(result.stdout.split())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


BAD_STUDIES = {
    "malformed": (lambda t: t.replace("samples: 3", "samples: [3"), "malformed YAML"),
    "unknown key": (lambda t: t.replace("  seed: 3", "  seed: 3\n  colour: red"), "dataset.colour"),
    "wrong type": (lambda t: t.replace("window: 1", "window: two"), "interventions[0].window"),
    "layer out of range": (
        lambda t: t.replace("layers: all", "layers: [1, 9]"),
        "interventions[0].layers: layer 9 is out of range; the model has 3 layers",
    ),
    "missing manifest": (
        lambda t: t.replace("generator: random", "manifest: nowhere.jsonl"),
        "manifest not found",
    ),
    "store outside root": (lambda t: t + "store: ../elsewhere.zarr\n", "outside the store root"),
    "missing checkpoint": (
        lambda t: re.sub(r"random_init: .*", "checkpoint: nowhere", t),
        "model.checkpoint: no checkpoint directory at nowhere",
    ),
}


#: ``validate`` catches every mistake ``run`` does but the store path (a run's store root).
COMMANDS = [(case, "run") for case in sorted(BAD_STUDIES)] + [
    (case, "validate") for case in sorted(BAD_STUDIES) if case != "store outside root"
]


@pytest.mark.parametrize(("case", "command"), COMMANDS)
def test_bad_input_is_one_line_exit_2_and_no_store(tmp_path: Path, case: str, command: str) -> None:
    edit, expected = BAD_STUDIES[case]
    study = write(tmp_path, edit(study_text()))
    store = tmp_path / "store"
    args = ["--store", str(store)] if command == "run" else []
    result = runner.invoke(app, [command, str(study), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert not list(store.glob("*.zarr")) if store.exists() else True
    assert not (tmp_path / "elsewhere.zarr").exists()


def test_status_of_a_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2
    assert "no patchwork store" in result.stderr
