"""Sound files read as the official routes read them (reference environment).

wav and flac at 8, 16, 22.05, 44.1 and 48 kHz, mono and stereo: patchwork's waveform equals
``librosa.load(sr=16000)`` (the model cards, through qwen-omni-utils) and transformers'
``load_audio(backend="soundfile")`` (what Gemma 3n's processor loads with where torchcodec is not
installed); Gemma 3n's features equal its processor's extractor on that waveform. Where
torchcodec is installed, transformers' ``load_audio`` resamples with ffmpeg instead: that
difference is measured (written to PATCHWORK_REFERENCE_REPORT beside the video routes'), not
followed. A stereo 44.1 kHz wav and the same sound in an mp4 soundtrack get one downmix rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork.data import containers

from . import official

RATES = (8_000, 16_000, 22_050, 44_100, 48_000)
CASES = [(rate, channels, suffix) for rate in RATES for channels in (1, 2) for suffix in ("wav",)]
CASES += [(22_050, 2, "flac"), (48_000, 1, "flac")]
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    target = os.environ.get("PATCHWORK_REFERENCE_REPORT")
    if target:
        path = Path(target).with_name(Path(target).stem + "-audio.json")
        path.write_text(json.dumps(MEASURED, indent=1, sort_keys=True))


def _keep_max(name: str, value: float) -> None:
    MEASURED[name] = max(MEASURED.get(name, 0.0), float(value))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory):
    """Gemma 3n's adapter (meta device, published config) and its feature extractor."""
    import shutil

    from transformers import AutoConfig, Gemma3nAudioFeatureExtractor

    from patchwork.models.gemma3n import Gemma3nAdapter

    folder = tmp_path_factory.mktemp("gemma3n")
    shutil.copy(official.FIXTURES / "gemma3n_e4b.json", folder / "config.json")
    model = Gemma3nAdapter.empty(folder, AutoConfig.from_pretrained(folder))
    return Gemma3nAdapter(model, folder), Gemma3nAudioFeatureExtractor()


@pytest.mark.parametrize("rate,channels,suffix", CASES, ids=lambda v: str(v))
def test_sound_files_read_as_the_official_routes(tmp_path, gemma, rate, channels, suffix) -> None:
    import librosa
    from transformers.audio_utils import load_audio

    from patchwork.data.sample import RunMedia

    path = official.write_sound(tmp_path / f"clip.{suffix}", rate, channels, 3.3, seed=rate)
    ours = containers.load_sound(path, 16_000)
    model_card = librosa.load(str(path), sr=16_000)[0]
    assert ours.shape == model_card.shape
    assert np.abs(ours - model_card).max() <= 1e-6
    processor_loaded = load_audio(str(path), sampling_rate=16_000, backend="soundfile")
    assert np.abs(ours - processor_loaded).max() <= 1e-6
    adapter, extractor = gemma
    config = adapter.config
    image = torch.zeros(1, config.vision_soft_tokens_per_image, config.vision_config.hidden_size)
    inputs = adapter.build_inputs([1], RunMedia(waveform=ours, image_features=image))
    reference = extractor([processor_loaded], sampling_rate=16_000, return_tensors="pt")
    assert torch.equal(inputs["input_features_mask"], reference["input_features_mask"].bool())
    difference = (inputs["input_features"] - reference["input_features"]).abs().max().item()
    _keep_max("gemma3n_features", difference)
    assert difference <= 1e-4
    # transformers' load_audio with torchcodec installed: ffmpeg's resampler, measured only
    torchcodec = load_audio(str(path), sampling_rate=16_000, backend="torchcodec")
    if len(torchcodec) == len(ours):
        _keep_max("torchcodec_waveform", np.abs(ours - torchcodec).max())
        other = extractor([torchcodec], sampling_rate=16_000, return_tensors="pt")
        _keep_max(
            "gemma3n_features_torchcodec",
            (other["input_features"] - reference["input_features"]).abs().max().item(),
        )
    else:
        _keep_max("torchcodec_length_difference", abs(len(torchcodec) - len(ours)))


def test_a_stereo_wav_and_the_same_sound_as_an_mp4_track_get_one_gain(tmp_path: Path) -> None:
    """The same stereo 44.1 kHz sound as a wav and as an mp4 soundtrack (lossless ALAC, so that
    only the reading differs): equal waveforms, where patchwork once mixed the track (L+R)/√2."""
    import subprocess

    wav = official.write_sound(tmp_path / "stereo.wav", 44_100, 2, 2.0)
    track = tmp_path / "stereo.mp4"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "alac", str(track)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    from_wav = containers.load_sound(wav, 16_000)
    from_track = containers.load_sound(track, 16_000)
    assert from_wav.shape == from_track.shape
    assert np.abs(from_wav - from_track).max() <= 1e-6
