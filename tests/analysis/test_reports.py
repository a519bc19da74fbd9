"""One report per method kind: found by the store's variables, a summary that names its estimator
and samples, figures; activation patching's summary, figures and ``locate`` read the same numbers
and mark the same windows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from patchwork import open_results, plugins
from patchwork.analysis import locate, locate_table, synthetic_results
from patchwork.analysis.patching_report import ActivationPatchingReport
from patchwork.analysis.plots import _PALETTE
from patchwork.analysis.reports import GenericReport, Report, reports_for
from patchwork.analysis.results import MIN_SAMPLES, AnalysisError, SampleCoverage

from .conftest import ZERO_GAP_SAMPLE, raise_normalized

SHIPPED = {
    "activation_patching",
    "attention_knockout",
    "logit_lens",
    "attention_share",
    "probes",
    "base_comparison",
    "steering",
    "head_patching",
    "path_patching",
}


@pytest.fixture(scope="module")
def every_kind(every_kind_store: Path) -> xr.Dataset:
    return open_results(every_kind_store).load()


def test_every_shipped_kind_is_found_by_its_variables_in_study_order(every_kind) -> None:
    reports = reports_for(every_kind)
    assert [report.kind for report in reports] == [
        "attention_knockout",
        "logit_lens",
        "attention_share",
        "probes",
        "base_comparison",
        "activation_patching",
        "steering",
        "head_patching",
        "path_patching",
    ]
    assert not any(isinstance(report, GenericReport) for report in reports)
    assert [report.kind for report in reports if report.locate_applies] == ["activation_patching"]
    # a store without a kind's arrays has no report of it
    assert [r.kind for r in reports_for(every_kind[["probe_features", "done"]])] == ["probes"]


def test_every_summary_states_its_estimator_and_samples_and_every_kind_draws(every_kind) -> None:
    for report in reports_for(every_kind):
        options = {"metric": "logit_diff", "n_resamples": 20}  # random init: no usable ratio
        summary = report.summary(every_kind, **options)
        assert isinstance(summary, pd.DataFrame) and len(summary) > 0, report.kind
        attrs = summary.attrs
        assert attrs["kind"] == report.kind and attrs["estimator"] in attrs["caption"]
        used = 4 if report.kind == "steering" else 6  # steering measures its held-out clips
        assert (attrs["n_used"], attrs["n_total"]) == (used, 6)
        assert f"over {used} of 6 samples" in attrs["caption"]
        assert f"fewer than {MIN_SAMPLES}" in attrs["caption"]  # 6 samples: flagged
        figures = report.figures(every_kind, **options)
        assert figures and all(isinstance(f, Figure) and f.axes for f in figures.values())
        if not report.locate_applies:
            assert report.locate_line().startswith(f"locate does not apply to {report.kind}: ")


def test_without_a_sample_defining_the_normalized_effect_the_logit_difference_is_shown(
    every_kind,
) -> None:
    (patching,) = [r for r in reports_for(every_kind) if r.kind == "activation_patching"]
    summary = patching.summary(every_kind)  # random init: no clean run prefers the audio answer
    assert "mean logit_diff" in summary.attrs["title"]
    assert summary.attrs["caption"].startswith("no sample defines the normalized effect (0 of 6")
    assert summary.equals(patching.summary(every_kind, metric="logit_diff"))
    assert "heatmap" in patching.figures(every_kind, n_resamples=10)
    with pytest.raises(AnalysisError, match="no done sample has a usable normalized_effect"):
        patching.summary(every_kind, metric="normalized_effect")  # asked for by name


def test_reports_and_probes_run_without_torch(every_kind_store: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from patchwork.store.zarr_store import open_results
        from patchwork.analysis.reports import reports_for
        results = open_results({str(every_kind_store)!r})
        for report in reports_for(results):
            report.summary(results, metric="logit_diff", n_resamples=5)
            report.figures(results, metric="logit_diff", n_resamples=5)
        print([name for name in ("torch", "transformers", "nnsight") if name in sys.modules])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


STUDY_WITH_A_PLUGIN = "name: s\ninterventions:\n  - kind: activation_patching\n  - kind: margin\n"


def test_a_kind_without_a_report_gets_the_mean_of_its_variables(results: xr.Dataset) -> None:
    margin = xr.DataArray(np.arange(32.0), dims="sample", attrs={"units": "nats"})
    stored = results.assign(margin=margin).assign_attrs(study=STUDY_WITH_A_PLUGIN)
    (fallback,) = [r for r in reports_for(stored) if isinstance(r, GenericReport)]
    assert fallback.kind == "margin" and fallback.variables == ("margin",)
    assert not fallback.locate_applies and fallback.figures(stored) == {}
    summary = fallback.summary(stored)
    done = results["done"].values
    assert summary.loc[0, "mean"] == pytest.approx(np.arange(32.0)[done].mean())
    assert summary.loc[0, "units"] == "nats"
    assert summary.attrs["n_used"] == int(done.sum()) and summary.attrs["n_total"] == 32
    assert "unfinished" in summary.attrs["caption"]
    # without a study text the kind is unknown, and still reported
    assert reports_for(results.assign(margin=margin))[-1].kind == "unreported"


REPORT_PLUGIN = """
from patchwork.analysis.reports import Report, describe_summary
import pandas as pd


class MarginReport(Report):
    kind = "margin"
    variables = ("margin",)
    instead = "read the margins"

    def summary(self, results, **options):
        frame = pd.DataFrame({"largest": [float(results["margin"].max())]})
        return describe_summary(frame, self.kind, "margins", "maximum", 1, 1)
"""


@pytest.fixture
def report_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A package registering a report for kind ``margin`` (entry point ``patchwork.reports``)."""
    site = tmp_path / "site"
    (site / "toy_reports").mkdir(parents=True)
    (site / "toy_reports" / "__init__.py").write_text(REPORT_PLUGIN)
    info = site / "toy_reports-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-reports\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[patchwork.reports]\nmargin = toy_reports:MarginReport\n"
    )
    monkeypatch.syspath_prepend(str(site))
    plugins.refresh()
    yield
    monkeypatch.undo()
    plugins.refresh()


def test_a_plugin_registers_its_own_report(report_plugin, results: xr.Dataset) -> None:
    assert SHIPPED | {"margin"} == set(plugins.names(plugins.REPORTS))
    margin = xr.DataArray(np.arange(32.0), dims="sample")
    stored = results.assign(margin=margin).assign_attrs(study=STUDY_WITH_A_PLUGIN)
    reports = reports_for(stored)
    assert [type(r).__name__ for r in reports] == ["ActivationPatchingReport", "MarginReport"]
    assert reports[1].summary(stored).loc[0, "largest"] == 31.0
    assert reports[1].locate_line() == "locate does not apply to margin: read the margins"
    assert isinstance(reports[1], Report)


def test_summary_heatmap_and_locate_use_one_estimator_and_sample_set(flagged_results) -> None:
    report = ActivationPatchingReport()
    summary = report.summary(flagged_results)
    table = summary.set_index(["component", "layer"])
    coverage = SampleCoverage.from_attrs(locate(flagged_results, n_resamples=50).attrs)
    assert coverage is not None and coverage.used < 24  # the zero-gap sample is left out
    caption = summary.attrs["caption"]
    assert "ratio of means" in caption and ZERO_GAP_SAMPLE in caption
    assert f"over {coverage.used} of {coverage.total} samples" in caption
    # a plain mean over every done sample differs: the test can tell the estimators apart
    done = flagged_results.isel(sample=flagged_results["done"].values)
    plain = done["effect"].sel(metric="normalized_effect").mean("sample")
    plain = plain.sel(component="residual", position_group="answer").values
    assert not np.allclose(plain, table.loc["residual"]["answer"].values)

    figures = report.figures(flagged_results, n_resamples=50)
    panels = [ax for ax in figures["heatmap"].axes if ax.get_title(loc="left")]
    assert len(panels) == 3
    layers = [int(label.get_text()) for label in panels[-1].get_xticklabels()]  # shared x
    for ax in panels:
        groups = [label.get_text() for label in ax.get_yticklabels()]
        drawn = np.asarray(ax.collections[0].get_array()).reshape(len(groups), len(layers))
        expected = table.loc[ax.get_title(loc="left")].loc[layers, groups].to_numpy().T
        np.testing.assert_allclose(drawn, expected, rtol=1e-12)
    for stem, figure in figures.items():
        assert f"n = {coverage.used} of {coverage.total}" in figure.get_suptitle()
        if not stem.startswith("samples_"):  # each sample's own ratio: no estimator
            assert "ratio of means" in figure.get_suptitle()

    located = locate(flagged_results, n_resamples=50)
    found = locate_table(located).query("status == 'located'")
    assert len(found) >= 2
    for row in found.itertuples():
        profile = table.loc[row.component][row.position_group]
        assert row.before == pytest.approx(profile.loc[row.start_layer - 1], rel=1e-12)
        assert row.after == pytest.approx(profile.loc[row.end_layer], rel=1e-12)


def _ramp_results(layer_step: int) -> xr.Dataset:
    """A rise spread over several layers at the answer's residual, a fall at the video's; stored
    layers 0, layer_step, 2 × layer_step …"""
    results = synthetic_results(n_samples=40, steps={}, noise=0.05, seed=8)
    ramp = xr.DataArray(np.minimum(np.arange(8) * 0.2, 1.0), dims="layer")
    raise_normalized(results, {"position_group": "answer", "component": "residual"}, ramp)
    raise_normalized(results, {"position_group": "video", "component": "attention"}, -ramp / 2)
    return results.assign_coords(layer=np.arange(8) * layer_step)


def _layers_within(layers: list[int], start: float, end: float) -> list[int]:
    return [layer for layer in layers if start <= layer <= end]


@pytest.mark.parametrize("layer_step", [1, 3])
def test_the_located_window_is_drawn_the_same_in_every_figure(layer_step: int) -> None:
    results = _ramp_results(layer_step)
    report = ActivationPatchingReport()
    figures = report.figures(results, n_resamples=100)
    located = locate(results, n_resamples=100)
    layers = [int(layer) for layer in results["layer"].values]
    expected = {}
    for row in locate_table(located).query("status == 'located'").itertuples():
        window = _layers_within(layers, row.start_layer, row.end_layer)
        expected[(row.position_group, row.component)] = window
    assert any(len(window) > 1 for window in expected.values())  # a window of several layers

    drawn = {}
    panels = [ax for ax in figures["heatmap"].axes if ax.get_title(loc="left")]
    ticks, labels = panels[-1].get_xticks(), panels[-1].get_xticklabels()  # shared x
    for ax in panels:
        columns = {tick: label.get_text() for tick, label in zip(ticks, labels, strict=True)}
        rows = {
            tick: label.get_text()
            for tick, label in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
        }
        for box in ax.patches:
            assert isinstance(box, Rectangle)
            x0, y0 = box.get_x(), box.get_y()
            x1, y1 = x0 + box.get_width(), y0 + box.get_height()
            (group,) = [name for tick, name in rows.items() if y0 < tick < y1]
            cells = [int(name) for tick, name in columns.items() if x0 < tick < x1]
            drawn[(group, ax.get_title(loc="left"))] = cells
    assert drawn == expected, "heatmap"

    components = [str(c) for c in results["component"].values]
    groups = [str(g) for g in results["position_group"].values]
    drawn = {}
    for index, ax in enumerate(figures["components"].axes):
        group, component = groups[index // len(components)], components[index % len(components)]
        for span in ax.patches:
            start, end = span.get_x(), span.get_x() + span.get_width()
            drawn[(group, component)] = _layers_within(layers, start, end)
    assert drawn == expected, "components"

    for component in components:
        (ax,) = figures[f"profile_{component}"].axes
        drawn = {}
        for span in ax.patches:
            (group,) = [
                g for g in groups if np.allclose(to_rgb(_PALETTE[g]), span.get_facecolor()[:3])
            ]
            start, end = span.get_x(), span.get_x() + span.get_width()
            drawn[(group, component)] = _layers_within(layers, start, end)
        assert drawn == {key: value for key, value in expected.items() if key[1] == component}

    first = components[0]  # per sample and per pair: the window's columns, over every row
    for stem in (f"samples_{first}", f"pairs_{first}"):
        drawn = {}
        rows = len(figures[stem].axes[0].get_yticklabels())  # shared y
        for ax in [ax for ax in figures[stem].axes if ax.get_title() in groups]:
            columns = {
                tick: label.get_text()
                for tick, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
            }
            for box in ax.patches:
                x0, x1 = box.get_x(), box.get_x() + box.get_width()
                assert (box.get_y(), box.get_height()) == (0, rows)
                cells = [int(name) for tick, name in columns.items() if x0 < tick < x1]
                drawn[(ax.get_title(), first)] = cells
        assert drawn == {key: value for key, value in expected.items() if key[1] == first}, stem


def test_locate_flags_intervals_from_fewer_than_eight_samples() -> None:
    few = locate_table(locate(synthetic_results(n_samples=5, seed=1), n_resamples=100))
    assert few["note"].str.contains(f"only 5 samples (fewer than {MIN_SAMPLES})", regex=False).all()
    enough = locate_table(locate(synthetic_results(n_samples=MIN_SAMPLES, seed=1), n_resamples=50))
    assert enough["note"].eq("").all()


def test_run_prints_every_kind_summary(tmp_path: Path) -> None:
    """``patchwork run`` prints the summaries read back from the store it wrote."""
    from typer.testing import CliRunner

    from patchwork.cli import app
    from tests.methods.helpers import study_text

    knockout_only = """\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      video_block: {queries: [answer, text], keys: [video], layers: 1-2}
  - kind: logit_lens
    run: conflict
    position_groups: [answer]
"""
    study = tmp_path / "study.yaml"
    study.write_text(study_text(samples=2, methods=knockout_only))
    result = CliRunner().invoke(app, ["run", str(study), "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "attention knockout: per rule" in text and "logit lens: probability" in text
    assert "over 2 of 2 samples" in text and "video_block" in text
