"""AtP* corrections: recorded attention is the model's own, each correction replaces exactly the
first-order term it claims to, corrections are second order, and GradDrop's gradients are those of
a model with one layer frozen."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.loading.generators import random_sample
from patchwork.loading.model import load_model
from patchwork.models.attention import project, recorded_attention
from patchwork.patching.atp_star import (
    deltas,
    graddrop_magnitudes,
    qk_corrections,
    readout_corrections,
)
from patchwork.patching.attribution import linearize, site_changes
from patchwork.patching.patcher import Patcher, sweep_conditions
from patchwork.study.schema import RunSpec
from patchwork.study.specs import ModelSpec, RandomInit

from . import reference

RUNS = {"clean": RunSpec(picture="blank"), "conflict": RunSpec(picture="other_category")}
LAYERS = 3
SITES = {(layer, c) for layer in range(LAYERS) for c in ("residual", "attention", "mlp")}


#: A random-init model barely tells the runs apart; a larger change shows the nonlinearities.
AMPLIFY = 20.0


@cache
def setting(attention: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A tiny thinker, one sample, source activations (conflict + AMPLIFY × (clean − conflict))
    and the linearized conflict run."""
    spec = RandomInit(layers=LAYERS, hidden_size=32, heads=2, kv_heads=1, seed=6)
    loaded = load_model(ModelSpec(random_init=spec, attention=attention))
    loaded.model.to(dtype)
    sample = random_sample(0, 2, RUNS, "what do you hear", loaded)
    for run in sample.runs.values():
        for name, value in run.items():
            if value.is_floating_point():
                run[name] = value.to(dtype)
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    _, clean = Patcher(loaded.adapter).record(sample.runs["clean"], SITES)
    conflict = sample.runs["conflict"]
    linearization = linearize(
        loaded.adapter, conflict, SITES, *ids, attention=True, readout=True, graddrop=True
    )
    source = scaled(clean, linearization, AMPLIFY)
    masks = loaded.adapter.position_groups(conflict["input_ids"])
    return loaded, sample, ids, source, linearization, masks


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_recorded_attention_gives_the_models_own_logits(attention: str) -> None:
    loaded, sample, *_ = setting(attention)
    adapter, inputs = loaded.adapter, sample.runs["conflict"]
    with torch.no_grad():
        before = adapter.root(**inputs).logits
        with recorded_attention(adapter) as records:
            recorded = adapter.root(**inputs).logits
        after = adapter.root(**inputs).logits
    torch.testing.assert_close(recorded, before, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, before)  # the model's own implementation is back
    assert sorted(records) == list(range(LAYERS))
    probs = records[1].probs
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert bool((probs.triu(1) == 0).all())  # causal


def test_projected_queries_and_keys_are_the_layers_own() -> None:
    loaded, _, _, _, linearization, masks = setting()
    positions = masks["video"].nonzero()[:, 0]
    cos, sin = (t[:, positions] for t in linearization.position_embeddings)
    for layer in range(LAYERS):
        hidden = linearization.layer_inputs[layer][positions][None]
        with torch.no_grad():
            query, key = project(loaded.adapter, layer, hidden, (cos, sin))
        record = linearization.attention[layer]
        torch.testing.assert_close(query, record.query[:, :, positions], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(key, record.key[:, :, positions], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("group", "site"),
    [("video", (0, "residual")), ("all", (0, "mlp")), ("answer", (0, "attention"))],
)
def test_qk_correction_is_the_exact_softmax_change_minus_its_linear_part(group, site) -> None:
    """Run each later layer on its target input plus the site's change, read its attention, and
    compare ⟨∂m/∂A, A'−A⟩ − ⟨∂m/∂q, q'−q⟩ − ⟨∂m/∂k, k'−k⟩ summed over those layers.

    In float64: the correction is a difference of nearly equal terms (about 5e-6 here), which
    float32 rounding moves by 3e-8, more than any honest tolerance on a value that small."""
    loaded, _, _, source, linearization, masks = setting(dtype=torch.float64)
    delta = deltas(source, linearization)
    positions = masks[group]
    expected = {metric: 0.0 for metric in linearization.gradients}
    for layer in range(site[0] + 1, LAYERS):
        record = linearization.attention[layer]
        hidden = linearization.layer_inputs[layer].clone()[None]
        hidden[0, positions] += delta[site][positions]
        with torch.no_grad(), recorded_attention(loaded.adapter) as records:
            loaded.adapter.layer(loaded.adapter.root, layer)(
                hidden,
                attention_mask=record.mask,
                position_embeddings=linearization.position_embeddings,
            )
        new = records[layer]
        for metric, per_layer in linearization.attention_gradients.items():
            grad_query, grad_key, grad_probs = per_layer[layer]
            expected[metric] += float(
                (grad_probs * (new.probs - record.probs)[0]).sum()
                - (grad_query * (new.query - record.query)[0]).sum()
                - (grad_key * (new.key - record.key)[0]).sum()
            )
    corrections = qk_corrections(loaded.adapter, linearization, delta, masks, [group])
    assert abs(expected["logit_diff"]) > 1e-6  # the check has something to check
    for metric, value in expected.items():
        assert corrections[metric][(*site, group)] == pytest.approx(value, rel=1e-6, abs=1e-12)


def test_readout_makes_the_last_layers_answer_residual_exact() -> None:
    """After the last layer only the final norm and unembedding remain: linear + readout is the
    exact change, while the linear estimate alone is not."""
    loaded, sample, ids, source, linearization, masks = setting()
    site, group = (LAYERS - 1, "residual"), "answer"
    delta = deltas(source, linearization)
    exact = (
        reference.logit_diff(
            reference.patched_answer_logits(
                loaded.model,
                dict(sample.runs["conflict"]),
                source,
                [site[0]],
                site[1],
                masks[group],
            ),
            *ids,
        )
        - linearization.metrics["logit_diff"]
    )
    linear = site_changes(delta, linearization.gradients["logit_diff"], masks, [group])
    readout = readout_corrections(loaded.adapter, linearization, delta, masks, [group], *ids)
    corrected = linear[(*site, group)] + readout["logit_diff"][(*site, group)]
    assert corrected == pytest.approx(exact, abs=1e-4)
    assert abs(linear[(*site, group)] - exact) > 1e-2


def scaled(source, linearization, factor: float):
    """Source activations whose change from the target is ``factor`` times the real one."""
    return {
        site: linearization.activations[site] + factor * (source[site] - value)
        for site, value in linearization.activations.items()
    }


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    layer=st.integers(0, LAYERS - 2),
    component=st.sampled_from(["residual", "attention", "mlp"]),
    group=st.sampled_from(["video", "text", "answer", "all"]),
)
def test_corrections_are_second_order(layer: int, component: str, group: str) -> None:
    """Halving a patch's change quarters each correction: it only replaces what the linear
    estimate misses, and vanishes with the change (self-patching corrects nothing). In float64;
    readout at larger changes, as the model's RMS norm computes in float32."""
    loaded, _, ids, source, linearization, masks = setting(dtype=torch.float64)
    key = (layer, component, group)

    def corrections(factor: float) -> tuple[float, float]:
        delta = deltas(scaled(source, linearization, factor), linearization)
        qk = qk_corrections(loaded.adapter, linearization, delta, masks, [group])
        readout = readout_corrections(loaded.adapter, linearization, delta, masks, [group], *ids)
        return qk["logit_diff"][key], readout["logit_diff"][key]

    assert corrections(0.0) == (0.0, 0.0)
    qk = [corrections(factor)[0] for factor in (0.004, 0.002)]
    assert qk[0] != 0
    assert qk[1] / qk[0] == pytest.approx(0.25, abs=0.03)
    readout = [corrections(factor)[1] for factor in (0.04, 0.02)]
    assert (readout[0] != 0) == (group in ("answer", "all"))
    if readout[0] != 0:
        assert readout[1] / readout[0] == pytest.approx(0.25, abs=0.04)


def test_graddrop_gradients_are_those_of_the_model_with_a_layer_frozen() -> None:
    """Dropping layer d's gradient = holding layer d's attention and MLP outputs at their target
    values while the patch moves: the estimate is that run's derivative (finite differences)."""
    loaded, sample, ids, source, linearization, masks = setting()
    site, dropped, group = (0, "residual"), 1, "video"
    conflict = dict(sample.runs["conflict"])
    frozen = reference.capture(loaded.model, conflict, [(dropped, "attention"), (dropped, "mlp")])
    epsilon = 1e-3
    blend = scaled(source, linearization, epsilon)
    handles = [
        reference.module_of(loaded.model, dropped, component).register_forward_hook(
            lambda module, args, output, value=frozen[(dropped, component)]: (
                (value[None], *output[1:]) if isinstance(output, tuple) else value[None]
            )
        )
        for component in ("attention", "mlp")
    ]
    try:
        logits = reference.patched_answer_logits(
            loaded.model, conflict, blend, [site[0]], site[1], masks[group]
        )
    finally:
        for handle in handles:
            handle.remove()
    slope = (reference.logit_diff(logits, *ids) - linearization.metrics["logit_diff"]) / epsilon
    delta = deltas(source, linearization)
    estimate = site_changes(delta, linearization.dropped[dropped], masks, [group])
    plain = site_changes(delta, linearization.gradients["logit_diff"], masks, [group])
    assert estimate[(*site, group)] == pytest.approx(slope, rel=0.05, abs=1e-3)
    assert abs(estimate[(*site, group)] - plain[(*site, group)]) > 1e-3  # dropping mattered


def test_graddrop_magnitude_averages_the_layers_outside_the_window() -> None:
    loaded, _, _, source, linearization, masks = setting()
    delta = deltas(source, linearization)
    conditions = sweep_conditions([0], 2, LAYERS, ["video"], ["mlp"])  # window: layers 0, 1
    (magnitude,) = graddrop_magnitudes(conditions, linearization, delta, masks)
    cells = site_changes(delta, linearization.dropped[2], masks, ["video"])
    assert magnitude == pytest.approx(abs(cells[(0, "mlp", "video")] + cells[(1, "mlp", "video")]))
