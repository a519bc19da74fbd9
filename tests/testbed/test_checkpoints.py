"""The shipped checkpoints: found by name, loaded offline, and still a model organism — the
behaviour table on a small fixed held-out set (a change that breaks the organism fails here)."""

import pytest
import typer
from typer.testing import CliRunner

from patchwork.cli.testbed import register
from patchwork.errors import ModelError
from patchwork.testbed import checkpoint_path, evaluate, load
from patchwork.testbed import model as testbed_model

HEAR = ("what do you hear",)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ModelError, match="testbed-base"):
        checkpoint_path("tested")


@pytest.mark.parametrize("name", ["testbed", "testbed-base", "testbed-windowed", "testbed-heads"])
def test_checkpoints_are_small_safetensors_with_the_tokenizers_ids(name):
    directory = checkpoint_path(name)
    weights = list(directory.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) <= 20 * 2**20
    assert not list(directory.glob("*.bin"))
    model, tokenizer = load(directory)
    assert not model.training
    ids = testbed_model.special_ids(tokenizer)
    config = model.config
    assert (config.audio_token_index, config.video_token_index, config.image_token_index) == (
        ids["audio"],
        ids["video"],
        ids["image"],
    )
    assert (config.audio_start_token_id, config.audio_end_token_id) == (
        ids["audio_start"],
        ids["audio_end"],
    )
    assert (config.vision_start_token_id, config.vision_end_token_id) == (
        ids["vision_start"],
        ids["vision_end"],
    )


def test_stage2_model_shows_vision_dominance_and_hears(tmp_path):
    directory = checkpoint_path("testbed")
    model, _ = load(directory)
    table = evaluate.behaviour_table(
        model, directory, n=40, seed=555, media_dir=tmp_path, questions=HEAR
    )
    numbers = evaluate.summary(table)
    assert numbers["congruent_hear"] >= 0.95
    assert numbers["audio_only_hear"] >= 0.85
    assert numbers["conflict_picture_share"] >= 0.6


def test_stage1_model_never_learned_to_hear(tmp_path):
    directory = checkpoint_path("testbed-base")
    model, _ = load(directory)
    table = evaluate.behaviour_table(
        model, directory, n=20, seed=555, media_dir=tmp_path, questions=HEAR
    )
    numbers = evaluate.summary(table)
    assert numbers["congruent_hear"] >= 0.95
    assert numbers["audio_only_hear"] <= 0.3


def test_the_sound_reaches_the_answer_position_of_the_trained_model_only(tmp_path):
    """The probe table with the analysis's probe: the sound's category is decodable at the answer
    position of the stage-2 model's middle layers, not at the embeddings (every answer position
    holds the same token), and not at all from the stage-1 base, which never heard."""
    from patchwork.analysis.probes import probe_accuracy

    tables = {}
    for name in ("testbed", "testbed-base"):
        directory = checkpoint_path(name)
        model, _ = load(directory)
        tables[name] = evaluate.probe_table(
            model, directory, probe_accuracy, n=80, media_dir=tmp_path
        ).set_index("layer")
    trained, base = tables["testbed"], tables["testbed-base"]
    assert trained.loc[0, "answer_position"] <= 0.2  # chance is 0.1
    assert trained.loc[2:5, "answer_position"].min() >= 0.3  # 0.57-0.62 from 300 clips
    assert base["answer_position"].max() <= 0.25  # 0.08-0.13 from 300 clips
    assert base["audio_positions"].min() >= 0.8  # random encoder features separate sounds


def test_cli_eval_prints_the_behaviour_table():
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["testbed", "eval", "testbed", "--samples", "4"])
    assert result.exit_code == 0, result.output
    assert "audio_only" in result.output and "conflict" in result.output


def test_cli_train_refuses_bad_windows_before_training(tmp_path):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(
        app, ["testbed", "train", "--out", str(tmp_path), "--video-access-layers", "6:3"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --video-access-layers: need 0 <= FIRST <= LAST < 8 (inclusive layers), got '6:3'"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--video-access-heads", "4:4"], "--video-access-heads: 4:4 is outside the model"),
        (
            ["--video-access-heads", "4:1", "--video-access-layers", "4:5"],
            "--video-access-heads: give either it or --video-access-layers, not both",
        ),
    ],
)
def test_cli_train_refuses_bad_head_lists_before_training(tmp_path, options, line):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["testbed", "train", "--out", str(tmp_path), *options])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {line}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("option", [["--stage1-steps", "5"], ["--base-out", "elsewhere"]])
def test_cli_train_refuses_stage1_options_with_from_base(tmp_path, option):
    from patchwork.testbed import checkpoint_path

    app = typer.Typer()
    register(app)
    base = str(checkpoint_path("testbed-base"))
    result = CliRunner().invoke(
        app, ["testbed", "train", "--out", str(tmp_path), "--from-base", base, *option]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {option[0]}: --from-base skips stage 1; leave it out"
    ]
    assert not any(tmp_path.iterdir())


def test_windowed_checkpoint_installs_its_windows_and_hears(tmp_path):
    directory = checkpoint_path("testbed-windowed")
    model, _ = load(directory)
    blocks = model._patchwork_attention_blocks
    text_video = [rule for rule in blocks.rules if (rule.queries, rule.keys) == ("text", "video")]
    assert text_video and not {4, 5} & set(text_video[0].layers)
    table = evaluate.behaviour_table(
        model, directory, n=20, seed=555, media_dir=tmp_path, questions=HEAR
    )
    numbers = evaluate.summary(table)
    assert numbers["congruent_hear"] >= 0.95
    assert numbers["audio_only_hear"] >= 0.85


def test_cli_train_stops_at_targets_by_default_and_fixed_steps_is_the_shipped_recipe(
    tmp_path, monkeypatch
):
    import json
    import time

    from patchwork.testbed import train as recipe

    # a busy machine's clock: 1000 s per reading. The default stops by steps, never by time.
    clock = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(recipe, "time", type(time)("time"))
    recipe.time.time = lambda: float(next(clock))

    app = typer.Typer()
    register(app)
    tiny = ["--stage1-steps", "1", "--stage2-steps", "2", "--batch-size", "2"]
    fixed = CliRunner().invoke(
        app, ["testbed", "train", "--out", str(tmp_path / "fixed"), *tiny, "--fixed-steps"]
    )
    assert fixed.exit_code == 0, fixed.output
    config = json.loads((tmp_path / "fixed" / "patchwork_testbed.json").read_text())
    config = config["train_config"]
    assert not config["stop_at_targets"]
    assert (config["picture_supervision"], config["audio_first_steps"]) == (0.0, 0)
    stopping = CliRunner().invoke(
        app, ["testbed", "train", "--out", str(tmp_path / "s"), *tiny, "--check-every", "1"]
    )
    assert stopping.exit_code == 2
    lines = stopping.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage 2 did not meet the targets")
    assert "within 2 stage-2 steps" in lines[0]
    assert not (tmp_path / "s").exists()
