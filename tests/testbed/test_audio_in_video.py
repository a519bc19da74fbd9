"""The testbed on interleaved clips (``audio_in_video``): the layout is the real family's, its rope
positions are the thinker's own for that case, groups follow it, training and studies use it."""

from dataclasses import replace

import pytest
import torch

from patchwork.errors import ModelError
from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter
from patchwork.testbed import make_samples
from patchwork.testbed import model as testbed_model
from patchwork.testbed.evaluate import forward_inputs, predictions
from patchwork.testbed.train import BatchMaker, TrainConfig, build_banks, train

TINY = TrainConfig(
    seed=5,
    stage1_steps=2,
    stage2_steps=2,
    batch_size=4,
    variants=2,
    video_access_layers=(2, 3),
    audio_access_layers=(0, 1),
    audio_in_video=True,
)
RUNS = {
    "clean": {"audio": "own", "picture": "blank"},
    "conflict": {"audio": "own", "picture": "other_category"},
}
QUESTION = "what do you hear"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint trained a few steps on interleaved clips (it declares the layout)."""
    return train(tmp_path_factory.mktemp("aiv") / "ckpt", TINY, log=lambda line: None)


@pytest.fixture(scope="module")
def samples(checkpoint, tmp_path_factory):
    return make_samples(checkpoint, 3, 7, RUNS, QUESTION, tmp_path_factory.mktemp("media"))


def _used_positions(model, inputs) -> torch.Tensor:
    """The position ids the decoder really receives in a forward of ``inputs``."""
    seen = {}

    def grab(module, args, kwargs):
        seen["positions"] = kwargs["position_ids"]

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["positions"]


def _rope_index(model, inputs, audio_in_video: bool) -> torch.Tensor:
    positions, _ = model.get_rope_index(
        inputs["input_ids"],
        None,
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        audio_in_video,
        inputs["feature_attention_mask"].sum(-1),
        inputs["video_second_per_grid"],
    )
    return positions


def test_the_layout_is_the_real_familys_and_interleaves_video_and_audio():
    tokenizer = testbed_model.build_tokenizer()
    model = testbed_model.build_model(tokenizer, seed=3)
    specials = testbed_model.special_ids(tokenizer)
    ids = testbed_model.prompt_ids(tokenizer, QUESTION, audio_in_video=True)
    words = [testbed_model.word_id(tokenizer, w) for w in QUESTION.split()]
    grid = [testbed_model.INTERLEAVED_FRAMES // testbed_model.TEMPORAL_PATCH, 8, 8]
    adapters = Qwen25OmniAdapter(model).interleaved_prompt_ids(
        words, testbed_model.AUDIO_TOKENS, grid, testbed_model.SECONDS_PER_GRID
    )
    assert ids == adapters[0].tolist()
    kinds = {specials["video"]: "V", specials["audio"]: "A"}
    runs: list[list] = []
    for token in ids:
        kind = kinds.get(token, "-")
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    assert [tuple(run) for run in runs if run[0] != "-"] == [("V", 16), ("A", 10), ("V", 16)]
    assert ids[:2] == [specials["vision_start"], specials["audio_start"]]
    assert ids[-6:-4] == [specials["audio_end"], specials["vision_end"]]


def test_training_and_evaluation_use_the_thinkers_own_rope_index_for_the_layout():
    """The positions a training batch and an evaluation forward give the decoder are
    ``get_rope_index(use_audio_in_video=True)``'s for those ids (not the separate layout's), and
    time runs forward through the clip: video chunk 1 is 2 s (50 positions) after chunk 0."""
    tokenizer = testbed_model.build_tokenizer()
    model = testbed_model.build_model(tokenizer, seed=3).eval()
    banks = build_banks(0, 2, audio_in_video=True)
    config = replace(TINY, batch_size=3)
    inputs, _ = BatchMaker(banks, tokenizer, config, stage=2)()
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]] * 3
    Qwen25OmniAdapter(model).check_inputs(inputs, "batch")
    expected = _rope_index(model, inputs, audio_in_video=True)
    assert not torch.equal(expected, _rope_index(model, inputs, audio_in_video=False))
    assert torch.equal(_used_positions(model, inputs), expected)

    ids = inputs["input_ids"][0]
    temporal = expected[0, 0]
    audio, video = (
        ids == tokenizer.token_to_id("<|AUDIO|>"),
        ids == tokenizer.token_to_id("<|VIDEO|>"),
    )
    clip = temporal[audio | video]
    assert (clip[1:] >= clip[:-1]).all()
    assert torch.equal(temporal[audio], temporal[audio][0] + torch.arange(10))
    assert temporal[video].unique().tolist() == [1, 51]


def test_position_groups_name_the_interleaved_positions(samples, checkpoint):
    model, _ = testbed_model.load(checkpoint)
    adapter = Qwen25OmniAdapter(model)
    tokenizer = testbed_model.load_tokenizer(checkpoint)
    specials = testbed_model.special_ids(tokenizer)
    for sample in samples:
        run = sample.runs["conflict"]
        adapter.check_inputs(run, sample.sample_id)
        groups = adapter.position_groups(run["input_ids"])  # of the clip's one row
        ids = run["input_ids"][0]
        assert torch.equal(groups["audio"], ids == specials["audio"])
        assert torch.equal(groups["video"], ids == specials["video"])
        assert int(groups["audio"].sum()) == 10 and int(groups["video"].sum()) == 32
        assert groups["answer"].nonzero().flatten().tolist() == [len(ids) - 1]
        rest = ~(groups["audio"] | groups["video"] | groups["answer"])  # markers and words
        assert torch.equal(groups["text"], rest)
        assert adapter.forward_kwargs(run)["use_audio_in_video"] is True


def test_a_few_steps_train_and_declare_the_layout(checkpoint, samples):
    meta = testbed_model.read_meta(checkpoint)
    assert meta["audio_in_video"] is True and meta["train_config"]["audio_in_video"] is True
    assert testbed_model.audio_in_video(meta)
    model, _ = testbed_model.load(checkpoint)
    runs = [s.runs["conflict"] for s in samples]
    assert predictions(model, runs).shape == (3,)
    inputs = forward_inputs(model, runs)  # evaluation's forward: the rope index of the layout
    assert torch.equal(_used_positions(model, inputs), _rope_index(model, inputs, True))


def test_the_generator_follows_the_checkpoints_layout(checkpoint, tmp_path):
    from patchwork.loading.generators import generate_samples
    from patchwork.study.loader import parse_study

    study = parse_study(
        f"name: aiv\nmodel: {{checkpoint: {checkpoint}}}\n"
        "dataset: {generator: testbed, samples: 2}\n"
        "runs: {clean: {audio: own, picture: blank}, "
        "conflict: {audio: own, picture: other_category}}\n"
        "interventions: [{kind: activation_patching, layers: [0, 7]}]\n"
    )
    sample = generate_samples(study, None, tmp_path).load(0, 1)[0]  # type: ignore[arg-type]
    run = sample.runs["clean"]
    tokenizer = testbed_model.load_tokenizer(checkpoint)
    assert run["input_ids"][0].tolist() == testbed_model.prompt_ids(tokenizer, QUESTION, True)
    assert run["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert run["video_second_per_grid"].tolist() == [testbed_model.SECONDS_PER_GRID]


def test_a_declared_layout_that_is_not_a_flag_is_refused(checkpoint, tmp_path):
    import json
    import shutil

    copy = shutil.copytree(checkpoint, tmp_path / "copy")
    meta_file = copy / testbed_model.META_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "audio_in_video": "yes"}))
    with pytest.raises(ModelError, match=r"patchwork_testbed\.json: audio_in_video: expected"):
        make_samples(copy, 1, 0, RUNS, QUESTION, tmp_path / "media")


def test_planted_windows_keep_audio_from_relaying_the_picture():
    """Interleaved, audio tokens follow video ones: a planted video window also keeps audio from
    reading video (else text would get the picture through audio, outside its window)."""
    from patchwork.models import blocks
    from patchwork.testbed import windows

    tokenizer = testbed_model.build_tokenizer()
    model = testbed_model.build_model(tokenizer, seed=3).eval()
    rules = windows.planted_windows(8, TINY.video_access_layers, TINY.audio_access_layers)
    blocks.install(model, rules, blocks.modality_token_ids(model.config))
    inputs, _ = BatchMaker(build_banks(0, 2, audio_in_video=True), tokenizer, TINY, stage=2)()
    groups = blocks.position_groups(inputs["input_ids"], blocks.modality_token_ids(model.config))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    audio_to_video = groups["audio"][:, None, :, None] & groups["video"][:, None, None, :]
    text_to_video = groups["text"][:, None, :, None] & groups["video"][:, None, None, :]
    for layer, probabilities in enumerate(attentions):
        assert float((probabilities * audio_to_video).sum()) == 0.0, layer
        assert (float((probabilities * text_to_video).sum()) > 0) == (layer in (2, 3)), layer
