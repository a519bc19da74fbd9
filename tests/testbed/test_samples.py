"""make_samples: runs share one token layout, differ only in the media they name; held-out and
deterministic per sample."""

import pytest
import torch

from patchwork.errors import DataError, ModelError
from patchwork.testbed import checkpoint_path, make_samples
from patchwork.testbed.samples import draw_pair

RUNS = {
    "clean": {"audio": "own", "picture": "blank"},
    "conflict": {"audio": "own", "picture": "other_category"},
    "vision": {"audio": "silence", "picture": "own"},
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(
        checkpoint_path("testbed"), 4, 7, RUNS, "what do you hear", tmp_path_factory.mktemp("media")
    )


def test_runs_share_input_ids_and_differ_only_in_picture(samples):
    for sample in samples:
        clean, conflict, vision = (sample.runs[name] for name in RUNS)
        assert set(clean) == set(conflict)
        for key in clean:
            if key == "pixel_values_videos":
                assert not torch.equal(clean[key], conflict[key])
            else:
                assert torch.equal(clean[key], conflict[key]), key
        assert torch.equal(clean["input_ids"], vision["input_ids"])
        assert not torch.equal(clean["input_features"], vision["input_features"])
        assert clean["input_ids"].shape[0] == 1
        assert clean["attention_mask"].shape == clean["input_ids"].shape


def test_answers_are_the_sound_and_the_pictures_sound(samples):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint_path("testbed") / "tokenizer.json"))
    for sample in samples:
        assert sample.meta["audio_category"] != sample.meta["picture_category"]
        assert tokenizer.id_to_token(sample.audio_answer_id) == sample.audio_answer
        assert tokenizer.id_to_token(sample.visual_answer_id) == sample.visual_answer
        assert sample.audio_answer != sample.visual_answer


def test_sample_i_does_not_depend_on_n(samples, tmp_path):
    again = make_samples(
        checkpoint_path("testbed"), 2, 7, {"conflict": RUNS["conflict"]}, media_dir=tmp_path
    )
    for first, second in zip(samples, again, strict=False):
        for key, value in first.runs["conflict"].items():
            assert torch.equal(value, second.runs["conflict"][key])
    pairs = {tuple(c.name for c in draw_pair(7, i)) for i in range(2000)}
    assert len(pairs) == 90  # every ordered pair of 10 categories, A != B


def test_wrong_run_specs_and_questions_are_refused(tmp_path):
    with pytest.raises(DataError, match="picture must be one of"):
        make_samples(
            checkpoint_path("testbed"), 1, 0, {"x": {"picture": "red"}}, media_dir=tmp_path
        )
    with pytest.raises(ModelError, match="does not know"):
        make_samples(checkpoint_path("testbed"), 1, 0, RUNS, "what do you smell", tmp_path)


def test_a_sound_swap_run_plays_the_picture_categorys_sound(tmp_path):
    """``audio: other_category`` (the bench's audio-side counterfactual): B's sound, the same
    blank picture, and a model that hears answers B's sound there."""
    from patchwork.testbed import load

    runs = {
        "clean": {"audio": "own", "picture": "blank"},
        "swap": {"audio": "other_category", "picture": "blank"},
    }
    directory = checkpoint_path("testbed-windowed")
    swapped = make_samples(directory, 4, 7, runs, "what do you hear", tmp_path)
    model, _ = load(directory)
    for sample in swapped:
        clean, swap = sample.runs["clean"], sample.runs["swap"]
        assert torch.equal(clean["pixel_values_videos"], swap["pixel_values_videos"])
        assert not torch.equal(clean["input_features"], swap["input_features"])
        with torch.no_grad():
            heard = [int(model(**run).logits[0, -1].argmax()) for run in (clean, swap)]
        assert heard == [sample.audio_answer_id, sample.visual_answer_id]
