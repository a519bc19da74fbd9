"""Patching is exact: the stored sweep equals an independent plain-torch computation, and the
invariants of activation patching hold (property tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchwork import open_results, parse_study, run_study
from patchwork.loading.generators import random_sample
from patchwork.loading.model import load_model
from patchwork.patching.metrics import answer_metrics
from patchwork.patching.patcher import Patcher, sweep_conditions
from patchwork.study.schema import RunSpec
from patchwork.study.specs import ModelSpec, RandomInit

from ..tolerance import normalized_effect_tolerance
from . import reference
from .helpers import study_text

RUNS = {
    "clean": RunSpec(audio="own", picture="blank"),
    "conflict": RunSpec(audio="own", picture="other_category"),
}


@pytest.mark.parametrize(("window", "attention"), [(1, "sdpa"), (2, "eager")])
def test_stored_effects_equal_plain_torch_hooks(
    tmp_path: Path, window: int, attention: str
) -> None:
    study = parse_study(study_text(layers=3, samples=3, window=window, attention=attention))
    summary = run_study(study, store_root=tmp_path)
    results = open_results(summary.store).load()
    assert bool(results["done"].all())

    loaded = load_model(study.model)
    thinker = loaded.model
    num_layers = 3
    sites = [(layer, c) for layer in range(num_layers) for c in ("residual", "attention", "mlp")]
    for sample_id in results["sample"].values:
        index = int(str(sample_id)[1:])
        sample = random_sample(index, 3, study.runs, study.question, loaded)
        clean, conflict = sample.runs["clean"], sample.runs["conflict"]
        source = reference.capture(thinker, dict(clean), sites)
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        with torch.no_grad():
            clean_ld = reference.logit_diff(thinker(**clean).logits[0, -1], *ids)
            conflict_ld = reference.logit_diff(thinker(**conflict).logits[0, -1], *ids)
        groups = loaded.adapter.position_groups(conflict["input_ids"])
        cell = results["effect"].sel(sample=sample_id)
        for layer in range(num_layers):
            layers = range(layer, min(layer + window, num_layers))
            for group in results["position_group"].values:
                for component in ("residual", "attention", "mlp"):
                    logits = reference.patched_answer_logits(
                        thinker, dict(conflict), source, layers, component, groups[str(group)]
                    )
                    expected_ld = reference.logit_diff(logits, *ids)
                    stored = cell.sel(layer=layer, position_group=group, component=component)
                    assert float(stored.sel(metric="logit_diff")) == pytest.approx(
                        expected_ld, abs=1e-5
                    )
                    probability = float(torch.softmax(logits, -1)[ids[0]])
                    assert float(stored.sel(metric="audio_probability")) == pytest.approx(
                        probability, abs=1e-5
                    )
                    normalized = (expected_ld - conflict_ld) / (clean_ld - conflict_ld)
                    assert float(stored.sel(metric="normalized_effect")) == pytest.approx(
                        normalized,
                        abs=normalized_effect_tolerance(1e-5, normalized, clean_ld - conflict_ld),
                    )
        base = results["baseline"].sel(sample=sample_id)
        assert float(base.sel(run="clean", metric="logit_diff")) == pytest.approx(
            clean_ld, abs=1e-5
        )
        assert float(base.sel(run="conflict", metric="normalized_effect")) == 0.0


@pytest.fixture(scope="module")
def tiny_model():
    spec = ModelSpec(random_init=RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=2))
    return load_model(spec)


GROUPS = ("audio", "video", "text", "answer", "all")
COMPONENTS = ("residual", "attention", "mlp")


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    layers=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
    groups=st.lists(st.sampled_from(GROUPS), min_size=1, max_size=5, unique=True),
    components=st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3, unique=True),
    window=st.integers(1, 3),
)
def test_self_patching_changes_nothing(
    tiny_model, seed, layers, groups, components, window
) -> None:
    sample = random_sample(0, seed, RUNS, "what do you hear", tiny_model)
    conflict = sample.runs["conflict"]
    patcher = Patcher(tiny_model.adapter)
    conditions = sweep_conditions(sorted(layers), window, 3, groups, components)
    sites = {(layer, c.component) for c in conditions for layer in c.layers}
    logits, own = patcher.record(conflict, sites)
    patched = patcher.patched(
        conflict, own, conditions, tiny_model.adapter.position_groups(conflict["input_ids"])
    )
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    for name, values in answer_metrics(patched, *ids).items():
        expected = answer_metrics(logits, *ids)[name].expand_as(values)
        torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), layer=st.integers(0, 2))
def test_patching_every_position_restores_the_clean_run(tiny_model, seed, layer) -> None:
    sample = random_sample(0, seed, RUNS, "what do you hear", tiny_model)
    patcher = Patcher(tiny_model.adapter)
    conditions = sweep_conditions([layer], 1, 3, ["all"], ["residual"])
    clean_logits, clean = patcher.record(sample.runs["clean"], {(layer, "residual")})
    conflict = sample.runs["conflict"]
    patched = patcher.patched(
        conflict, clean, conditions, tiny_model.adapter.position_groups(conflict["input_ids"])
    )
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    for name, values in answer_metrics(patched, *ids).items():
        torch.testing.assert_close(
            values, answer_metrics(clean_logits, *ids)[name], atol=1e-5, rtol=1e-5
        )


def test_batched_conditions_equal_one_at_a_time(tiny_model) -> None:
    sample = random_sample(1, 0, RUNS, "what do you hear", tiny_model)
    patcher = Patcher(tiny_model.adapter)
    conditions = sweep_conditions(range(3), 1, 3, GROUPS, COMPONENTS)
    sites = {(layer, c.component) for c in conditions for layer in c.layers}
    _, clean = patcher.record(sample.runs["clean"], sites)
    conflict = sample.runs["conflict"]
    masks = tiny_model.adapter.position_groups(conflict["input_ids"])
    batched = patcher.patched(conflict, clean, conditions, masks)
    single = torch.cat([patcher.patched(conflict, clean, [c], masks) for c in conditions])
    np.testing.assert_allclose(batched.numpy(), single.numpy(), atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_resumed_patching_equals_full_traces(attention: str) -> None:
    from patchwork.patching.partial_forward import ResumePatcher

    spec = ModelSpec(
        random_init=RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=4),
        attention=attention,
    )
    loaded = load_model(spec)
    sample = random_sample(2, 1, RUNS, "what do you hear", loaded)
    patcher, resume = Patcher(loaded.adapter), ResumePatcher(loaded.adapter)
    conditions = sweep_conditions(range(3), 2, 3, (*GROUPS, "image"), COMPONENTS)
    sites = {(layer, c.component) for c in conditions for layer in c.layers}
    _, clean = patcher.record(sample.runs["clean"], sites)
    conflict = sample.runs["conflict"]
    masks = loaded.adapter.position_groups(conflict["input_ids"])
    full = patcher.patched(conflict, clean, conditions, masks)
    resumed = resume.patched(resume.prepare(conflict), clean, conditions, masks)
    np.testing.assert_allclose(resumed.numpy(), full.numpy(), atol=1e-5)


def test_reuse_does_not_change_stored_effects(tmp_path: Path) -> None:
    text = study_text(layers=3, samples=2, window=2)
    with_reuse = open_results(run_study(parse_study(text), tmp_path / "a").store).load()
    without = parse_study(text.replace("seed: 0}", "seed: 0, reuse: false}"))
    assert without.execution.reuse is False
    plain = open_results(run_study(without, tmp_path / "b").store).load()
    np.testing.assert_allclose(with_reuse["effect"].values, plain["effect"].values, atol=1e-5)


def test_a_batch_out_of_memory_is_halved_and_retried(tiny_model, monkeypatch) -> None:
    from patchwork.patching.exact import ExactRunner, first_change
    from patchwork.patching.metrics import answer_metrics as metrics_of

    sample = random_sample(1, 0, RUNS, "what do you hear", tiny_model)
    patcher = Patcher(tiny_model.adapter)
    conditions = sweep_conditions(range(3), 1, 3, GROUPS, COMPONENTS)
    sites = {(layer, c.component) for c in conditions for layer in c.layers}
    clean_logits, clean = patcher.record(sample.runs["clean"], sites)
    conflict = sample.runs["conflict"]
    masks = tiny_model.adapter.position_groups(conflict["input_ids"])
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    expected_runner = ExactRunner(patcher, reuse=False, batch_size=64)
    base = metrics_of(expected_runner.start(conflict, masks, sites), *ids)
    clean_metrics = metrics_of(clean_logits, *ids)
    expected = expected_runner.patch(conditions, clean, ids, clean_metrics, base)

    runner = ExactRunner(patcher, reuse=False, batch_size=64)
    runner.start(conflict, masks, sites)
    seq_len = conflict["input_ids"].shape[1]
    live = sum(
        first_change(c, clean, runner.target_activations, masks) < seq_len for c in conditions
    )
    original = Patcher.patched
    sizes: list[int] = []

    def limited(self, target, source, chunk, group_masks):
        sizes.append(len(chunk))
        if len(chunk) > 16:
            raise torch.OutOfMemoryError("simulated")
        return original(self, target, source, chunk, group_masks)

    monkeypatch.setattr(Patcher, "patched", limited)
    tables = runner.patch(conditions, clean, ids, clean_metrics, base)
    assert live > 32  # the first batch is too big: halved until it fits, that size kept
    assert sizes[:3] == [live, live // 2, live // 4] and runner.batches.size == live // 4
    assert all(size <= live // 4 for size in sizes[3:])
    np.testing.assert_allclose(tables, expected, atol=1e-6)


def test_a_patch_that_changes_nothing_is_not_run(tiny_model, monkeypatch) -> None:
    """Patching a run with its own activations needs no run: every condition gets the target's
    metrics, and neither full traces nor resumed runs are started."""
    from patchwork.patching.exact import ExactRunner
    from patchwork.patching.metrics import answer_metrics as metrics_of
    from patchwork.patching.partial_forward import ResumePatcher

    sample = random_sample(1, 0, RUNS, "what do you hear", tiny_model)
    patcher = Patcher(tiny_model.adapter)
    conditions = sweep_conditions(range(3), 1, 3, GROUPS, COMPONENTS)
    sites = {(layer, c.component) for c in conditions for layer in c.layers}
    conflict = sample.runs["conflict"]
    masks = tiny_model.adapter.position_groups(conflict["input_ids"])
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    runs: list[str] = []
    monkeypatch.setattr(Patcher, "patched", lambda *args: runs.append("full"))
    monkeypatch.setattr(ResumePatcher, "patched", lambda *args: runs.append("resumed"))
    for reuse in (True, False):
        runner = ExactRunner(patcher, reuse=reuse, batch_size=8)
        base = metrics_of(runner.start(conflict, masks, sites), *ids)
        tables = runner.patch(conditions, runner.target_activations, ids, base, base)
        assert runs == []
        target = [float(base["logit_diff"][0]), float(base["audio_probability"][0])]
        np.testing.assert_array_equal(tables[:, :2], np.array([target] * len(conditions)))


@pytest.mark.parametrize("boolean", [True, False])
def test_grouped_sdpa_is_sdpa_with_repeated_keys(boolean: bool) -> None:
    """Resumed runs stack the query heads that share a key head instead of copying keys and
    values per head; with an offset causal mask expanded over rows, the output is sdpa's."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from patchwork.models.attention import GROUPED_SDPA

    generator = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, length, keys, dim = 3, 4, 2, 5, 9, 8
    query = torch.randn(rows, heads, length, dim, generator=generator)
    key, value = (torch.randn(rows, kv_heads, keys, dim, generator=generator) for _ in range(2))
    allowed = torch.ones(length, keys, dtype=torch.bool).tril(keys - length)
    mask = allowed if boolean else torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    mask = mask[None, None].expand(rows, 1, -1, -1)
    module = torch.nn.Module().eval()
    output, _ = ALL_ATTENTION_FUNCTIONS[GROUPED_SDPA](module, query, key, value, mask, 0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        key.repeat_interleave(2, dim=1),
        value.repeat_interleave(2, dim=1),
        attn_mask=mask,
        scale=0.3,
    )
    torch.testing.assert_close(output, expected.transpose(1, 2))


def test_sliding_window_layers_take_full_traces(tmp_path: Path) -> None:
    """The resumed path's full causal mask would let a sliding-window layer see too far back; such
    runs are not resumed, and the exact path then equals the model's own masking."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter
    from patchwork.patching.exact import ExactRunner
    from patchwork.patching.partial_forward import ResumePatcher

    spec = RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=4)
    plain = load_model(ModelSpec(random_init=spec))
    sample = random_sample(2, 1, RUNS, "what do you hear", plain)
    conflict, clean_run = sample.runs["conflict"], sample.runs["clean"]
    assert conflict["input_ids"].shape[-1] > 8
    assert ResumePatcher.applicable(plain.adapter, conflict)
    text = plain.model.config.text_config
    text.use_sliding_window, text.sliding_window = True, 8
    text.layer_types = ["full_attention", "sliding_attention", "sliding_attention"]
    plain.model.save_pretrained(tmp_path)
    windowed = Qwen25OmniAdapter(Thinker.from_pretrained(tmp_path).eval())
    assert not ResumePatcher.applicable(windowed, conflict)

    patcher = Patcher(windowed)
    conditions = sweep_conditions(range(3), 1, 3, GROUPS, COMPONENTS)
    sites = {(layer, c.component) for c in conditions for layer in c.layers}
    _, clean = patcher.record(clean_run, sites)
    masks = windowed.position_groups(conflict["input_ids"])
    full = patcher.patched(conflict, clean, conditions, masks)
    resume = ResumePatcher(windowed)
    forced = resume.patched(resume.prepare(conflict), clean, conditions, masks)
    assert float((forced - full).abs().max()) > 1e-3  # resuming anyway would be wrong
    runner = ExactRunner(patcher, reuse=True, batch_size=64)
    runner.start(conflict, masks, sites)
    assert not runner.resumed  # the exact path took full traces
