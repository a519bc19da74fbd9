"""``patchwork inspect``: the tensors a run feeds the model, the frames it sees, the log-mel it
hears, and its token layout — equal to what a run computes, without the model's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from patchwork import DataError, load_study, run_study
from patchwork.analysis.input_figures import write_inspection
from patchwork.cli import _register_subcommands, app
from patchwork.data.media import video_patches
from patchwork.data.unpatch import frames_from_patches
from patchwork.engine.inspect import inspect_inputs
from patchwork.loading.manifest import load_manifest
from patchwork.loading.model import load_model
from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter

from ..families.builders import frames as clip_frames
from ..families.builders import tone, write_clip
from .helpers import study_text
from .test_manifest import make_media, manifest_rows

_register_subcommands()
cli = CliRunner()
FPS = 8  # the clips' frame rate


def video_rows(media: Path) -> list[dict]:
    """A row whose runs are clips with interleaved soundtracks: the dog's sound under its own
    picture (clean) and under the cat's (conflict)."""
    media.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("dog", "cat")):
        write_clip(media / f"{name}.mkv", clip_frames(seed, 16), tone(220.0 * (seed + 1), 2.0))
    interleaved = {"audio_in_video": True}
    return [
        {
            "id": "dog-under-cat",
            "audio_answer": "woof",
            "visual_answer": "meow",
            "runs": {
                "clean": {"video": "media/dog.mkv", **interleaved},
                "conflict": {"video": "media/cat.mkv", "audio": "media/dog.mkv", **interleaved},
            },
        }
    ]


def write_study(folder: Path, rows: list[dict], noise_floor: str = "mismatched") -> Path:
    make_media(folder / "media")
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    study = folder / "study.yaml"
    text = study_text(layers=2, noise_floor=noise_floor)
    study.write_text(text.replace("generator: random", "manifest: samples.jsonl"))
    return study


def equal_tensors(written: dict[str, torch.Tensor], expected: dict[str, object]) -> bool:
    tensors = {k: v for k, v in expected.items() if isinstance(v, torch.Tensor)}
    return written.keys() == tensors.keys() and all(
        written[k].dtype == tensors[k].dtype and torch.equal(written[k], tensors[k])
        for k in tensors
    )


def test_the_written_tensors_are_the_forward_kwargs_of_a_run(tmp_path: Path) -> None:
    """Against the loader and adapter called in the test, with weights, for every run of every
    row: stills with a wav, and clips with interleaved soundtracks."""
    study_path = write_study(tmp_path, manifest_rows() + video_rows(tmp_path / "media"))
    study = load_study(study_path)
    loaded = load_model(study.model)  # weights and all, as a run loads it
    for sample in load_manifest(study, loaded):
        for run in sample.runs:
            expected = loaded.adapter.forward_kwargs(sample.runs[run])
            inputs = inspect_inputs(study_path, sample.sample_id, run)
            out = tmp_path / "inspect" / sample.sample_id / run
            written = write_inspection(inputs, out)
            assert equal_tensors(load_file(str(written["inputs"])), expected)
            with safe_open(str(written["inputs"]), "pt") as opened:
                metadata = opened.metadata()
            flags = {k: v for k, v in expected.items() if not isinstance(v, torch.Tensor)}
            assert json.loads(metadata["forward_flags"]) == flags
            assert (metadata["sample"], metadata["run"]) == (sample.sample_id, run)
    assert flags == {"use_audio_in_video": True}  # the clips' row interleaves


def test_the_written_tensors_are_what_a_run_passes_to_the_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on the forward keyword arguments of a real run of a one-row study: the clean and the
    conflict run each reach the model exactly as inspect writes them."""
    study_path = write_study(tmp_path, video_rows(tmp_path / "media"), noise_floor="none")
    seen: list[dict[str, object]] = []
    forward_kwargs = Qwen25OmniAdapter.forward_kwargs

    def spying(self: Qwen25OmniAdapter, inputs: dict) -> dict:
        kwargs = forward_kwargs(self, inputs)
        seen.append(kwargs)
        return kwargs

    monkeypatch.setattr(Qwen25OmniAdapter, "forward_kwargs", spying)
    run_study(load_study(study_path), tmp_path / "store")
    monkeypatch.undo()
    for run in ("clean", "conflict"):
        written = write_inspection(inspect_inputs(study_path, "dog-under-cat", run), tmp_path / run)
        tensors = load_file(str(written["inputs"]))
        assert any(equal_tensors(tensors, kwargs) for kwargs in seen), run


def test_frames_are_those_the_decoder_took_labelled_with_their_source_times(
    tmp_path: Path,
) -> None:
    study_path = write_study(tmp_path, manifest_rows() + video_rows(tmp_path / "media"))
    inputs = inspect_inputs(study_path, "dog-under-cat", "conflict")
    (frames,) = inputs.videos
    (times,) = inputs.frame_times
    assert times is not None and len(times) == len(frames) >= 4
    assert times[0] == 0.0 and list(times) == sorted(times) and times[-1] < 2.0
    pictures = clip_frames(1, 16)  # the cat's: the conflict run's picture
    for frame, time in zip(frames, times, strict=True):
        source = pictures[round(time * FPS)]
        assert np.abs(frame.astype(int) - source.astype(int)).max() <= 1
    assert inputs.frame_labels(0) == [f"{t:.2f} s" for t in times]
    (mel,) = inputs.mels
    assert inputs.audio_seconds == (pytest.approx(2.0, abs=0.01),)
    assert mel.shape[1] == int(inputs.forward["feature_attention_mask"].sum())

    # a still picture: one frame, repeated to fill the temporal patch, and said to be
    still = inspect_inputs(study_path, "dog-vs-cat", "conflict")
    picture = np.asarray(Image.open(tmp_path / "media" / "cat.png").convert("RGB"))
    assert len(still.videos[0]) == 2
    assert all(np.abs(f.astype(int) - picture.astype(int)).max() <= 1 for f in still.videos[0])
    assert still.frame_labels(0) == ["0.00 s", "repeat"]


def test_the_layout_names_every_position(tmp_path: Path) -> None:
    study_path = write_study(tmp_path, manifest_rows() + video_rows(tmp_path / "media"))
    inputs = inspect_inputs(study_path, "dog-under-cat")  # the first run: clean
    assert inputs.run == "clean" and inputs.same_layout == ("conflict",)
    ids = inputs.forward["input_ids"].reshape(-1)
    config = load_model(load_study(study_path).model, weights=False).adapter.config
    for group, token in (("audio", config.audio_token_index), ("video", config.video_token_index)):
        positions = [p for first, last in inputs.positions[group] for p in range(first, last + 1)]
        assert positions == torch.nonzero(ids == token).reshape(-1).tolist()
    # interleaved in 2 s chunks: a 2 s clip's audio and video each form one span
    assert inputs.positions["answer"] == ((len(ids) - 1, len(ids) - 1),)
    text = "\n".join(inputs.describe())
    audio_count = int((ids == config.audio_token_index).sum())
    assert f"audio {audio_count} (" in text and "same token layout as conflict" in text
    assert f"→ {inputs.video_tokens[0]} video tokens" in text and "of the clip" in text
    assert "audio 0: 2.00 s (200 mel frames of 10 ms, 32 mel bins)" in text
    assert "use_audio_in_video=True" in text


def test_the_testbed_generator(tmp_path: Path) -> None:
    """The default model's own samples, against its sample builder called here."""
    from patchwork import testbed

    text = (Path(__file__).parents[2] / "studies" / "quickstart.yaml").read_text()
    study = tmp_path / "quickstart.yaml"
    study.write_text(text)
    inputs = inspect_inputs(study, "s00001", "conflict")
    loaded = load_study(study)
    runs = {name: run.model_dump() for name, run in loaded.runs.items()}
    samples = testbed.make_samples(
        testbed.checkpoint_path("testbed"), 2, loaded.dataset.seed, runs, loaded.question, tmp_path
    )
    adapter = load_model(loaded.model, weights=False).adapter
    assert equal_tensors(inputs.tensors, adapter.forward_kwargs(samples[1].runs["conflict"]))
    picture = np.asarray(Image.open(tmp_path / "s00001" / "other.png").convert("RGB"))
    assert np.abs(inputs.videos[0][0].astype(int) - picture.astype(int)).max() <= 1
    assert inputs.frame_labels(0) == ["0.00 s (grid)", "0.50 s (grid)"]  # no source times
    written = write_inspection(inputs, tmp_path / "out")
    assert set(written) == {"inputs", "frames", "audio"}
    for name in ("frames", "audio"):
        with Image.open(written[name]) as image:
            assert image.size[0] > 300 and image.size[1] > 150


def test_the_command_writes_three_files_and_prints_the_layout(tmp_path: Path) -> None:
    study = write_study(tmp_path, manifest_rows())
    out = tmp_path / "seen"
    (out).mkdir()
    result = cli.invoke(
        app,
        ["inspect", str(study), "--sample", "bird-vs-fish", "--run", "conflict", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "sample bird-vs-fish, run conflict" in printed
    assert "positions:" in printed and "audio 0: 0.40 s" in printed
    assert "pixel_values_videos" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "audio.png",
        "frames.png",
        "inputs.safetensors",
    ]

    for arguments, message in (
        (["--sample", "whale"], "no sample 'whale' among the study's 2 samples"),
        (["--sample", "dog-vs-cat", "--run", "muted"], "has no run 'muted'; its runs: clean"),
    ):
        result = cli.invoke(app, ["inspect", str(study), *arguments, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
    with pytest.raises(DataError, match="no sample 'whale'"):
        inspect_inputs(study, "whale")


@pytest.mark.parametrize("family", ["qwen3_omni", "gemma3n"])
def test_other_families(family: str, tmp_path: Path) -> None:
    """Qwen3-Omni (pixels normalized with 0.5) and Gemma 3n (features (frames, bins), image
    features instead of pictures: no frames.png) against their loader and adapter."""
    from ..families import builders, checkpoints

    media = builders.media_folder(tmp_path / "media")
    build = {
        "qwen3_omni": checkpoints.qwen3_omni_checkpoint,
        "gemma3n": checkpoints.gemma3n_checkpoint,
    }
    study_path = builders.family_study(tmp_path, family, build[family](tmp_path / "ckpt"), media)
    study = load_study(study_path)
    loaded = load_model(study.model)
    sample = load_manifest(study, loaded)[0]
    inputs = inspect_inputs(study_path, sample.sample_id, "conflict")
    assert equal_tensors(inputs.tensors, loaded.adapter.forward_kwargs(sample.runs["conflict"]))
    (mel,) = inputs.mels
    forward = inputs.forward
    mask = forward.get("feature_attention_mask", forward.get("input_features_mask"))
    assert mel.shape[1] == int(mask.sum())  # time last, the frames the mask keeps
    assert set(mel.shape) == set(forward["input_features"].shape[1:])
    assert inputs.audio_seconds[0] == pytest.approx(2.0, abs=0.05)
    written = write_inspection(inputs, tmp_path / "out")
    if family == "gemma3n":
        assert not inputs.videos and set(written) == {"inputs", "audio"}
        return
    (frames,) = inputs.videos
    (times,) = inputs.frame_times
    assert times is not None
    pictures = builders.frames(1, 16)  # the cat clip's, 8 frames per second
    for frame, time in zip(frames, times, strict=True):
        assert np.abs(frame.astype(int) - pictures[round(time * FPS)].astype(int)).max() <= 1


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([1, 2, 4]),  # patch
    st.sampled_from([1, 2]),  # merge
    st.sampled_from([1, 2]),  # temporal patch
    st.integers(1, 3),  # blocks down
    st.integers(1, 3),  # blocks across
    st.integers(1, 5),  # frames
    st.integers(0, 2**16),
)
def test_unpatching_inverts_patching(
    patch: int, merge: int, temporal: int, down: int, across: int, count: int, seed: int
) -> None:
    unit = patch * merge
    frames = np.random.default_rng(seed).integers(
        0, 256, (count, down * unit, across * unit, 3), dtype=np.uint8
    )
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    patches = video_patches(
        frames, patch_size=patch, temporal_patch_size=temporal, merge_size=merge, mean=mean, std=std
    )
    (back,) = frames_from_patches(
        patches["pixel_values_videos"].numpy(),
        patches["video_grid_thw"].tolist(),
        patch,
        temporal,
        merge,
        mean,
        std,
    )
    assert np.array_equal(back[:count], frames)
    assert (back[count:] == frames[-1]).all()  # the temporal pad repeats the last frame
