"""Path patching (sender residual → one later head's values → answer) against attention
recomputed by hand, where only that query head reads values computed from the sender-shifted
residual stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import open_results, parse_study, run_study
from patchwork.engine.runner import load_samples
from patchwork.errors import StudyError
from patchwork.loading.model import load_model
from patchwork.patching.metrics import answer_metrics

from . import reference
from .helpers import study_text

PATHS = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    sender_layers: [0, 1]
    receiver_layers: [1, 2]
"""


def outputs_and_inputs(model, layers, inputs):
    """Each decoder layer's output and input (seq, hidden) of one run, by plain hooks."""
    out, into = {}, {}
    handles = []
    for index, layer in enumerate(layers):
        handles.append(
            layer.register_forward_hook(
                lambda m, a, o, i=index: out.__setitem__(
                    i, (o[0] if isinstance(o, tuple) else o)[0]
                )
            )
        )
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, i=index: into.__setitem__(
                    i, (k["hidden_states"] if "hidden_states" in k else a[0])[0]
                ),
                with_kwargs=True,
            )
        )
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return out, into


def path_logit_diff(model, layers, inputs, receiver, head, shifted_values, positions, ids):
    """The run with query head ``head`` of layer ``receiver`` reading ``shifted_values``
    (|positions|, head_dim) at ``positions``, attention recomputed by hand."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        captured["rotary"] = kwargs["position_embeddings"]

    def replace(module, args, output):
        hidden = captured["hidden"]
        cos, sin = captured["rotary"]
        seq, dim = hidden.shape[1], module.head_dim
        q = module.q_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
        k = module.k_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
        v = module.v_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
        q = q * cos[:, None] + reference._rotate(q) * sin[:, None]
        k = k * cos[:, None] + reference._rotate(k) * sin[:, None]
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1).clone()
        v[0, head, positions] = shifted_values
        scores = q @ k.transpose(-1, -2) / dim**0.5
        allowed = torch.ones(seq, seq, dtype=torch.bool).tril()
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(1, seq, -1)
        return (module.o_proj(out), weights)

    attention = layers[receiver].self_attn
    handles = [
        attention.register_forward_pre_hook(grab, with_kwargs=True),
        attention.register_forward_hook(replace),
    ]
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    for handle in handles:
        handle.remove()
    return float(answer_metrics(logits, *ids)["logit_diff"][0])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_path_patching_equals_attention_by_hand(tmp_path: Path, attention: str) -> None:
    study = parse_study(study_text(attention, 2, PATHS))
    results = open_results(run_study(study, tmp_path).store).load()
    effect = results["path_effect"].sel(metric="logit_diff")
    assert effect.dims == ("sample", "sender_layer", "receiver_layer", "receiver_head")
    # a receiver at or before its sender is no path
    assert np.isnan(effect.sel(sender_layer=1, receiver_layer=1).values).all()
    loaded = load_model(study.model)
    model = loaded.model
    layers = reference.layers_of(model)
    dim = layers[0].self_attn.head_dim
    repeat = (
        model.config.text_config.num_attention_heads // model.config.text_config.num_key_value_heads
    )
    checked = 0
    for sample in load_samples(study, loaded).load(0, 2):
        clean_out, _ = outputs_and_inputs(model, layers, sample.runs["clean"])
        conflict = sample.runs["conflict"]
        conflict_out, conflict_in = outputs_and_inputs(model, layers, conflict)
        positions = reference.groups_of(conflict["input_ids"], model.config)["video"]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for sender, receiver in ((0, 1), (0, 2), (1, 2)):
            delta = (clean_out[sender] - conflict_out[sender])[positions]
            layer = layers[receiver]
            with torch.no_grad():
                shifted = layer.self_attn.v_proj(
                    layer.input_layernorm(conflict_in[receiver][positions] + delta)
                )
            for head in range(2):
                kv = head // repeat
                values = shifted[:, kv * dim : (kv + 1) * dim]
                expected = path_logit_diff(
                    model, layers, conflict, receiver, head, values, positions, ids
                )
                stored = float(
                    effect.sel(
                        sample=sample.sample_id,
                        sender_layer=sender,
                        receiver_layer=receiver,
                        receiver_head=head,
                    )
                )
                assert stored == pytest.approx(expected, abs=1e-5), (sender, receiver, head)
                checked += 1
    assert checked == 2 * 3 * 2


def test_the_direct_path_on_the_testbed_equals_the_reference(tmp_path: Path) -> None:
    study = parse_study(
        """\
name: paths-testbed
model: {family: qwen2_5_omni, checkpoint: testbed, attention: sdpa}
dataset: {generator: testbed, samples: 2, seed: 0}
runs:
  clean: {audio: own, picture: blank}
  conflict: {audio: own, picture: other_category}
question: what do you hear
interventions:
  - kind: path_patching
    sender_layers: [0]
    receiver_layers: [4]
execution: {batch_size: 8, unit_size: 2, seed: 0}
"""
    )
    results = open_results(run_study(study, tmp_path).store).load()
    loaded = load_model(study.model)
    model = loaded.model
    layers = reference.layers_of(model)
    dim = layers[0].self_attn.head_dim
    config = model.config.text_config
    repeat = config.num_attention_heads // config.num_key_value_heads
    for sample in load_samples(study, loaded).load(0, 2):
        clean_out, _ = outputs_and_inputs(model, layers, sample.runs["clean"])
        conflict = sample.runs["conflict"]
        conflict_out, conflict_in = outputs_and_inputs(model, layers, conflict)
        positions = reference.groups_of(conflict["input_ids"], model.config)["video"]
        delta = (clean_out[0] - conflict_out[0])[positions]
        with torch.no_grad():
            shifted = layers[4].self_attn.v_proj(
                layers[4].input_layernorm(conflict_in[4][positions] + delta)
            )
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for head in range(config.num_attention_heads):
            kv = head // repeat
            values = shifted[:, kv * dim : (kv + 1) * dim]
            expected = path_logit_diff(model, layers, conflict, 4, head, values, positions, ids)
            stored = results["path_effect"].sel(
                sample=sample.sample_id,
                sender_layer=0,
                receiver_layer=4,
                receiver_head=head,
                metric="logit_diff",
            )
            assert float(stored) == pytest.approx(expected, abs=1e-4)


def test_receivers_must_follow_a_sender(tmp_path: Path) -> None:
    text = study_text("sdpa", 1, PATHS.replace("receiver_layers: [1, 2]", "receiver_layers: [0]"))
    with pytest.raises(StudyError, match=r"receiver_layers: no receiver layer comes after"):
        run_study(parse_study(text), tmp_path)


def test_paths_are_ranked_by_the_share_of_the_gap_they_restore(tmp_path: Path) -> None:
    from patchwork.analysis import method_figures

    results = open_results(run_study(parse_study(study_text("sdpa", 3, PATHS)), tmp_path).store)
    results = results.load()
    ranking = method_figures.rank_paths(results, n_resamples=200)
    assert len(ranking) == 3 * 2  # (0→1, 0→2, 1→2) × 2 heads; 1→1 is no path
    assert (ranking["receiver_layer"] > ranking["sender_layer"]).all()
    assert ranking["restored"].is_monotonic_decreasing
    logit = results["path_effect"].sel(metric="logit_diff")
    base = results["path_baseline"].sel(metric="logit_diff").values  # (sample, [clean, conflict])
    for row in ranking.itertuples():
        values = logit.sel(
            sender_layer=row.sender_layer,
            receiver_layer=row.receiver_layer,
            receiver_head=row.receiver_head,
        ).values
        expected = (values - base[:, 1]).sum() / (base[:, 0] - base[:, 1]).sum()
        assert row.restored == pytest.approx(expected, rel=1e-6, abs=1e-9)
    figure = method_figures.plot_paths(results)
    assert figure.axes[0].get_ylabel() == "sender: residual after layer"
