"""Real media files into inputs, and the one-line errors users get when something is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import DataError, ModelError, PatchworkError, StudyError, load_study, run_study
from patchwork.data import containers
from patchwork.data.conventions import VideoSampling
from patchwork.loading.model import load_model
from patchwork.study.specs import ModelSpec

from . import builders


def test_frames_are_sampled_at_the_requested_rate(family_root: Path) -> None:
    clip = family_root / "media" / "dog.mkv"
    # 16 frames at 8 fps, 2 per second: the model card spreads 4 from first to last,
    # transformers' do_sample_frames steps by total / 4 (lossless FFV1: exact frames)
    sampled = containers.sample_frames(clip, fps=2.0)
    assert np.array_equal(sampled.frames, builders.frames(0, 16)[[0, 5, 10, 15]])
    assert sampled.fps == 2.0 and sampled.times == (0.0, 0.625, 1.25, 1.875)
    stepped = containers.sample_frames(clip, VideoSampling("transformers"), fps=2.0)
    assert np.array_equal(stepped.frames, builders.frames(0, 16)[[0, 4, 8, 12]])
    assert len(containers.sample_frames(clip, fps=8.0, max_frames=5).frames) == 4  # even


def test_soundtracks_are_decoded_and_resampled(family_root: Path) -> None:
    media = family_root / "media"
    soundtrack = containers.decode_audio(media / "dog.mkv", 16_000)
    assert soundtrack.shape == (32_000,)
    assert np.allclose(soundtrack, builders.tone(220.0, 2.0), atol=1e-3)
    resampled = containers.load_sound(media / "bird.ogg", 16_000)  # Vorbis at 22.05 kHz
    assert abs(len(resampled) - 32_000) < 400
    spectrum = np.abs(np.fft.rfft(resampled[4000:20000]))  # 1 s: bins of 1 Hz
    assert abs(int(np.argmax(spectrum)) - 440) < 2


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def failing_study(tmp_path: Path, family_root: Path, checkpoint, rows: list[dict]) -> Path:
    path = builders.family_study(
        tmp_path, "qwen3_omni", checkpoint("qwen3_omni"), family_root / "media"
    )
    builders.write_manifest(tmp_path / "samples.jsonl", rows)
    return path


def run_and_fail(path: Path, tmp_path: Path, error: type[PatchworkError]) -> str:
    with pytest.raises(error) as caught:
        run_study(load_study(path), store_root=tmp_path / "store")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    return one_line(caught.value)


def test_a_missing_video_names_line_sample_and_file(
    tmp_path: Path, family_root: Path, checkpoint
) -> None:
    rows = builders.family_rows("qwen3_omni", family_root / "media")
    rows[1]["runs"]["conflict"]["video"] = str(tmp_path / "gone.mp4")
    message = run_and_fail(
        failing_study(tmp_path, family_root, checkpoint, rows), tmp_path, DataError
    )
    assert "samples.jsonl:2" in message and "sample cat" in message
    assert f"video file not found: {tmp_path / 'gone.mp4'}" in message


def test_an_undecodable_clip_names_sample_and_file(
    tmp_path: Path, family_root: Path, checkpoint
) -> None:
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(b"\x1aE\xdf\xa3 definitely not a matroska stream" * 20)
    rows = builders.family_rows("qwen3_omni", family_root / "media")
    rows[0]["runs"]["clean"]["video"] = str(broken)
    message = run_and_fail(
        failing_study(tmp_path, family_root, checkpoint, rows), tmp_path, DataError
    )
    assert "samples.jsonl:1" in message and "sample dog" in message
    assert f"cannot decode video {broken}" in message


def test_a_row_missing_a_field_names_line_and_sample(
    tmp_path: Path, family_root: Path, checkpoint
) -> None:
    rows = builders.family_rows("qwen3_omni", family_root / "media")
    del rows[1]["visual_answer"]
    message = run_and_fail(
        failing_study(tmp_path, family_root, checkpoint, rows), tmp_path, DataError
    )
    assert "samples.jsonl:2: row lacks field(s) ['visual_answer'] (sample cat)" in message


def test_a_placeholder_mismatch_names_sample_and_file(
    tmp_path: Path, family_root: Path, checkpoint
) -> None:
    """Gemma 3n image features with 3 soft tokens where the model fills 4 placeholders."""
    features = tmp_path / "short_features.npy"
    np.save(features, np.zeros((1, 3, builders.GEMMA_VISION_HIDDEN), dtype=np.float32))
    path = builders.family_study(tmp_path, "gemma3n", checkpoint("gemma3n"), family_root / "media")
    rows = builders.family_rows("gemma3n", family_root / "media")
    rows[1]["runs"]["clean"]["image_features"] = str(features)
    builders.write_manifest(tmp_path / "samples.jsonl", rows)
    message = run_and_fail(path, tmp_path, ModelError)
    assert "samples.jsonl:2" in message and "sample cat" in message
    assert str(features) in message and "image_features must be (images, 4, 16)" in message


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni", "gemma3n"])
def test_one_audio_placeholder_too_few_is_refused(
    family: str, family_root: Path, checkpoint
) -> None:
    loaded = load_model(ModelSpec(family=family, checkpoint=str(checkpoint(family))))
    row = builders.family_rows(family, family_root / "media")[0]
    spec = row["runs"]["conflict"]
    inputs = loaded.adapter.build_inputs(
        loaded.token_ids("what do you hear"),
        containers.run_media(spec, Path("/"), loaded.adapter.sampling_rate, ""),
    )
    loaded.adapter.check_inputs(inputs, "sample dog")
    ids = inputs["input_ids"]
    audio = loaded.adapter.position_groups(ids)["audio"]
    first = int(audio.nonzero()[0])
    fewer = torch.cat([ids[:, :first], ids[:, first + 1 :]], dim=1)
    shorter = {**inputs, "input_ids": fewer, "attention_mask": torch.ones_like(fewer)}
    with pytest.raises(ModelError, match=r"sample dog: \d+ audio placeholder tokens but") as caught:
        loaded.adapter.check_inputs(shorter, "sample dog")
    one_line(caught.value)


def test_a_wrong_generic_path_is_named(tmp_path: Path, checkpoint) -> None:
    text = builders.GENERIC_BLOCK.replace("model.language_model.layers", "model.decoder.layers")
    study = builders.study(tmp_path, "generic", checkpoint("generic"), "[audio]", text)
    with pytest.raises(ModelError) as caught:
        load_model(load_study(study).model, "generic.yaml:3: model")
    assert "generic.layers: no module 'model.decoder.layers'" in one_line(caught.value)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("family: generic\n  checkpoint: ck", "give a 'generic' block exactly when"),
        ("family: gemma3n\n  random_init: {layers: 2}", "needs a checkpoint directory"),
    ],
)
def test_model_blocks_that_cannot_work_are_refused(
    tmp_path: Path, model: str, message: str
) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text(
        f"name: bad\nmodel:\n  {model}\ndataset: {{generator: random}}\n"
        "interventions: [{kind: activation_patching}]\n"
    )
    with pytest.raises(StudyError, match=message):
        load_study(study)


def test_text_before_the_media_marker_precedes_the_placeholders(
    tmp_path: Path, family_root: Path, checkpoint
) -> None:
    """A chat-template user turn goes before the media: ``question: "<turn> {media} …"``."""
    from patchwork.loading.manifest import load_manifest

    rows = builders.family_rows("qwen2_5_omni", family_root / "media")[:1]
    rows[0]["question"] = "see the {media} what do you hear"
    path = failing_study(tmp_path, family_root, checkpoint, rows)
    study = load_study(path)
    loaded = load_model(study.model)
    (sample,) = load_manifest(study, loaded)
    ids = sample.runs["conflict"]["input_ids"][0].tolist()
    config = loaded.adapter.config
    see_the = loaded.token_ids("see the")
    assert ids[:4] == [*see_the, config.vision_start_token_id, config.audio_start_token_id]
    assert ids[-4:] == loaded.token_ids("what do you hear")
    assert sample.runs["conflict"]["attention_mask"].shape == (1, len(ids))
    with torch.no_grad():
        logits = loaded.model(**loaded.adapter.forward_kwargs(sample.runs["conflict"])).logits
    assert torch.isfinite(logits).all()


def test_clips_are_cut_to_a_common_length_and_size(family_root: Path) -> None:
    """Counterfactual pairs from clips of different lengths get one token layout."""
    run = containers.run_media(
        {"video": "dog.mkv", "audio": "bird.ogg", "seconds": 1.5, "frame_size": [16, 24]},
        family_root / "media",
        16_000,
        "",
    )
    assert run.waveform is not None and run.waveform.shape == (24_000,)
    # frames 0-12 (the model card's video_end): 3.25 at 2 per second, at least 4, even
    assert run.frames is not None and run.frames.shape == (4, 16, 24, 3)
    padded = containers.run_media(
        {"audio": "dog.mkv", "seconds": 3}, family_root / "media", 16_000, ""
    )
    assert padded.waveform is not None and padded.waveform.shape == (48_000,)
    assert not padded.waveform[32_000:].any()
    with pytest.raises(DataError, match="frame_size must be"):
        containers.run_media(
            {"video": "dog.mkv", "frame_size": "big"}, family_root / "media", 16_000, ""
        )


def test_a_csv_manifest_gives_the_same_runs_as_jsonl(
    tmp_path: Path, family_root: Path, checkpoint
) -> None:
    from patchwork.loading.manifest import load_manifest

    media = family_root / "media"
    path = builders.family_study(tmp_path, "qwen3_omni", checkpoint("qwen3_omni"), media, True)
    study = load_study(path)
    loaded = load_model(study.model)
    from_jsonl = load_manifest(study, loaded)
    header = "id,audio_answer,visual_answer,clean.video,clean.audio_in_video,conflict.video,"
    header += "conflict.audio,conflict.audio_in_video"
    lines = [header] + [
        f"{own},bark,meow,{media / own}.mkv,true,{media / other}.mkv,{media / own}.mkv,true"
        for own, other in (("dog", "cat"), ("cat", "dog"))
    ]
    (tmp_path / "samples.csv").write_text("\n".join(lines) + "\n")
    path.write_text(path.read_text().replace("samples.jsonl", "samples.csv"))
    csv_study = load_study(path)
    from_csv = load_manifest(csv_study, loaded)
    for first, second in zip(from_jsonl, from_csv, strict=True):
        for run in ("clean", "conflict"):
            assert first.runs[run].keys() == second.runs[run].keys()
            for key, value in first.runs[run].items():
                assert torch.equal(value, second.runs[run][key]), (run, key)
