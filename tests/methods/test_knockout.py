"""Attention knockout: stored effects equal a hand-written attention with the pairs removed,
under sdpa and eager; rules act on the answer position and on generated tokens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.loading.model import load_model
from patchwork.methods.knockout import Knockout, generate_with_knockout
from patchwork.study.schema import ModelSpec, RandomInit, RunSpec

from ..tolerance import normalized_effect_tolerance
from . import reference
from .conftest import Stored

TOLERANCE = 1e-5


def test_stored_knockouts_equal_plain_torch(stored: Stored) -> None:
    results, thinker = stored.results, stored.loaded.model
    labels = [str(label) for label in results["knockout"].values]
    assert labels == ["video_block@1-2", "audio_sweep@0-1", "audio_sweep@1-2", "audio_sweep@2-2"]
    spec = stored.study.interventions[0].rules
    for sample_id in results["sample"].values:
        sample = stored.sample(sample_id)
        conflict, clean = dict(sample.runs["conflict"]), dict(sample.runs["clean"])
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        groups = reference.groups_of(conflict["input_ids"], thinker.config)
        conflict_ld = _diff(reference.forward_by_hand(thinker, conflict)[0][-1], ids)
        clean_ld = _diff(reference.forward_by_hand(thinker, clean)[0][-1], ids)
        for label in labels:
            name, span = label.split("@")
            first, last = (int(v) for v in span.split("-"))
            rule = spec[name]
            queries = torch.stack([groups[g] for g in rule.queries]).any(0)
            keys = torch.stack([groups[g] for g in rule.keys]).any(0)
            pairs = queries[:, None] & keys[None, :]
            logits = reference.forward_by_hand(
                thinker, conflict, {layer: pairs for layer in range(first, last + 1)}
            )[0][-1]
            cell = results["knockout_effect"].sel(sample=sample_id, knockout=label)
            assert float(cell.sel(metric="logit_diff")) == pytest.approx(
                _diff(logits, ids), abs=TOLERANCE
            )
            assert float(cell.sel(metric="audio_probability")) == pytest.approx(
                float(torch.softmax(logits, -1)[ids[0]]), abs=TOLERANCE
            )
            expected = (_diff(logits, ids) - conflict_ld) / (clean_ld - conflict_ld)
            assert float(cell.sel(metric="normalized_effect")) == pytest.approx(
                expected,
                abs=normalized_effect_tolerance(TOLERANCE, expected, clean_ld - conflict_ld),
            )
            token = int(results["knockout_token"].sel(sample=sample_id, knockout=label))
            assert token == int(logits.argmax())
        base = results["knockout_baseline"].sel(sample=sample_id)
        assert float(base.sel(knockout_run="conflict", metric="logit_diff")) == pytest.approx(
            conflict_ld, abs=TOLERANCE
        )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_rules_block_the_first_generated_token_and_the_next(attention: str) -> None:
    """Prefill: the last prompt position is the answer, so an answer→video rule changes the
    first generated token's logits; decoding: the generated position is blocked too (equal to a
    full forward that blocks both positions)."""
    loaded = load_model(
        ModelSpec(
            random_init=RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=1),
            attention=attention,
        )
    )
    thinker = loaded.model
    runs = {"conflict": RunSpec(audio="own", picture="other_category")}
    sample = reference_sample(loaded, runs)
    inputs = dict(sample.runs["conflict"])
    rule = Knockout("answer_video", ("answer",), ("video",), (0, 1, 2))
    specials = list(range(8))
    plain_tokens, plain_logits = generate_with_knockout(
        thinker, inputs, [], 2, suppress_tokens=specials
    )
    tokens, logits = generate_with_knockout(thinker, inputs, [rule], 2, suppress_tokens=specials)
    assert not torch.allclose(plain_logits[0], logits[0], atol=1e-4)

    groups = reference.groups_of(inputs["input_ids"], thinker.config)
    first = groups["answer"][:, None] & groups["video"][None, :]
    expected_first = reference.forward_by_hand(thinker, inputs, dict.fromkeys(range(3), first))
    torch.testing.assert_close(logits[0], expected_first[0][-1], atol=1e-5, rtol=0)

    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], tokens[:, :1]], dim=1)
    extended["attention_mask"] = torch.ones_like(extended["input_ids"])
    seq = extended["input_ids"].shape[1]
    answers = torch.zeros(seq, dtype=torch.bool)
    answers[-2:] = True
    video = torch.cat([groups["video"], torch.zeros(1, dtype=torch.bool)])
    both = answers[:, None] & video[None, :]
    expected_second = reference.forward_by_hand(thinker, extended, dict.fromkeys(range(3), both))
    # generate's logits are the raw ones, before suppress_tokens
    torch.testing.assert_close(logits[1], expected_second[0][-1], atol=1e-5, rtol=0)
    assert not torch.allclose(plain_logits[1], logits[1], atol=1e-4)


def reference_sample(loaded, runs):
    from patchwork.loading.generators import random_sample

    return random_sample(0, 3, runs, "what do you hear", loaded)


def _diff(logits: torch.Tensor, ids: tuple[int, int]) -> float:
    return float(logits[ids[0]] - logits[ids[1]])


def test_labels_name_runs_of_layers() -> None:
    assert Knockout("r", ("answer",), ("video",), (0, 1, 2, 3, 6, 7)).label == "r@0-3,6-7"
    assert Knockout("r", ("answer",), ("video",), (4,)).label == "r@4-4"


@settings(max_examples=20, deadline=None)
@given(
    seq=st.integers(3, 12),
    data=st.data(),
)
def test_blocked_pairs_are_exactly_the_rule_pairs(seq: int, data) -> None:
    from patchwork.methods.knockout import blocked_pairs

    names = ("audio", "video", "text", "answer")
    owner = data.draw(st.lists(st.sampled_from(names[:3]), min_size=seq - 1, max_size=seq - 1))
    groups = {name: torch.tensor([o == name for o in owner] + [False]) for name in names[:3]}
    groups["answer"] = torch.tensor([False] * (seq - 1) + [True])
    rows = [
        Knockout(
            f"r{i}",
            tuple(data.draw(st.sets(st.sampled_from(names), min_size=1))),
            tuple(data.draw(st.sets(st.sampled_from(names), min_size=1))),
            tuple(sorted(data.draw(st.sets(st.integers(0, 3), min_size=1)))),
        )
        for i in range(data.draw(st.integers(1, 3)))
    ]
    blocked = blocked_pairs(rows, groups, num_layers=4)
    for layer in range(4):
        for row, knockout in enumerate(rows):
            for query in range(seq):
                for key in range(seq):
                    expected = (
                        query != key
                        and layer in knockout.layers
                        and any(bool(groups[q][query]) for q in knockout.queries)
                        and any(bool(groups[k][key]) for k in knockout.keys)
                    )
                    got = layer in blocked and bool(blocked[layer][row, query, key])
                    assert got == expected


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_blocking_everything_leaves_each_position_itself(attention: str) -> None:
    from patchwork.methods.knockout import knocked_out_logits

    loaded = load_model(
        ModelSpec(
            random_init=RandomInit(layers=2, hidden_size=32, heads=2, kv_heads=1, seed=1),
            attention=attention,
        )
    )
    inputs = dict(reference_sample(loaded, {"conflict": RunSpec()}).runs["conflict"])
    logits = knocked_out_logits(
        loaded.adapter, inputs, [Knockout("everything", ("all",), ("all",), (0, 1))]
    )
    seq = inputs["input_ids"].shape[1]
    only_self = {layer: ~torch.eye(seq, dtype=torch.bool) for layer in (0, 1)}
    expected = reference.forward_by_hand(loaded.model, inputs, only_self)[0][-1]
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=0)
