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
    assert rules == tuple(
        blocks.BlockRule(group, "video", outside) for group in ("text", "answer", "generated")
    )
    assert windows.planted_windows(8) == ()
    assert windows.rules_from_meta(None, 8) == ()
    with pytest.raises(ValueError, match="unknown position group"):
        blocks.BlockRule("speech", "video", (0,))


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
