"""Attention knockout: stored effects equal a hand-written attention with the pairs removed,
under sdpa and eager; rules act on the answer position and on generated tokens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.loading.model import load_model
from patchwork.methods.knockout import Knockout, generate_with_knockout
from patchwork.study.schema import RunSpec
from patchwork.study.specs import ModelSpec, RandomInit

from ..tolerance import normalized_effect_tolerance
from . import reference
from .conftest import Stored

TOLERANCE = 1e-5
#: The thinker config's placeholder and delimiter ids: never a generated token.
MEDIA_IDS = (
    "audio_token_index",
    "video_token_index",
    "image_token_index",
    "audio_start_token_id",
    "audio_end_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)


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
            token = int(results["knockout_token"].sel(sample=sample_id, knockout=label, step=0))
            media = [getattr(thinker.config, name) for name in MEDIA_IDS]
            assert token == int(logits.index_fill(0, torch.tensor(media), -torch.inf).argmax())
        base = results["knockout_baseline"].sel(sample=sample_id)
        assert float(base.sel(knockout_run="conflict", metric="logit_diff")) == pytest.approx(
            conflict_ld, abs=TOLERANCE
        )


RULES = {
    "text_text": Knockout("text_text", ("text",), ("text",), (0, 1, 2)),
    "answer_video": Knockout("answer_video", ("answer",), ("video",), (0, 1, 2)),
    "generated_video": Knockout("generated_video", ("generated",), ("video",), (1, 2)),
    "audio_all": Knockout("audio_all", ("audio",), ("all",), (0, 2)),
    "text_text_keep": Knockout("text_text_keep", ("text",), ("text",), (0, 1, 2), True),
}


def _reference_blocks(rule: Knockout, groups: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The rule's blocked (seq, seq) pairs per layer, built here from the groups: a query blocks
    itself unless the rule keeps it, and a query left without any key keeps itself."""
    queries = torch.stack([groups[g] for g in rule.queries]).any(0)
    keys = torch.stack([groups[g] for g in rule.keys]).any(0)
    seq = queries.numel()
    pairs = queries[:, None] & keys[None, :]
    itself = torch.eye(seq, dtype=torch.bool)
    if rule.keep_self:
        pairs &= ~itself
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    orphaned = ~(causal & ~pairs).any(-1)
    pairs &= ~(itself & orphaned[:, None])
    return dict.fromkeys(rule.layers, pairs)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_study_method_generation_and_reference_agree(attention: str, name: str) -> None:
    """Every rule, three paths — the study method's batched forward, cached generation, and a
    hand-written attention with the pairs removed — at the prefill (the first generated token's
    logits) and at the first decoding step (the second token's)."""
    from patchwork.methods.knockout import knocked_out_logits

    loaded = load_model(
        ModelSpec(
            random_init=RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=1),
            attention=attention,
        )
    )
    thinker, rule = loaded.model, RULES[name]
    inputs = dict(reference_sample(loaded, {"conflict": RunSpec()}).runs["conflict"])
    tokens, generation = generate_with_knockout(
        thinker, inputs, [rule], 2, suppress_tokens=list(range(8))
    )
    first = tokens[:, :1]
    study = [
        knocked_out_logits(loaded.adapter, inputs, [rule])[0],
        knocked_out_logits(loaded.adapter, inputs, [rule], first)[0],
    ]
    groups = reference.groups_of(inputs["input_ids"], thinker.config)
    groups["generated"] = torch.zeros_like(groups["all"])
    prefill = reference.forward_by_hand(thinker, inputs, _reference_blocks(rule, groups))[0][-1]
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], first], dim=1)
    extended["attention_mask"] = torch.ones_like(extended["input_ids"])
    grown = {key: torch.cat([mask, torch.tensor([False])]) for key, mask in groups.items()}
    grown["generated"][-1] = grown["all"][-1] = True
    decoded = reference.forward_by_hand(thinker, extended, _reference_blocks(rule, grown))[0][-1]
    for step, expected in enumerate((prefill, decoded)):
        torch.testing.assert_close(study[step], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(generation[step], expected, atol=1e-5, rtol=0)
    plain = reference.forward_by_hand(thinker, extended)[0][-1]
    assert not torch.allclose(decoded, plain, atol=1e-4)  # every rule changes the decoding step
    if name == "generated_video":  # which does not exist in the prefill
        torch.testing.assert_close(prefill, reference.forward_by_hand(thinker, inputs)[0][-1])


def reference_sample(loaded, runs):
    from patchwork.loading.generators import random_sample

    return random_sample(0, 3, runs, "what do you hear", loaded)


def _diff(logits: torch.Tensor, ids: tuple[int, int]) -> float:
    return float(logits[ids[0]] - logits[ids[1]])


def test_labels_name_runs_of_layers() -> None:
    assert Knockout("r", ("answer",), ("video",), (0, 1, 2, 3, 6, 7)).label == "r@0-3,6-7"
    assert Knockout("r", ("answer",), ("video",), (4,)).label == "r@4-4"


@settings(max_examples=100, deadline=None)
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
            data.draw(st.booleans()),
        )
        for i in range(data.draw(st.integers(1, 3)))
    ]
    blocked = blocked_pairs(rows, groups, num_layers=4)
    for layer in range(4):
        for row, knockout in enumerate(rows):
            for query in range(seq):
                for key in range(seq):
                    expected = (
                        (query != key or not knockout.keep_self)
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


def test_stored_tokens_are_the_generation_paths(tmp_path) -> None:
    """decode_tokens: 3 stores the greedy tokens cached generation gives under the same rule."""
    from patchwork import open_results, parse_study, run_study

    from .helpers import study_text

    methods = """\
  - kind: attention_knockout
    decode_tokens: 3
    rules:
      late: {queries: [answer, generated], keys: [video], layers: 1-2}
"""
    study = parse_study(study_text(samples=2, methods=methods), tmp_path / "s.yaml")
    results = open_results(run_study(study, store_root=tmp_path / "store").store).load()
    assert results["knockout_token"].dims == ("sample", "knockout", "step")
    loaded = load_model(study.model)
    from patchwork.engine.runner import load_samples

    rule = Knockout("late", ("answer", "generated"), ("video",), (1, 2))
    for sample in load_samples(study, loaded).load(0, 2):
        banned = loaded.adapter.media_token_ids()
        tokens, _ = generate_with_knockout(
            loaded.model, dict(sample.runs["conflict"]), [rule], 3, suppress_tokens=banned
        )
        stored = results["knockout_token"].sel(sample=sample.sample_id, knockout="late@1-2")
        assert stored.values.tolist() == tokens[0].tolist()


def test_generated_rules_need_decoding(tmp_path) -> None:
    from patchwork import StudyError, parse_study

    from .helpers import study_text

    methods = """\
  - kind: attention_knockout
    rules:
      late: {queries: [generated], keys: [video]}
"""
    with pytest.raises(StudyError, match="decode_tokens: 2 or more"):
        parse_study(study_text(methods=methods), tmp_path / "s.yaml")


HEAD_RULES = """\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      one_head: {queries: [answer, text], keys: [video], layers: 1-2, heads: [1]}
      each_head: {queries: [answer, text], keys: [video], layers: [1], window: 2, heads: each}
      every_head: {queries: [answer, text], keys: [video], layers: 1-2}
"""


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_head_knockouts_equal_plain_torch(tmp_path, attention: str) -> None:
    """Only the named query heads lose the keys: attention recomputed by hand with one mask per
    head. The sweep over heads ranks heads; blocking every head equals the rule without heads."""
    from patchwork import open_results, parse_study, run_study
    from patchwork.loading.model import load_model

    from .helpers import study_text

    study = parse_study(study_text(attention, 2, HEAD_RULES))
    results = open_results(run_study(study, tmp_path).store).load()
    labels = [str(label) for label in results["knockout"].values]
    assert labels == [
        "one_head@1-2#h1",
        "each_head@1-2#h0",
        "each_head@1-2#h1",
        "every_head@1-2",
    ]
    thinker = load_model(study.model).model
    heads = thinker.config.text_config.num_attention_heads
    for sample_id in results["sample"].values:
        sample = Stored(study, results, load_model(study.model)).sample(sample_id)
        conflict = dict(sample.runs["conflict"])
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        groups = reference.groups_of(conflict["input_ids"], thinker.config)
        pairs = (groups["answer"] | groups["text"])[:, None] & groups["video"][None, :]
        for label, blocked_heads in (
            ("one_head@1-2#h1", [1]),
            ("each_head@1-2#h0", [0]),
            ("each_head@1-2#h1", [1]),
            ("every_head@1-2", list(range(heads))),
        ):
            per_head = torch.zeros(heads, *pairs.shape, dtype=torch.bool)
            per_head[blocked_heads] = pairs
            logits = reference.forward_by_hand(thinker, conflict, {1: per_head, 2: per_head})[0]
            stored_cell = results["knockout_effect"].sel(sample=sample_id, knockout=label)
            assert float(stored_cell.sel(metric="logit_diff")) == pytest.approx(
                _diff(logits[-1], ids), abs=TOLERANCE
            )


def test_heads_a_rule_names_must_exist(tmp_path) -> None:
    from patchwork import parse_study, run_study
    from patchwork.errors import StudyError

    from .helpers import study_text

    text = study_text("sdpa", 1, HEAD_RULES.replace("heads: [1]", "heads: [0, 7]"))
    with pytest.raises(StudyError, match=r"rules\.one_head\.heads: head 7 is out of range"):
        run_study(parse_study(text), tmp_path)


def test_a_head_sweep_is_ranked_by_the_gap_it_recovers(tmp_path) -> None:
    from patchwork import open_results, parse_study, run_study
    from patchwork.analysis import method_figures

    from .helpers import study_text

    study = parse_study(study_text("sdpa", 4, HEAD_RULES))
    results = open_results(run_study(study, tmp_path).store).load()
    ranking = method_figures.rank_knockout_heads(results, "each_head", n_resamples=200)
    assert sorted(ranking["knockout"]) == ["each_head@1-2#h0", "each_head@1-2#h1"]
    assert ranking["recovered"].is_monotonic_decreasing
    knocked = results["knockout_effect"].sel(metric="logit_diff")
    base = results["knockout_baseline"].sel(metric="logit_diff").values  # (sample, [run, ref])
    for row in ranking.itertuples():
        values = knocked.sel(knockout=row.knockout).values
        expected = (values - base[:, 0]).sum() / (base[:, 1] - base[:, 0]).sum()
        assert row.recovered == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert row.head == row.knockout.rsplit("#h", 1)[1]
    # the layer-sweep figure leaves the head sweep out and keeps the other rules
    figure = method_figures.plot_knockout(results)
    assert figure.axes[1].get_title() == "fixed knockouts"
    with pytest.raises(ValueError, match="blocks single heads"):
        method_figures.rank_knockout_heads(results, "every_head")
