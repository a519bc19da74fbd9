"""Logit lens, attention share, probe features and base comparison equal plain-torch
computations (hand-written attention, explicit RMS norm, two plain forwards), sdpa and eager."""

from __future__ import annotations

import pytest
import torch

from . import reference
from .conftest import Stored

TOLERANCE = 1e-5


def test_logit_lens_equals_explicit_norm_and_unembedding(stored: Stored) -> None:
    results, thinker = stored.results, stored.loaded.model
    norm, unembed = thinker.model.language_model.norm, thinker.lm_head.weight
    assert list(results["lens_layer"].values) == [0, 1, 2]
    for sample_id in results["sample"].values:
        sample = stored.sample(sample_id)
        inputs = dict(sample.runs["conflict"])
        logits, _, residual = reference.forward_by_hand(thinker, inputs)
        groups = reference.groups_of(inputs["input_ids"], thinker.config)
        answers = {"audio": sample.audio_answer_id, "visual": sample.visual_answer_id}
        for layer, stream in residual.items():
            with torch.no_grad():
                probs = torch.softmax(reference.rms_norm(norm, stream) @ unembed.T, -1)
            if layer == 2:  # the last layer read through the final norm is the model itself
                torch.testing.assert_close(probs, torch.softmax(logits, -1), atol=1e-6, rtol=0)
            for group in ("audio", "answer"):
                mean = probs[groups[group]].mean(0)
                cell = results.sel(sample=sample_id, lens_layer=layer, lens_group=group)
                for answer, token in answers.items():
                    stored_p = float(cell["lens_probability"].sel(lens_answer=answer))
                    assert stored_p == pytest.approx(float(mean[token]), abs=TOLERANCE)
                    rank = int((mean > mean[token]).sum())
                    assert int(cell["lens_rank"].sel(lens_answer=answer)) == rank
                top = [int(t) for t in cell["lens_top_tokens"].values]
                assert top == [int(t) for t in mean.topk(3).indices]


def test_attention_share_equals_hand_computed_weights(stored: Stored) -> None:
    results, thinker = stored.results, stored.loaded.model
    keys = [str(k) for k in results["share_key"].values]
    assert keys == ["audio", "video", "image", "text", "answer"]
    share_sum = results["share"].sum("share_key")
    torch.testing.assert_close(
        torch.as_tensor(share_sum.values), torch.ones(share_sum.shape), atol=1e-5, rtol=0
    )
    for sample_id in results["sample"].values:
        inputs = dict(stored.sample(sample_id).runs["conflict"])
        _, weights, _ = reference.forward_by_hand(thinker, inputs)
        groups = reference.groups_of(inputs["input_ids"], thinker.config)
        for layer, probs in weights.items():
            for query in ("answer", "text"):
                for key in keys:
                    expected = probs[:, groups[query]][:, :, groups[key]].sum(-1).mean(-1)
                    cell = results["share"].sel(
                        sample=sample_id, share_layer=layer, share_query=query, share_key=key
                    )
                    torch.testing.assert_close(
                        torch.as_tensor(cell.values), expected, atol=TOLERANCE, rtol=0
                    )
                    mean = results["share_mean"].sel(
                        sample=sample_id, share_layer=layer, share_query=query, share_key=key
                    )
                    assert float(mean) == pytest.approx(float(expected.mean()), abs=TOLERANCE)


def test_attention_share_leaves_the_attention_setting_alone(stored: Stored) -> None:
    from patchwork.methods.attention_share import attention_weights

    adapter = stored.loaded.adapter
    before = adapter.component(adapter.root, 0, "attention").config._attn_implementation
    inputs = dict(stored.sample("s00000").runs["conflict"])
    weights = attention_weights(adapter, inputs, [0])
    assert weights[0].shape[0] == 2
    assert adapter.component(adapter.root, 0, "attention").config._attn_implementation == before


def test_probe_features_are_group_means_of_layer_outputs(stored: Stored) -> None:
    results, thinker = stored.results, stored.loaded.model
    for sample_id in results["sample"].values:
        sample = stored.sample(sample_id)
        inputs = dict(sample.runs["conflict"])
        logits, _, residual = reference.forward_by_hand(thinker, inputs)
        preference = logits[-1, sample.audio_answer_id] - logits[-1, sample.visual_answer_id]
        assert float(results["probe_logit_diff"].sel(sample=sample_id)) == pytest.approx(
            float(preference), abs=TOLERANCE
        )
        groups = reference.groups_of(inputs["input_ids"], thinker.config)
        for layer, stream in residual.items():
            for group in ("audio", "answer"):
                stored_features = results["probe_features"].sel(
                    sample=sample_id, probe_layer=layer, probe_group=group
                )
                torch.testing.assert_close(
                    torch.as_tensor(stored_features.values),
                    stream[groups[group]].mean(0),
                    atol=TOLERANCE,
                    rtol=0,
                )


def test_base_comparison_equals_two_plain_forwards(stored: Stored) -> None:
    from patchwork.loading.model import load_model

    results, thinker = stored.results, stored.loaded.model
    base_spec = stored.study.interventions[4].base.model_copy(
        update={"attention": stored.study.model.attention}
    )
    base = load_model(base_spec).model
    for sample_id in results["sample"].values:
        sample = stored.sample(sample_id)
        for run in ("clean", "conflict"):
            inputs = dict(sample.runs[run])
            with torch.no_grad():
                model_lp = torch.log_softmax(thinker(**inputs).logits[0], -1)
                base_lp = torch.log_softmax(base(**inputs).logits[0], -1)
            kl = torch.nn.functional.kl_div(base_lp, model_lp, log_target=True, reduction="none")
            per_position = kl.sum(-1)
            changed = (model_lp.argmax(-1) != base_lp.argmax(-1)).float()
            groups = reference.groups_of(inputs["input_ids"], thinker.config)
            for group in ("all", "answer"):
                cell = results.sel(sample=sample_id, base_run=run, base_group=group)
                assert float(cell["base_kl"]) == pytest.approx(
                    float(per_position[groups[group]].mean()), abs=TOLERANCE
                )
                assert float(cell["base_top_changed"]) == pytest.approx(
                    float(changed[groups[group]].mean()), abs=TOLERANCE
                )
