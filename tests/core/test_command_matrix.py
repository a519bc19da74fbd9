"""Every method through every command, generated from the method registry (issue 26, item 2).

Each registered study kind runs its declared example (:attr:`Method.example`) on a tiny random
thinker through validate, plan, run, Ctrl-C then resume (bit-identical to an uninterrupted run),
re-run (no unit computed, no model loaded), status, verify, ``open_results``, the run's summary,
plot and locate (or its one line saying it does not apply). A new method gets its row by
registering; the test plug-in of ``tests/families/test_plugins.py`` gets one too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from patchwork import open_results, parse_study, plugins, run_study
from patchwork.analysis.reports import reports_for
from patchwork.cli import _register_subcommands, app
from patchwork.engine import runner as engine
from patchwork.errors import RunInterrupted
from patchwork.methods.method import method_class

from ..families.test_plugins import installed  # noqa: F401 - the plug-in row's fixture

_register_subcommands()
cli = CliRunner()
PLUGIN_ENTRY = "  - kind: answer_margin\n    scale: 2.0\n"


def study_text(kind: str, entry: str) -> str:
    return f"""\
name: matrix-{kind}
model:
  family: qwen2_5_omni
  random_init: {{layers: 3, hidden_size: 32, heads: 2, kv_heads: 1, seed: 1}}
  attention: sdpa
dataset:
  generator: random
  samples: 5
  seed: 3
interventions:
{entry}execution: {{batch_size: 4, unit_size: 2, seed: 0}}
"""


def command(*arguments: str | Path, code: int = 0) -> str:
    result = cli.invoke(app, [str(argument) for argument in arguments])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def stored_arrays(store: Path) -> dict[str, np.ndarray]:
    results = open_results(store).load()
    return {str(name): results[name].values for name in results.data_vars}


def interrupt_after_first_unit(count: int) -> None:
    raise KeyboardInterrupt


def every_command(kind: str, entry: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = study_text(kind, entry)
    study = folder / f"{kind}.yaml"
    study.write_text(text)
    root = folder / "store"
    store = root / f"matrix-{kind}.zarr"

    assert "study ok" in command("validate", study) or "ok" in command("validate", study)
    assert kind in command("plan", study)

    reference = stored_arrays(run_study(parse_study(text), folder / "reference").store)
    with pytest.raises(RunInterrupted, match="1/3 units done"):
        run_study(parse_study(text), root, on_unit=interrupt_after_first_unit)
    resumed = command("run", study, "--store", root)
    assert "2 units run, 1 already done" in resumed
    after = stored_arrays(store)
    assert sorted(after) == sorted(reference)
    for name, values in reference.items():
        np.testing.assert_array_equal(after[name], values, err_msg=f"{kind}: {name}")

    results = open_results(store)
    assert bool(results["done"].all())
    reports = reports_for(results)
    assert [report.kind for report in reports] == [kind]
    (report,) = reports
    summary = report.summary(results)
    assert len(summary) and summary.attrs["title"] in resumed  # the run printed it
    assert f"{summary.attrs['n_used']} of 5 samples" in summary.attrs["caption"]

    def no_loading(*arguments: object) -> None:
        raise AssertionError("a finished store's re-run loaded its model")

    with monkeypatch.context() as patched:
        patched.setattr(engine, "load_model", no_loading)
        assert "0 units run, 3 already done" in command("run", study, "--store", root)

    status = command("status", store)
    assert "5/5 samples done (complete)" in status
    assert summary.attrs["title"] in status
    assert "ok" in command("verify", store)

    figures = folder / "figures"
    command("plot", store, "--out", figures)
    drawn = sorted(path.stem for path in figures.glob("*.png"))
    assert drawn == sorted(report.figures(results)), drawn
    if report.locate_applies:
        assert "window" in command("locate", store)
    else:
        line = command("locate", store, code=2)
        assert "does not apply" in line and kind in line


@pytest.mark.parametrize("kind", plugins.names(plugins.METHODS))
def test_every_command_on_every_method(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = method_class(kind).example
    assert example, f"{kind}: declare Method.example so that the command matrix covers it"
    every_command(kind, example, tmp_path, monkeypatch)


def test_every_command_on_a_plugin_method(
    installed: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every_command("answer_margin", PLUGIN_ENTRY, tmp_path, monkeypatch)
