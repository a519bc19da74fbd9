"""Media loader: wav/png round trips, feature shapes, the Qwen2-VL patch layout, clear errors."""

import numpy as np
import pytest
import soundfile
import torch

from patchwork.data import media
from patchwork.errors import DataError


def _tone(seconds=0.4, rate=16_000, hz=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_wav_round_trip_and_features(tmp_path):
    wave = _tone()
    path = media.save_audio(tmp_path / "a" / "tone.wav", wave)
    back = media.load_audio(path)
    assert back.dtype == np.float32 and back.shape == wave.shape
    assert np.abs(back - wave).max() < 1e-4  # 16-bit quantization only
    features = media.audio_features([back, back[:3200]], n_mels=32, mel_frames=40)
    assert features["input_features"].shape == (2, 32, 40)
    assert features["feature_attention_mask"].shape == (2, 40)
    assert features["feature_attention_mask"].sum(-1).tolist() == [40, 20]


def test_other_rate_and_stereo_are_resampled_to_mono_16k(tmp_path):
    stereo = np.stack([_tone(rate=8_000), _tone(rate=8_000)], axis=1)
    soundfile.write(tmp_path / "s.wav", stereo, 8_000)
    back = media.load_audio(tmp_path / "s.wav")
    assert back.shape == (6_400,)
    assert np.abs(back[100:-100] - _tone()[100:-100]).max() < 0.05


def test_png_round_trip_and_patches_match_qwen2vl(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    media.save_frame(tmp_path / "f.png", frame)
    frames = media.load_frames([tmp_path / "f.png"])
    assert frames.shape == (1, 32, 32, 3) and np.array_equal(frames[0], frame)
    patches = media.video_patches(frames, patch_size=4, temporal_patch_size=2, merge_size=2)
    assert patches["pixel_values_videos"].shape == (64, 96)
    assert patches["video_grid_thw"].tolist() == [[1, 8, 8]]
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil_processor

    processor = pil_processor.Qwen2VLImageProcessorPil(
        do_resize=False, patch_size=4, temporal_patch_size=2, merge_size=2
    )
    reference = processor(images=[frame], return_tensors="pt")
    torch.testing.assert_close(
        patches["pixel_values_videos"], reference["pixel_values"], atol=1e-5, rtol=1e-5
    )
    assert reference["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "clip.wav"
    with pytest.raises(DataError, match="nowhere/clip.wav"):
        media.load_audio(missing)
    with pytest.raises(DataError, match="absent.png"):
        media.load_frames([tmp_path / "absent.png"])
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav")
    with pytest.raises(DataError, match="junk.wav"):
        media.load_audio(junk)
    junk_png = tmp_path / "junk.png"
    junk_png.write_bytes(b"not a png")
    with pytest.raises(DataError, match="junk.png"):
        media.load_frames([junk_png])


def test_frames_must_fit_the_patch_grid():
    with pytest.raises(DataError, match="multiple of 8"):
        media.video_patches(np.zeros((1, 30, 32, 3), dtype=np.uint8))
