"""Faithfulness curves (:mod:`patchwork.bench.faithfulness`): rankings break ties against the
planted truth, areas are trapezoids from f(0) = 0, the patch of several cells at once equals a
plain-torch patch of the same attention outputs, and on the shipped organisms the planted cells
carry the whole effect while an inverted ranking is graded as one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchwork.bench import SUITE
from patchwork.bench.faithfulness import areas, cell_orders, measure

from .conftest import CLIPS, stored

WINDOW = next(organism for organism in SUITE if organism.window == (4, 5))


def test_ties_are_broken_against_the_planted_truth() -> None:
    scores = np.array([1.0, 1.0, 0.5, 1.0 + 1e-7, np.nan])
    planted = np.array([True, False, False, False, False])
    top, bottom = cell_orders(scores, planted)
    assert top.tolist() == [1, 3, 0, 2, 4]  # the tied planted cell after its unplanted equals
    assert bottom.tolist() == [4, 2, 0, 1, 3]  # a NaN score ranks lowest; planted first in ties


@pytest.mark.parametrize("cells", [1, 2, 8, 32])
def test_areas_are_trapezoids_over_the_share_of_cells_from_zero(cells: int) -> None:
    rng = np.random.default_rng(cells)
    curve = rng.uniform(-0.2, 1.2, size=cells)
    x = np.arange(cells + 1) / cells
    found = areas(curve)
    assert found["area"] == pytest.approx(np.trapezoid(np.r_[0.0, curve], x))
    assert found["distance"] == pytest.approx(np.trapezoid(np.abs(1 - np.r_[0.0, curve]), x))
    assert areas(np.ones(cells))["area"] == pytest.approx(1 - 1 / (2 * cells))


@pytest.fixture(scope="module")
def prepared(bench_run):
    from patchwork.engine.runner import prepare
    from patchwork.study import load_study

    _, out = bench_run
    study = out / "studies" / WINDOW.slug / "exact.yaml"
    return prepare(load_study(study), store_root=out / "stores" / WINDOW.slug)


def plain_patch(prepared, layers: list[int], clip: int) -> tuple[float, float, float]:
    """Logit differences of the clean run, the conflict run, and the conflict run whose attention
    outputs (the self-attention modules' own outputs, after o_proj) at the text and answer
    positions of ``layers`` are the clean run's: forward hooks on the Hugging Face modules."""
    adapter = prepared.loaded.adapter
    sample = prepared.samples.load(clip, clip + 1)[0]
    modules = [adapter.root.model.language_model.layers[layer].self_attn for layer in layers]
    groups = adapter.position_groups(sample.runs["conflict"]["input_ids"])
    reading = groups["text"] | groups["answer"]
    kept: dict[int, torch.Tensor] = {}

    def keep(number: int):
        def hook(module, args, output):
            kept[number] = output[0].detach().clone()

        return hook

    def write(number: int):
        def hook(module, args, output):
            replaced = output[0].clone()
            replaced[:, reading] = kept[number][:, reading]
            return (replaced, *output[1:])

        return hook

    def logit_diff(run: str, hooks) -> float:
        handles = [module.register_forward_hook(hooks(n)) for n, module in enumerate(modules)]
        try:
            with torch.no_grad():
                logits = adapter.root(**adapter.forward_kwargs(sample.runs[run])).logits
        finally:
            for handle in handles:
                handle.remove()
        answer = logits[0, -1]
        return float(answer[sample.audio_answer_id] - answer[sample.visual_answer_id])

    clean = logit_diff("clean", keep)
    return clean, logit_diff("conflict", lambda n: lambda *a: None), logit_diff("conflict", write)


def test_several_cells_patch_as_a_plain_torch_patch_of_their_attention_outputs(prepared):
    from patchwork.bench.faithfulness import _patched_runs

    heads = range(4)
    cells = [frozenset((layer, head) for head in heads) for layer in range(8)]
    circuits = [frozenset({4}), frozenset({4, 5}), frozenset({0, 6, 7})]
    changed, clean, conflict = _patched_runs(prepared, cells, circuits, 2)
    for clip in range(2):
        for number, circuit in enumerate(circuits):
            reference = plain_patch(prepared, sorted(circuit), clip)
            found = (clean[clip], conflict[clip], changed[clip, number])
            np.testing.assert_allclose(found, reference, atol=1e-4)


def test_the_planted_cells_carry_the_whole_effect_and_the_methods_are_graded(bench_run):
    results, _ = bench_run
    for organism, planted in (("window 4-5", 2), ("heads 4:1 4:3", 2)):
        row = results.sel(organism=organism)
        assert float(row["full_patch"]) == pytest.approx(1.0, abs=1e-4)
        truth = row["planted_faithfulness"]
        cells = int(truth.sel(ranked="top").notnull().sum())
        assert cells == (8 if organism == "window 4-5" else 32)
        top, bottom = (truth.sel(ranked=side).values[:cells] for side in ("top", "bottom"))
        np.testing.assert_allclose(top[planted - 1 :], 1.0, atol=1e-3)
        # the unplanted cells, all of them together, restore under a tenth of the gap
        assert np.abs(bottom[: cells - planted]).max() <= 0.1
        used = row["samples_used"].sel(technique=row["cpr"].dropna("technique")["technique"])
        assert int(row["faithfulness_used"]) == int(used.max())
    window = results.sel(organism="window 4-5")
    assert float(window["cpr"].sel(technique="exact")) == pytest.approx(
        float(window["planted_cpr"]), abs=0.01
    )
    # attribution ranks an unplanted layer second on this organism: a lower area, a larger distance
    assert float(window["cpr"].sel(technique="attribution")) < float(
        window["cpr"].sel(technique="exact")
    )
    assert np.isnan(results["cpr"].sel(organism="control")).all()  # no truth, no curve


def test_an_inverted_ranking_grades_poorly(prepared):
    """A ranking that puts the planted layers last: the top-k curve stays near 0 until they come
    in, and the bottom-k curve is near 1 almost at once."""
    planted = np.isin(np.arange(8), [4, 5])
    cells = [frozenset((layer, head) for head in range(4)) for layer in range(8)]
    found = measure(prepared, cells, {"inverted": -planted.astype(float)}, planted, CLIPS, 8)
    inverted, truth = found.scores["inverted"], found.scores["planted"]
    assert inverted["cpr"] < 0.4 < 0.8 < truth["cpr"]
    assert inverted["bottom_area"] > 0.7 > 0.2 > truth["bottom_area"]
    assert inverted["cmd"] > 0.5
    # the intervals over clips keep the two apart, and hold their own grade
    assert inverted["cpr_high"] < truth["cpr_low"]
    for scores in (inverted, truth):
        for area in ("cpr", "cmd", "bottom_area"):
            assert scores[f"{area}_low"] <= scores[area] <= scores[f"{area}_high"], area


def test_the_faithfulness_areas_have_intervals_over_clips_in_the_store(bench_run):
    import xarray as xr

    results, out = bench_run
    graded = xr.open_zarr(out / "bench.zarr").load()
    for organism, method in (("window 4-5", "attribution"), ("heads 4:1 4:3", "head_patching")):
        row = graded.sel(organism=organism, technique=method)
        for area in ("cpr", "cmd", "bottom_area"):
            low, value, high = (float(row[f"{area}{side}"]) for side in ("_low", "", "_high"))
            assert low <= value <= high and high - low < 0.5, (organism, method, area)
        whole = graded.sel(organism=organism)
        low, high = float(whole["planted_cpr_low"]), float(whole["planted_cpr_high"])
        assert low <= float(whole["planted_cpr"]) <= high
    attribution = graded.sel(organism="window 4-5", technique="attribution")
    assert float(attribution["cpr_high"]) > float(attribution["cpr_low"])  # clips differ


def test_the_curves_figure_has_a_panel_per_organism_with_a_truth(bench_run):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from patchwork.bench.figures import plot_faithfulness

    results, out = bench_run
    figure = plot_faithfulness(results)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    panels = [axes for axes in figure.axes if axes.axison]
    titles = [axes.get_title().splitlines()[0] for axes in panels]
    assert titles == ["window 4-5", "heads 4:1 4:3", "audio 0-2"]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()][0] == "planted truth"
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(axes.get_window_extent(renderer)) for axes in panels)
    assert stored(out, "window 4-5", "exact")["sample"].size == CLIPS
