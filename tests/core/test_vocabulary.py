"""Words the model does not know are refused before any sweep: answers that would become the
unknown token or several tokens, questions with unknown words — with the file, line and sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from patchwork.data import media
from patchwork.errors import ModelError
from patchwork.loading.model import LoadedModel, load_model
from patchwork.study.specs import ModelSpec
from patchwork.testbed import world


@pytest.fixture(scope="module")
def testbed() -> LoadedModel:
    return load_model(ModelSpec(checkpoint="testbed"))


def test_unknown_words_are_refused_and_known_ones_pass(testbed: LoadedModel) -> None:
    tokenizer = testbed.tokenizer
    assert testbed.answer_id("moo") == tokenizer.token_to_id("moo")
    with pytest.raises(ModelError, match=r"\['meow'\] not in the model's vocabulary"):
        testbed.answer_id("meow")
    with pytest.raises(ModelError, match=r"\['smell'\] not in the model's vocabulary"):
        testbed.token_ids("what do you smell")
    assert testbed.token_ids("what do you hear") == [
        tokenizer.token_to_id(word) for word in ("what", "do", "you", "hear")
    ]


class SubwordTokenizer:
    """A transformers-like tokenizer with leading-space variants, as byte-level BPE has."""

    unk_token_id = 0
    vocabulary = {"moo": [5], " meow": [7], "meow": [8, 9], "quack": [10, 11], " quack": [12, 13]}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.vocabulary.get(text, [self.unk_token_id])}


def test_answers_take_the_single_token_variant_or_are_refused(testbed: LoadedModel) -> None:
    subword = LoadedModel(testbed.model, testbed.adapter, "subword", SubwordTokenizer())
    assert subword.answer_id("moo") == 5
    assert subword.answer_id("meow") == 7  # only " meow" is one token
    with pytest.raises(ModelError, match=r"answer 'quack' is 2 tokens"):
        subword.answer_id("quack")
    with pytest.raises(ModelError, match="not in the model's vocabulary"):
        subword.answer_id("woof")


def test_a_manifest_answer_the_model_does_not_know_stops_the_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    moo, bird = world.category("cow"), world.category("bird")
    media.save_audio(tmp_path / "moo.wav", world.synthesize_sound(moo.timbre, rng))
    media.save_frame(tmp_path / "blank.png", world.blank_picture())
    media.save_frame(tmp_path / "bird.png", world.draw_picture(bird, rng))
    rows = [
        {
            "id": "c0",
            "audio_answer": "moo",
            "visual_answer": "tweet",
            "runs": {
                "clean": {"audio": "moo.wav", "frames": ["blank.png"]},
                "conflict": {"audio": "moo.wav", "frames": ["bird.png"]},
            },
        }
    ]
    rows.append({**rows[0], "id": "c1", "audio_answer": "meow"})
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: vocabulary\nmodel: {checkpoint: testbed}\ndataset: {manifest: samples.jsonl}\n"
        "interventions: [{kind: activation_patching, layers: [0, 1]}]\n"
        "execution: {unit_size: 1}\n"
    )
    expected = (
        f"error: {tmp_path / 'samples.jsonl'}:2: sample c1: ['meow'] not in the model's vocabulary "
        "(the tokenizer makes them its unknown token)"
    )
    assert patchwork_lines("validate", str(study)) == [expected]
    assert patchwork_lines("run", str(study), "--store", str(tmp_path / "s")) == [expected]
    assert not (tmp_path / "s" / "vocabulary.zarr").exists()
    (tmp_path / "moo.wav").unlink()  # a missing media file is named by both, too
    for command in ("validate", "run"):
        (line,) = patchwork_lines(command, str(study))
        assert line.startswith(f"error: {tmp_path / 'samples.jsonl'}:1: sample c0: ")
        assert str(tmp_path / "moo.wav") in line


def patchwork_lines(*args: str) -> list[str]:
    """stderr lines of ``patchwork ARGS``, which must exit with code 2."""
    result = subprocess.run(
        [sys.executable, "-m", "patchwork", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_validate_refuses_it_too_without_loading_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from patchwork import load_study
    from patchwork.engine.runner import check_study

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate loaded weights")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", no_weights)
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: words\nmodel: {checkpoint: testbed}\ndataset: {generator: testbed, samples: 4}\n"
        "interventions: [{kind: activation_patching, layers: [0, 7]}]\n"
    )
    prepared = check_study(load_study(good))
    assert prepared.loaded.adapter.num_layers == 8 and len(prepared.samples) == 4
    assert not prepared.loaded.has_weights
    assert next(prepared.loaded.model.parameters()).device.type == "meta"
    smell = tmp_path / "smell.yaml"
    smell.write_text(good.read_text() + "question: what do you smell\n")
    with pytest.raises(ModelError, match=r"smell\.yaml:\d+: question: .*smell"):
        check_study(load_study(smell))
    deep = tmp_path / "deep.yaml"
    deep.write_text(good.read_text().replace("[0, 7]", "[0, 8]"))
    with pytest.raises(Exception, match=r"deep\.yaml:\d+: interventions\[0\]\.layers: layer 8"):
        check_study(load_study(deep))
