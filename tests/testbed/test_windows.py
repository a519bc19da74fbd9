"""Planted windows: they really block attention, agree under eager and sdpa, survive batching
and nnsight wrapping, and the rules behave as data."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.errors import PatchworkError
from patchwork.models import blocks
from patchwork.testbed import model as testbed_model
from patchwork.testbed import windows, world
from patchwork.testbed.samples import build_inputs, collate

VIDEO_SPAN, AUDIO_SPAN = (4, 5), (0, 2)


def _random_windowed_model():
    tokenizer = testbed_model.build_tokenizer()
    model = testbed_model.build_model(tokenizer, seed=3).eval()
    rules = windows.planted_windows(8, VIDEO_SPAN, AUDIO_SPAN)
    blocks.install(model, rules, blocks.modality_token_ids(model.config))
    return model, tokenizer


def _batch(tokenizer, rows=2):
    rng = np.random.default_rng(1)
    ids = torch.tensor([testbed_model.prompt_ids(tokenizer, "what do you hear")])
    runs = [
        build_inputs(ids, [world.synthesize_sound(c.timbre, rng)], world.draw_picture(c, rng)[None])
        for c in world.CATEGORIES[:rows]
    ]
    return collate(runs)


def test_eager_attention_puts_no_mass_on_blocked_pairs_and_matches_sdpa():
    model, tokenizer = _random_windowed_model()
    inputs = _batch(tokenizer)
    groups = blocks.position_groups(inputs["input_ids"], blocks.modality_token_ids(model.config))
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa_logits, atol=1e-5, rtol=1e-5)
    text_to_video = groups["text"][:, None, :, None] & groups["video"][:, None, None, :]
    text_to_audio = groups["text"][:, None, :, None] & groups["audio"][:, None, None, :]
    video_to_audio = groups["video"][:, None, :, None] & groups["audio"][:, None, None, :]
    for layer, probabilities in enumerate(eager.attentions):
        video_mass = float((probabilities * text_to_video).sum())
        audio_mass = float((probabilities * text_to_audio).sum())
        assert (video_mass > 0) == (VIDEO_SPAN[0] <= layer <= VIDEO_SPAN[1]), layer
        assert (audio_mass > 0) == (AUDIO_SPAN[0] <= layer <= AUDIO_SPAN[1]), layer
        assert float((probabilities * video_to_audio).sum()) == 0.0
        torch.testing.assert_close(probabilities.sum(-1), torch.ones_like(probabilities.sum(-1)))


def test_windows_change_the_model_and_removal_restores_it():
    model, tokenizer = _random_windowed_model()
    inputs = _batch(tokenizer, rows=1)
    with torch.no_grad():
        windowed = model(**inputs).logits
        model._patchwork_attention_blocks.remove()
        plain = model(**inputs).logits
    assert not torch.allclose(windowed, plain)


def test_rows_of_a_batch_match_single_rows_and_nnsight_keeps_windows():
    from nnsight import NNsight

    model, tokenizer = _random_windowed_model()
    batch = _batch(tokenizer, rows=2)
    with torch.no_grad():
        together = model(**batch).logits
        first = model(**_batch(tokenizer, rows=1)).logits
    torch.testing.assert_close(together[:1], first, atol=1e-5, rtol=1e-5)
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(**batch):
        traced = wrapped.output.logits.save()
    torch.testing.assert_close(traced, together, atol=1e-6, rtol=1e-6)


def test_planted_windows_as_rules():
    rules = windows.planted_windows(8, (4, 5), None)
    outside = (0, 1, 2, 3, 6, 7)
    assert rules == (
        *(blocks.BlockRule(group, "video", outside) for group in ("text", "answer", "generated")),
        blocks.BlockRule("audio", "video", tuple(range(8))),  # no relay through audio
    )
    assert windows.planted_windows(8) == ()
    assert windows.rules_from_meta(None, 8, 4) == ()
    with pytest.raises(ValueError, match="unknown position group"):
        blocks.BlockRule("speech", "video", (0,))


def test_separated_windows_block_outside_every_span_and_old_single_spans_still_read():
    rules = windows.planted_windows(8, ((1, 1), (5, 6)), (0, 0))
    video = {rule.layers for rule in rules if rule.keys == "video" and rule.queries != "audio"}
    assert video == {(0, 2, 3, 4, 7)}
    separated = {"video_access_layers": [[1, 1], [5, 6]], "audio_access_layers": [0, 0]}
    assert windows.rules_from_meta(separated, 8, 4) == rules
    single = {"video_access_layers": [4, 5], "audio_access_layers": [0, 2]}
    assert windows.rules_from_meta(single, 8, 4) == windows.planted_windows(8, (4, 5), (0, 2))
    assert windows.parse_layer_span("5-6, 1:1", 8, "--x") == ((1, 1), (5, 6))
    assert windows.parse_layer_span("4:5", 8, "--x") == (4, 5)
    assert [windows.in_spans(layer, ((1, 1), (5, 6))) for layer in range(8)] == [
        False,
        True,
        False,
        False,
        False,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize("text", ["1:2,3:4", "1:4,3:5", "1:1,"])
def test_separated_spans_must_be_apart(text):
    with pytest.raises(PatchworkError, match="--video-access-layers"):
        windows.parse_layer_span(text, 8, "--video-access-layers")


def test_a_checkpoint_with_separated_windows_loads_them(tmp_path):
    from patchwork.errors import ModelError

    tokenizer = testbed_model.build_tokenizer()
    model = testbed_model.build_model(tokenizer, seed=3).eval()
    declared = {"video_access_layers": [[1, 1], [5, 6]], "audio_access_layers": [0, 0]}
    folder = testbed_model.save(
        model, tokenizer, tmp_path / "two", {"stage": 2, "windows": declared}
    )
    loaded, _ = testbed_model.load(folder)
    installed = loaded._patchwork_attention_blocks.rules
    assert installed == windows.rules_from_meta(declared, 8, 4)
    bad = {"video_access_layers": [[5, 6], [3, 2]]}
    folder = testbed_model.save(model, tokenizer, tmp_path / "bad", {"stage": 2, "windows": bad})
    with pytest.raises(ModelError, match="windows.video_access_layers"):
        testbed_model.load(folder)


@pytest.mark.parametrize("text", ["4", "a:b", "5:4", "0:8", "-1:2"])
def test_layer_spans_are_checked(text):
    with pytest.raises(PatchworkError, match="--video-access-layers"):
        windows.parse_layer_span(text, 8, "--video-access-layers")


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(0, 4), st.integers(0, 2**31 - 1), st.booleans())
def test_mask_with_blocks_removes_exactly_the_blocked_pairs(query_len, extra_keys, seed, additive):
    key_len = query_len + extra_keys
    generator = torch.Generator().manual_seed(seed)
    blocked = torch.rand(2, query_len, key_len, generator=generator) < 0.3
    built = blocks.mask_with_blocks(None, blocked, additive=additive, dtype=torch.float32)
    allowed = built == 0 if additive else built
    causal = torch.ones(query_len, key_len, dtype=torch.bool).tril(extra_keys)
    expected = causal & ~blocked
    for row in range(2):  # a query left without keys keeps itself
        for query in range(query_len):
            if not expected[row, query].any():
                expected[row, query, extra_keys + query] = True
    assert torch.equal(allowed[:, 0], expected)
    given_mask = torch.where(causal, 0.0, torch.finfo(torch.float32).min)[None, None]
    before = given_mask.clone()
    edited = blocks.mask_with_blocks(given_mask, blocked, additive=True, dtype=torch.float32)
    assert torch.equal(given_mask, before)  # never in place: eager shares the mask across layers
    assert torch.equal(edited[:, 0] == 0, expected)


PLANTED_HEADS = ((4, 1), (4, 3))


def test_planted_heads_block_video_in_every_other_head_under_eager_sdpa_and_grouped_sdpa():
    """The answer reads video only through the planted heads (per-head masks), other text
    positions never; eager puts exactly zero probability on the blocked pairs, and sdpa and
    patchwork's grouped sdpa (heads 1 and 3 sit on different key/value heads) agree with it."""
    from patchwork.models.attention import GROUPED_SDPA

    tokenizer = testbed_model.build_tokenizer()
    model = testbed_model.build_model(tokenizer, seed=3).eval()
    rules = windows.planted_heads(8, 4, PLANTED_HEADS)
    blocks.install(model, rules, blocks.modality_token_ids(model.config))
    inputs = _batch(tokenizer)
    groups = blocks.position_groups(inputs["input_ids"], blocks.modality_token_ids(model.config))
    attention_config = model.model.language_model.layers[0].self_attn.config
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits
        attention_config._attn_implementation = GROUPED_SDPA
        grouped_logits = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped_logits, sdpa_logits, atol=1e-5, rtol=1e-5)
    answer_to_video = groups["answer"][:, None, :, None] & groups["video"][:, None, None, :]
    text_to_video = groups["text"][:, None, :, None] & groups["video"][:, None, None, :]
    for layer, probabilities in enumerate(eager.attentions):
        per_head = (probabilities * answer_to_video).sum((0, 2, 3))
        for head in range(4):
            assert (float(per_head[head]) > 0) == ((layer, head) in PLANTED_HEADS), (layer, head)
        assert float((probabilities * text_to_video).sum()) == 0.0


def test_per_head_rules_give_one_mask_per_head_and_need_the_head_count():
    groups = blocks.position_groups(
        torch.tensor([[1, 2, 2, 3, 4]]), {"audio": 9, "video": 2, "image": 8}
    )
    rule = blocks.BlockRule("answer", "video", (0,), heads=(1,))
    blocked = blocks.blocked_pairs([rule], groups, 0, 5, num_heads=3)
    assert blocked is not None and blocked.shape == (1, 3, 5, 5)
    assert blocked[0, 1, 4].tolist() == [False, True, True, False, False]
    assert not blocked[0, [0, 2]].any()
    whole = blocks.blocked_pairs([blocks.BlockRule("answer", "video", (0,))], groups, 0, 5)
    assert whole is not None and torch.equal(whole[0], blocked[0, 1])
    with pytest.raises(ValueError, match="num_heads"):
        blocks.blocked_pairs([rule], groups, 0, 5)
    assert blocks.blocked_pairs([rule], groups, 1, 5, num_heads=3) is None


def test_planted_heads_as_rules_and_from_a_checkpoint_json():
    rules = windows.planted_heads(8, 4, PLANTED_HEADS)
    assert rules[0] == blocks.BlockRule("text", "video", tuple(range(8)))
    at_four = [rule for rule in rules if rule.layers == (4,)]
    assert {rule.heads for rule in at_four} == {(0, 2)}
    assert {rule.queries for rule in at_four} == {"answer", "generated"}
    assert all(rule.heads == (0, 1, 2, 3) for rule in rules[1:] if rule.layers != (4,))
    meta = {"video_access_heads": [[4, 1], [4, 3]], "audio_access_layers": None}
    assert windows.rules_from_meta(meta, 8, 4) == rules


@pytest.mark.parametrize("text", ["4", "4:x", "8:0", "4:4", "4-1"])
def test_head_lists_are_checked(text):
    with pytest.raises(PatchworkError, match="--video-access-heads"):
        windows.parse_heads(text, 8, 4, "--video-access-heads")


def test_head_lists_parse_sorted_without_repeats():
    assert windows.parse_heads("4:3, 4:1,4:3", 8, 4, "--video-access-heads") == PLANTED_HEADS
    assert windows.parse_heads(None, 8, 4, "--video-access-heads") is None
