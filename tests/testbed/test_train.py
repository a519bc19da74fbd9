"""The training recipe runs end to end, writes a loadable checkpoint, and is deterministic."""

import json

import torch
from safetensors.torch import load_file

from patchwork.testbed import load
from patchwork.testbed import model as testbed_model
from patchwork.testbed.train import BatchMaker, TrainConfig, build_banks, train

TINY = TrainConfig(
    seed=5,
    stage1_steps=2,
    stage2_steps=2,
    batch_size=4,
    variants=2,
    audio_supervision=0.1,
    video_access_layers=(4, 5),
    audio_access_layers=(0, 2),
)


def test_two_runs_with_one_seed_give_the_same_weights(tmp_path):
    first = train(tmp_path / "a", TINY, base_out=tmp_path / "a-base", log=lambda line: None)
    second = train(tmp_path / "b", TINY, log=lambda line: None)
    weights_a = load_file(first / "model.safetensors")
    weights_b = load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    meta = json.loads((first / "patchwork_testbed.json").read_text())
    assert meta["stage"] == 2 and meta["windows"]["video_access_layers"] == [4, 5]
    model, _ = load(first)
    assert hasattr(model, "_patchwork_attention_blocks")
    base_meta = json.loads((tmp_path / "a-base" / "patchwork_testbed.json").read_text())
    assert base_meta["stage"] == 1


def test_stage1_batches_are_silent_and_stage2_batches_hold_every_kind():
    tokenizer = testbed_model.build_tokenizer()
    banks = build_banks(0, 2)
    config = TrainConfig(batch_size=64, audio_supervision=0.2)
    stage1_inputs, _ = BatchMaker(banks, tokenizer, config, stage=1)()
    assert torch.equal(
        stage1_inputs["input_features"], banks.silence.expand_as(stage1_inputs["input_features"])
    )
    stage2_inputs, answers = BatchMaker(banks, tokenizer, config, stage=2)()
    silent = (stage2_inputs["input_features"] == banks.silence).flatten(1).all(1)
    assert 0 < int(silent.sum()) < 64
    assert answers.shape == (64,)
