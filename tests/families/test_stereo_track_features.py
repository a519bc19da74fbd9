"""A stereo 44.1 kHz wav and the same sound as a video's soundtrack give the same features
(issue #25's acceptance), through the run path: :func:`containers.run_media` then the
Qwen2.5-Omni adapter's ``build_inputs``, the soundtrack read from the clip (interleaved with the
frames or not) against the same clip with the wav as its ``audio``.

``test_conventions`` and ``tests/reference/test_official_audio`` compare the waveforms of a wav
and an audio-only ALAC mp4; this compares the features the model gets, with the track beside a
video stream, in every lossless codec and container PyAV writes that users meet (ALAC and FLAC in
mp4, PCM in mov, PCM and FLAC in mkv) — equal within 1e-4 (measured: 0, bit-equal) — and in AAC,
the usual mp4 soundtrack. AAC is lossy, so there the features cannot be equal; what must hold is
that the reading adds nothing to the codec's loss: the same length and token layout, no offset,
no gain (the bug this guards against mixed a track (L+R)/√2 and a wav (L+R)/2: +0.075 on every
log-mel value), and the codec's own difference within the bounds measured here (PyAV 18.1,
ffmpeg 8.1's AAC encoder at 128 kbit/s, 128 mel bins as published), see :data:`AAC_BOUNDS`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork.data import containers, media
from patchwork.loading.model import load_model
from patchwork.study.specs import ModelSpec

RATE = 44_100
SECONDS = 2.0
FPS = 8
SIDE = 32
QUESTION = "what do you hear"
#: (container suffix, video codec, audio codec): lossless soundtracks.
LOSSLESS = (
    ("mp4", "h264", "alac"),
    ("mp4", "h264", "flac"),
    ("mov", "h264", "pcm_s16le"),
    ("mkv", "ffv1", "pcm_s16le"),
    ("mkv", "ffv1", "flac"),
)
FEATURE_TOLERANCE = 1e-4
AAC_BIT_RATE = 128_000
#: AAC at 128 kbit/s against the wav, log-mel (128 bins, Whisper-normalized) and waveform
#: (16 kHz), measured → bound: the mean signed difference 0.0063 → 0.02 (a √2 gain gives 0.075);
#: the mean absolute difference 0.044 → 0.06; the largest difference where the wav's log-mel is
#: within 0.5 (20 dB) of its peak 0.079 → 0.15, and anywhere 0.97 → 1.25 (quiet bins that the
#: codec drops, where the log scale magnifies it); the loudness (RMS) ratio 1.0027 → within 1 %.
AAC_BOUNDS = {"bias": 0.02, "mean": 0.06, "loud": 0.15, "max": 1.25, "rms": 0.01}


def _published_audio() -> dict:
    """The published Qwen2.5-Omni feature extractor's settings."""
    fixtures = Path(__file__).parents[1] / "fixtures" / "published_configs"
    saved = json.loads((fixtures / "qwen2_5_omni_preprocessor_config.json").read_text())
    return {
        "n_mels": saved["feature_size"],
        "max_samples": saved["n_samples"],
        "n_fft": saved["n_fft"],
        "hop_length": saved["hop_length"],
    }


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    """2 s of 16-bit stereo at 44.1 kHz, (channels, samples): a tone and noise on the left, a
    fading tone on the right."""
    rng = np.random.default_rng(3)
    times = np.arange(int(SECONDS * RATE)) / RATE
    left = 0.4 * np.sin(2 * np.pi * 440 * times) + 0.05 * rng.standard_normal(len(times))
    right = 0.3 * np.sin(2 * np.pi * 1250 * times) * np.exp(-times)
    return np.round(np.clip(np.stack([left, right]), -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, pcm: np.ndarray) -> Path:
    import soundfile

    folder = tmp_path_factory.mktemp("stereo")
    soundfile.write(str(folder / "sound.wav"), pcm.T, RATE, subtype="PCM_16")
    return folder


def write_clip(
    path: Path, pcm: np.ndarray, video_codec: str, audio_codec: str, bit_rate: int | None = None
) -> Path:
    """A clip of 2 s of random frames with ``pcm`` as its stereo soundtrack in ``audio_codec``
    (PyAV converts the 16-bit samples to the codec's own format)."""
    import av

    pictures = np.random.default_rng(0).integers(0, 255, (16, SIDE, SIDE, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(video_codec, rate=FPS)
        video.width = video.height = SIDE
        video.pix_fmt = "bgr0" if video_codec == "ffv1" else "yuv420p"
        audio = container.add_stream(audio_codec, rate=RATE, layout="stereo")
        if bit_rate is not None:
            audio.bit_rate = bit_rate
        for picture in pictures:
            container.mux(video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(video.encode(None))
        for start in range(0, pcm.shape[1], 4096):
            block = np.ascontiguousarray(pcm[:, start : start + 4096].T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="stereo")
            frame.sample_rate, frame.pts = RATE, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(ModelSpec(family="qwen2_5_omni", checkpoint=str(checkpoint("qwen2_5_omni"))))


def _build(loaded, folder: Path, spec: dict):
    run = containers.run_media(spec, folder, 16_000, QUESTION)
    return run, loaded.adapter.build_inputs(loaded.token_ids(QUESTION), run)


def _track_and_wav(loaded, folder: Path, clip: str, interleaved: bool, **extra):
    """The run hearing the clip's own soundtrack, and the run hearing the wav instead."""
    spec = {"video": clip, "audio_in_video": interleaved, **extra}
    return _build(loaded, folder, spec), _build(loaded, folder, {**spec, "audio": "sound.wav"})


@pytest.mark.parametrize("interleaved", [False, True], ids=["separate", "interleaved"])
@pytest.mark.parametrize("suffix,video_codec,audio_codec", LOSSLESS, ids=lambda v: str(v))
def test_a_lossless_track_gives_the_wavs_features(
    loaded, folder: Path, pcm: np.ndarray, suffix, video_codec, audio_codec, interleaved
) -> None:
    clip = f"{audio_codec}.{suffix}"
    if not (folder / clip).exists():
        write_clip(folder / clip, pcm, video_codec, audio_codec)
    (track, from_track), (wav, from_wav) = _track_and_wav(loaded, folder, clip, interleaved)
    assert track.waveform.shape == wav.waveform.shape == (32_000,)
    assert np.abs(track.waveform - wav.waveform).max() <= 1e-6
    assert torch.equal(from_track["input_ids"], from_wav["input_ids"])
    assert torch.equal(from_track["feature_attention_mask"], from_wav["feature_attention_mask"])
    difference = (from_track["input_features"] - from_wav["input_features"]).abs().max().item()
    assert difference <= FEATURE_TOLERANCE
    # and with the published feature extractor's 128 mel bins
    settings = _published_audio()
    published = [
        media.clip_features(run.waveform, **settings)["input_features"] for run in (track, wav)
    ]
    assert (published[0] - published[1]).abs().max().item() <= FEATURE_TOLERANCE


@pytest.mark.parametrize("interleaved", [False, True], ids=["separate", "interleaved"])
def test_an_aac_track_differs_from_the_wav_by_the_codecs_loss_alone(
    loaded, folder: Path, pcm: np.ndarray, interleaved: bool
) -> None:
    """AAC pads its last frame (2.02 s here), so both runs are cut to the clip's ``seconds``, as
    a manifest row does to give its runs one token layout."""
    clip = "aac.mp4"
    if not (folder / clip).exists():
        write_clip(folder / clip, pcm, "h264", "aac", AAC_BIT_RATE)
    (track, from_track), (wav, from_wav) = _track_and_wav(
        loaded, folder, clip, interleaved, seconds=SECONDS
    )
    assert torch.equal(from_track["input_ids"], from_wav["input_ids"])
    assert torch.equal(from_track["feature_attention_mask"], from_wav["feature_attention_mask"])
    ours, reference = track.waveform, wav.waveform
    assert ours.shape == reference.shape == (32_000,)
    # no offset: the encoder's priming samples are dropped, the waveforms line up
    middle = slice(1_000, 31_000)
    lags = {
        lag: float(np.dot(ours[1_000 + lag : 31_000 + lag], reference[middle]))
        for lag in (-2, -1, 0, 1, 2)
    }
    assert max(lags, key=lags.__getitem__) == 0
    # no gain: one downmix rule for the track and the wav
    loudness = np.sqrt(np.mean(ours**2)) / np.sqrt(np.mean(reference**2))
    assert abs(loudness - 1) <= AAC_BOUNDS["rms"]

    settings = _published_audio()
    track_features = media.clip_features(ours, **settings)["input_features"][0]
    wav_features = media.clip_features(reference, **settings)["input_features"][0]
    difference = track_features - wav_features
    loud = wav_features > wav_features.max() - 0.5
    measured = {
        "bias": abs(difference.mean().item()),
        "mean": difference.abs().mean().item(),
        "loud": difference[loud].abs().max().item(),
        "max": difference.abs().max().item(),
    }
    assert all(measured[name] <= AAC_BOUNDS[name] for name in measured), measured
    # the bounds would catch the gain this guards against: √2 moves every value by 0.075
    louder = media.clip_features(reference * np.sqrt(2), **settings)["input_features"][0]
    assert (louder - wav_features).mean().item() > 3 * AAC_BOUNDS["bias"]
    # the adapter's features (this checkpoint's mel bins) stay within the same bounds
    adapter = (from_track["input_features"] - from_wav["input_features"]).abs()
    assert adapter.mean().item() <= AAC_BOUNDS["mean"] and adapter.max().item() <= AAC_BOUNDS["max"]
