"""Input conventions in the default environment (no torchvision): the official routes' frame
counts, indices, pixel budgets and audio rules as written down from qwen-omni-utils 0.0.9 and
transformers 5.25 (tests/reference checks them against the real code), and the ``inputs:``
study section."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.data import conventions, media
from patchwork.data.conventions import VideoSampling
from patchwork.errors import ModelError, StudyError
from patchwork.study.loader import parse_study

MODEL_CARD = VideoSampling("model_card")
TRANSFORMERS = VideoSampling("transformers", total_tokens=None)


def test_the_issues_examples() -> None:
    # 3 s at 25 fps: the model card spreads 6 frames from first to last, transformers steps
    assert MODEL_CARD.frame_indices(75, MODEL_CARD.frame_count(75, 25.0)) == [0, 15, 30, 44, 59, 74]
    assert TRANSFORMERS.frame_indices(75, 6) == [0, 12, 25, 37, 50, 62]
    # 20 s at 30 fps: 40 frames spanning the clip, no 32-frame cap
    indices = MODEL_CARD.frame_indices(600, MODEL_CARD.frame_count(600, 30.0))
    assert len(indices) == 40 and indices[-1] == 599
    # 2 s at 10 fps: at least 4 frames; 1 s at 2 fps of 3 frames: 2 (even, at most the total)
    assert MODEL_CARD.frame_count(20, 10.0) == 4
    assert MODEL_CARD.frame_count(3, 3.0) == 2


def test_pixel_budgets_are_the_published_ones() -> None:
    assert MODEL_CARD.pixel_range(8) == (128 * 28 * 28, 768 * 28 * 28)
    # the total cap of qwen-omni-utils: 0.9 · 128000 · 28² · 2 / n, floored at 1.05 · min
    low, high = MODEL_CARD.pixel_range(400)
    assert low == 100_352 and math.isclose(high, 128_000 * 784 * 0.9 * 2 / 400)
    assert MODEL_CARD.pixel_range(768)[1] == 235_200
    assert VideoSampling(total_tokens=1_000).pixel_range(768)[1] == int(100_352 * 1.05)
    assert TRANSFORMERS.pixel_range(768) == (100_352, 602_112)


def test_grid_seconds_follow_what_the_processor_is_told() -> None:
    # the model cards call the processor without fps: its default, whatever was sampled
    assert MODEL_CARD.grid_fps(8, 120, 29.97) == 2.0
    assert VideoSampling(processor_fps=1.0).grid_fps(8, 120, 29.97) == 1.0
    assert VideoSampling(processor_fps=None).grid_fps(8, 120, 30.0) == 2.0
    assert TRANSFORMERS.grid_fps(8, 120, 29.97, fps=3.0) == 3.0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    total=st.integers(2, 5_000),
    source_fps=st.floats(1.0, 240.0),
    fps=st.one_of(st.none(), st.floats(0.1, 30.0)),
    route=st.sampled_from([MODEL_CARD, TRANSFORMERS]),
)
def test_frame_counts_are_even_and_indices_inside_the_clip(total, source_fps, fps, route) -> None:
    count = route.frame_count(total, source_fps, fps)
    assert count % 2 == 0 and 2 <= count <= min(total, 768)
    indices = route.frame_indices(total, count)
    assert len(indices) == count and indices == sorted(set(indices))
    assert 0 <= indices[0] and indices[-1] <= total - 1


def test_transformers_index_past_the_clip_is_dropped() -> None:
    # float32 arange(0, 99, 99 / 98) holds 99 steps, the last one at 99: past the clip
    assert TRANSFORMERS.frame_indices(99, 98)[-2:] == [96, 97]


def test_audio_is_mixed_and_resampled_as_librosa_reads_it() -> None:
    stereo = np.stack([np.full(441, 0.5), np.full(441, -0.1)], axis=1).astype(np.float32)
    assert np.allclose(conventions.to_mono(stereo), 0.2)  # the mean, for wav and tracks alike
    resampled = conventions.resample(np.zeros(44_101, np.float32), 44_100, 16_000)
    assert len(resampled) == math.ceil(44_101 * 16_000 / 44_100)  # librosa's fix_length
    tone = np.sin(2 * np.pi * 440 * np.arange(44_100) / 44_100).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(conventions.resample(tone, 44_100, 16_000)))
    assert int(np.argmax(spectrum)) == 440  # soxr keeps the tone (bins of 1 Hz)
    assert conventions.as_pcm16(np.array([0.5 / 32768, 1.5 / 32768, 2.0])).tolist() == [
        0.0,
        2 / 32768,
        32767 / 32768,
    ]


def test_torch_resizes_as_torchvision_v1_rounds() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 12, 16, 3), dtype=np.uint8)
    rounded = media.resize_frames(frames, 24, 32)
    floats = media.resize_frames(frames, 24, 32, mode="float")
    assert rounded.dtype == np.uint8 and floats.dtype == np.float32
    assert np.array_equal(rounded, np.clip(floats, 0, 255).round().astype(np.uint8))
    assert media.resize_frames(frames, 24, 32, mode="uint8").dtype == np.uint8


STUDY = """\
name: inputs
model: {{random_init: {{layers: 2, hidden_size: 32, heads: 2, kv_heads: 1}}}}
dataset: {{generator: random, samples: 2}}
interventions: [{{kind: activation_patching}}]
{inputs}
"""


def test_the_inputs_section_and_its_short_forms() -> None:
    default = parse_study(STUDY.format(inputs=""))
    assert (default.inputs.convention, default.inputs.builder) == ("model_card", "patchwork")
    assert parse_study(STUDY.format(inputs="inputs: processor")).inputs.builder == "processor"
    short = parse_study(STUDY.format(inputs="inputs: transformers"))
    assert short.inputs.convention == "transformers"
    full = parse_study(
        STUDY.format(inputs="inputs: {convention: transformers, builder: processor}")
    )
    assert (full.inputs.convention, full.inputs.builder) == ("transformers", "processor")
    with pytest.raises(StudyError, match="inputs"):
        parse_study(STUDY.format(inputs="inputs: {convention: librosa}"))


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here"
)
def test_the_processor_builder_without_torchvision_is_one_line(checkpoint) -> None:
    from patchwork.loading.model import load_model
    from patchwork.study.specs import ModelSpec

    loaded = load_model(
        ModelSpec(family="qwen2_5_omni", checkpoint=str(checkpoint("qwen2_5_omni")))
    )
    with pytest.raises(ModelError, match="needs torchvision") as caught:
        loaded.adapter.processor_inputs({"video": "clip.mp4"}, Path("."), [1], "model_card")
    assert "\n" not in str(caught.value)


def test_a_stereo_wav_and_its_mp4_track_give_the_same_waveform(tmp_path: Path) -> None:
    """The same stereo 44.1 kHz sound as a wav and as a lossless (ALAC) mp4 track: one reading,
    one gain (the channels' mean), where the track was once mixed (L+R)/√2 and the wav (L+R)/2."""
    import av
    import soundfile

    from patchwork.data import containers

    rng = np.random.default_rng(3)
    times = np.arange(88_200) / 44_100
    left = 0.4 * np.sin(2 * np.pi * 440 * times) + 0.02 * rng.standard_normal(len(times))
    right = 0.3 * np.sin(2 * np.pi * 1250 * times)
    pcm = np.round(np.stack([left, right]) * 32767).astype(np.int16)  # (channels, n)
    soundfile.write(str(tmp_path / "sound.wav"), pcm.T, 44_100, subtype="PCM_16")
    with av.open(str(tmp_path / "sound.mp4"), mode="w") as container:
        stream = container.add_stream("alac", rate=44_100, layout="stereo")
        for start in range(0, pcm.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + 4096]), format="s16p", layout="stereo"
            )
            frame.sample_rate, frame.pts = 44_100, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    from_wav = containers.load_sound(tmp_path / "sound.wav", 16_000)
    from_track = containers.load_sound(tmp_path / "sound.mp4", 16_000)
    assert from_wav.shape == from_track.shape == (32_000,)
    assert np.abs(from_wav - from_track).max() <= 1e-6
    expected = conventions.resample(pcm.T.astype(np.float32).mean(axis=1) / 32768, 44_100, 16_000)
    assert np.abs(from_wav - expected).max() <= 1e-6
