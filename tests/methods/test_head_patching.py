"""Head-level activation patching against a plain-torch loop: one forward per (layer, head,
group), a pre-hook written here replacing that head's slice of o_proj's input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork import open_results, parse_study, run_study
from patchwork.engine.runner import load_samples
from patchwork.errors import StudyError
from patchwork.loading.model import load_model
from patchwork.patching.heads import HeadCondition, patched_heads, record_heads
from patchwork.patching.metrics import answer_metrics

from .helpers import study_text

HEADS = """\
  - kind: head_patching
    from: clean
    into: conflict
    layers: [0, 2]
    position_groups: [audio, video, answer]
"""
TESTBED = """\
name: heads-testbed
model: {family: qwen2_5_omni, checkpoint: testbed, attention: sdpa}
dataset: {generator: testbed, samples: 2, seed: 0}
runs:
  clean: {audio: own, picture: blank}
  conflict: {audio: own, picture: other_category}
question: what do you hear
interventions:
  - kind: head_patching
    layers: [1, 4, 5]
    position_groups: [video, text, answer]
execution: {batch_size: 5, unit_size: 2, seed: 0}
"""


def o_proj_inputs(model, layers_module, inputs) -> dict[int, torch.Tensor]:
    kept = {}

    def keep(layer):
        def hook(module, args):
            kept[layer] = args[0][0].detach().clone()

        return hook

    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(keep(index))
        for index, layer in enumerate(layers_module)
    ]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return kept


def reference_logit_diff(model, layers_module, inputs, clean, layer, head, positions, ids):
    width = clean[layer].shape[-1] // model.config.text_config.num_attention_heads
    columns = slice(head * width, (head + 1) * width)

    def replace(module, args):
        hidden = args[0].clone()
        hidden[0, positions, columns] = clean[layer][positions, columns]
        return (hidden, *args[1:])

    handle = layers_module[layer].self_attn.o_proj.register_forward_pre_hook(replace)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    handle.remove()
    return float(answer_metrics(logits, *ids)["logit_diff"][0])


def check_store(study, results, atol: float) -> int:
    loaded = load_model(study.model)
    model, adapter = loaded.adapter.root, loaded.adapter
    layers_module = model.get_submodule(adapter.layers_path)
    checked = 0
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        clean = o_proj_inputs(model, layers_module, sample.runs["clean"])
        conflict = sample.runs["conflict"]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        masks = adapter.position_groups(conflict["input_ids"])
        stored = results["head_effect"].sel(sample=sample.sample_id, metric="logit_diff")
        for layer in results["head_layer"].values:
            for head in results["head"].values:
                for group in results["head_group"].values:
                    expected = reference_logit_diff(
                        model,
                        layers_module,
                        conflict,
                        clean,
                        int(layer),
                        int(head),
                        masks[str(group)],
                        ids,
                    )
                    value = float(stored.sel(head_layer=layer, head=head, head_group=group))
                    assert value == pytest.approx(expected, abs=atol), (layer, head, group)
                    checked += 1
    return checked


@pytest.mark.parametrize(("attention", "reuse"), [("sdpa", True), ("eager", True), ("sdpa", False)])
def test_head_patching_equals_a_plain_torch_loop(
    tmp_path: Path, attention: str, reuse: bool
) -> None:
    """Resumed mid-model (the fast path) and as full batched forwards."""
    text = study_text(attention, 2, HEADS)
    study = parse_study(text.replace("seed: 0}", f"seed: 0, reuse: {str(reuse).lower()}}}"))
    assert study.execution.reuse is reuse
    results = open_results(run_study(study, tmp_path).store).load()
    assert results["head_effect"].dims == ("sample", "head_layer", "head", "head_group", "metric")
    assert check_store(study, results, 1e-5) == 2 * 2 * 2 * 3
    # the soundtrack precedes the picture and is the same in both runs: no audio head changes
    audio = results["head_effect"].sel(head_group="audio", metric="logit_diff").values
    conflict = results["head_baseline"].sel(head_run="conflict", metric="logit_diff").values
    np.testing.assert_allclose(audio, np.broadcast_to(conflict[:, None, None], audio.shape))


def test_head_patching_on_the_testbed_equals_the_loop(tmp_path: Path) -> None:
    study = parse_study(TESTBED)
    results = open_results(run_study(study, tmp_path).store).load()
    assert check_store(study, results, 1e-4) == 2 * 3 * 4 * 3


@settings(max_examples=50, deadline=None)
@given(layer=st.integers(0, 2), head=st.integers(0, 1), group=st.sampled_from(["video", "all"]))
def test_a_run_patched_with_its_own_heads_is_unchanged(layer: int, head: int, group: str) -> None:
    study = parse_study(study_text("sdpa", 1, HEADS))
    loaded = load_model(study.model)
    sample = load_samples(study, loaded).load(0, 1)[0]
    run = sample.runs["conflict"]
    logits, own = record_heads(loaded.adapter, run, range(3))
    masks = loaded.adapter.position_groups(run["input_ids"])
    patched = patched_heads(loaded.adapter, run, own, [HeadCondition(layer, head, group)], masks)
    torch.testing.assert_close(patched, logits, atol=1e-5, rtol=0)


def test_heads_out_of_range_are_refused_with_the_line(tmp_path: Path) -> None:
    study = parse_study(study_text("sdpa", 1, HEADS + "    heads: [0, 5]\n"))
    with pytest.raises(
        StudyError, match=r":\d+: interventions\[0\]\.heads: head 5 is out of range"
    ):
        run_study(study, tmp_path)


def test_heads_are_ranked_by_the_share_of_the_gap_they_restore(tmp_path: Path) -> None:
    from patchwork.analysis import method_figures

    study = parse_study(study_text("sdpa", 4, HEADS))
    results = open_results(run_study(study, tmp_path).store).load()
    ranking = method_figures.rank_heads(results, "video", n_resamples=200)
    assert list(ranking["rank"]) == list(range(1, 2 * 2 + 1))  # layers × heads
    assert ranking["restored"].is_monotonic_decreasing
    # recomputed from the arrays: Σ(patched − conflict) / Σ(clean − conflict) over samples
    logit = results["head_effect"].sel(head_group="video", metric="logit_diff").values
    base = results["head_baseline"].sel(metric="logit_diff").values  # (sample, [clean, conflict])
    gap = (base[:, 0] - base[:, 1]).sum()
    for row in ranking.itertuples():
        layer, head = [0, 2].index(row.layer), int(row.head)
        expected = (logit[:, layer, head] - base[:, 1]).sum() / gap
        assert row.restored == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert row.ci_low <= row.restored + 1e-9 and row.restored - 1e-9 <= row.ci_high
    figure = method_figures.plot_heads(results)
    assert [ax.get_title() for ax in figure.axes[:3]] == [
        "heads patched at audio",
        "heads patched at video",
        "heads patched at answer",
    ]


@pytest.mark.parametrize(("layer", "head", "group"), [(0, 0, "video"), (2, 1, "answer")])
def test_head_estimates_are_the_derivative_of_exact_patching(layer, head, group) -> None:
    """Patching a + ε (a' − a) at one head moves the logit difference by ε × estimate + O(ε²)."""
    from patchwork.patching.attribution import linearize

    study = parse_study(study_text("sdpa", 1, HEADS))
    loaded = load_model(study.model)
    adapter = loaded.adapter
    sample = load_samples(study, loaded).load(0, 1)[0]
    conflict, ids = sample.runs["conflict"], (sample.audio_answer_id, sample.visual_answer_id)
    _, clean = record_heads(adapter, sample.runs["clean"], [layer])
    _, own = record_heads(adapter, conflict, [layer])
    masks = adapter.position_groups(conflict["input_ids"])
    linearization = linearize(adapter, conflict, [(layer, "heads")], *ids)
    delta = (clean[layer] - own[layer])[masks[group], head]
    gradient = linearization.gradients["logit_diff"][(layer, "heads")].reshape(own[layer].shape)
    estimate = float((delta * gradient[masks[group], head]).sum())
    epsilon = 1e-3
    blend = {layer: own[layer] + epsilon * (clean[layer] - own[layer])}
    logits = patched_heads(adapter, conflict, blend, [HeadCondition(layer, head, group)], masks)
    slope = (
        float(answer_metrics(logits, *ids)["logit_diff"][0]) - linearization.metrics["logit_diff"]
    ) / epsilon
    assert abs(slope) > 1e-5
    assert estimate == pytest.approx(slope, rel=0.05, abs=1e-4)


def test_head_attribution_with_a_budget(tmp_path: Path) -> None:
    """Budget 1: every cell exact, equal to method: exact. Budget 0: estimates, flagged, that
    rank the cells like exact patching; exact only where the patch changes nothing."""
    from patchwork.patching.attribution import spearman

    def run(options: str, name: str):
        text = study_text("sdpa", 3, HEADS + options)
        return open_results(run_study(parse_study(text), tmp_path / name).store).load()

    exact = run("", "exact")
    full = run("    method: attribution\n    verify_budget: 1.0\n", "full")
    none = run("    method: attribution\n    verify_budget: 0.0\n", "none")
    assert bool((full["head_verified"] == 1).all())
    np.testing.assert_allclose(full["head_effect"].values, exact["head_effect"].values, atol=1e-5)
    flags = none["head_verified"].values.astype(bool)
    groups = list(none["head_group"].values)
    assert flags[:, :, :, groups.index("audio")].all()  # the soundtrack is the same in both runs
    assert not flags[:, :, :, groups.index("video")].any()
    estimate = none["head_effect"].sel(metric="logit_diff").values
    truth = exact["head_effect"].sel(metric="logit_diff").values
    assert spearman(estimate.ravel(), truth.ravel()) >= 0.9
    assert "head_verified" not in exact
