"""Sizes are bounded from headers before decoding, and damaged headers end in one line.

Regression cases of issue #28 (a 4 KB WAV whose header claims 200 M samples; an .npy whose
header claims 373 GiB; damaged safetensors) and a hypothesis fuzzer over media and feature
headers: random header fields and truncations of tiny generated wav, flac, npy, safetensors and
png files either load or end in exactly one DataError naming the file — anything else is a bug.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchwork.data import containers, media
from patchwork.errors import DataError


def sparse_wav(path: Path, claimed_samples: int = 200_000_000, rate: int = 16_000) -> Path:
    """A PCM-16 mono WAV of 4 KB on disk whose header claims ``claimed_samples`` samples: the
    rest is a hole (a sparse file), read back as zeros."""
    data_bytes = claimed_samples * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with path.open("wb") as handle:
        handle.write(header + bytes(4096 - len(header)))
        handle.truncate(len(header) + data_bytes)
    return path


def huge_npy(path: Path) -> Path:
    """A small .npy whose header claims a (100000, 1000000) float32 array (373 GiB)."""
    array = np.zeros((2, 3), dtype=np.float32)
    np.save(path, array)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"(2, 3)", b"(100000, 1000000)".ljust(6)))
    return path


def test_a_sparse_wav_is_refused_from_its_header(tmp_path: Path) -> None:
    wav = sparse_wav(tmp_path / "sparse.wav")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="12500.0 s by its header") as caught:
            containers.load_sound(wav, 16_000, max_seconds=600)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(wav) in str(caught.value) and "\n" not in str(caught.value)
    assert peak < 5_000_000  # nothing of the claimed 400 MB was allocated
    # a 'seconds' cut reads only that much
    assert 1_600 <= len(containers.load_sound(wav, 16_000, max_seconds=600, seconds=0.1)) <= 1_601


def pcm_wav(
    path: Path, samples: int = 3200, bits: int = 16, claimed_bytes: int | None = None
) -> Path:
    """A mono 16 kHz PCM WAV of ``samples`` noise samples written by hand: ``bits`` and the
    data size its header claims may lie (the frame size stays 2 bytes)."""
    data = np.random.default_rng(0).integers(-3000, 3000, samples, dtype="<i2").tobytes()
    claimed = len(data) if claimed_bytes is None else claimed_bytes
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, bits)
    path.write_bytes(header + b"data" + struct.pack("<I", claimed) + data)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cut in half", "claims 6,400 bytes of samples, the file holds 3,200"),
        ("sparse header", "claims 400,000,000 bytes of samples, the file holds 6,400"),
        ("7 bits a sample", "its header gives 7 bits a sample but 2 bytes a frame of 1 channel"),
    ],
)
def test_a_wav_whose_header_does_not_describe_its_bytes_is_refused(
    tmp_path: Path, case: str, expected: str
) -> None:
    """libsndfile read such files without a word: the first half, 2,000 of 200 M claimed
    samples, or 16-bit samples as 8-bit ones (issue 28)."""
    path = tmp_path / "bad.wav"
    if case == "cut in half":
        path.write_bytes(pcm_wav(path).read_bytes()[: 44 + 3200])
    elif case == "sparse header":
        pcm_wav(path, claimed_bytes=400_000_000)
    else:
        pcm_wav(path, bits=7)
    with pytest.raises(DataError, match=f"audio file {path} is") as caught:
        containers.load_sound(path, 16_000, max_seconds=600)
    assert expected in str(caught.value)


@pytest.mark.parametrize("claimed", [None, 0xFFFFFFFF])
def test_a_whole_wav_or_one_of_unknown_length_loads(tmp_path: Path, claimed: int | None) -> None:
    """Streaming writers leave the data size 0xFFFFFFFF: not a damaged file."""
    path = pcm_wav(tmp_path / "ok.wav", claimed_bytes=claimed)
    assert len(containers.load_sound(path, 16_000, max_seconds=600)) == 3200


def test_random_bytes_as_audio_end_in_one_line_and_nothing_else(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """libsndfile's probe let libmpg123 print a warning of its own on stderr above the error."""
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=f"cannot decode audio of {path}"):
        containers.load_sound(path, 16_000, max_seconds=600)
    assert capfd.readouterr().err == ""


def test_an_npy_claiming_373_gib_is_refused_without_allocating(tmp_path: Path) -> None:
    features = huge_npy(tmp_path / "huge.npy")
    with pytest.raises(DataError, match="claims shape") as caught:
        containers.load_features(features)
    assert str(features) in str(caught.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:5],  # shorter than the length prefix
        lambda raw: struct.pack("<Q", 1 << 40) + raw[8:],  # header longer than the file
        lambda raw: raw[:8] + b"\xff" + raw[9:],  # not JSON
        lambda raw: raw[:-4],  # payload truncated
        lambda raw: raw.replace(b'"F32"', b'"X32"'),  # unknown dtype
        lambda raw: raw.replace(b"[2,3]", b"[9,9]"),  # shape disagrees with the offsets
    ],
    ids=["too-short", "long-header", "not-json", "truncated", "dtype", "shape"],
)
def test_damaged_safetensors_end_in_one_line(tmp_path: Path, damage) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "features.safetensors"
    save_file({"features": torch.zeros(2, 3)}, str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as caught:
        containers.load_features(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# ---- the fuzzer ---------------------------------------------------------------------------


def _wav(path: Path) -> Path:
    media.save_audio(path, np.sin(np.arange(800) / 5).astype(np.float32) * 0.3)
    return path


def _flac(path: Path) -> Path:
    import soundfile

    soundfile.write(str(path), np.zeros((400, 2), dtype=np.float32), 22_050, format="FLAC")
    return path


def _npy(path: Path) -> Path:
    np.save(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    return path


def _safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"features": torch.arange(12.0).reshape(3, 4)}, str(path))
    return path


def _png(path: Path) -> Path:
    return media.save_frame(path, np.zeros((6, 5, 3), dtype=np.uint8))


MAKERS = {
    "wav": (_wav, lambda p: containers.load_sound(p, 16_000, max_seconds=5)),
    "flac": (_flac, lambda p: containers.load_sound(p, 16_000, max_seconds=5)),
    "npy": (_npy, containers.load_features),
    "safetensors": (_safetensors, containers.load_features),
    "png": (_png, lambda p: media.load_frames([p], max_side=64)),
}
#: Edits of a file's first bytes (its header): (offset, new bytes), then an optional truncation.
EDITS = st.lists(
    st.tuples(st.integers(0, 160), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4
)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edits=EDITS, keep=st.one_of(st.none(), st.integers(0, 400)))
def test_damaged_headers_load_or_end_in_one_data_error(
    tmp_path: Path, kind: str, edits: list[tuple[int, bytes]], keep: int | None
) -> None:
    make, load = MAKERS[kind]
    path = make(tmp_path / f"case.{kind}")
    raw = bytearray(path.read_bytes())
    for offset, patch in edits:
        if offset < len(raw):
            raw[offset : offset + len(patch)] = patch
    path.write_bytes(bytes(raw[:keep] if keep is not None else raw))
    try:
        load(path)
    except DataError as error:
        message = str(error)
        assert str(path) in message and "\n" not in message, message


def test_a_video_over_max_seconds_is_refused_before_decoding(family_root: Path) -> None:
    clip = family_root / "media" / "dog.mkv"  # 16 frames at 8 fps: 2 s
    with pytest.raises(DataError, match=r"lasts 2\.0 s, over the dataset's max_seconds \(1\)"):
        containers.run_media({"video": "dog.mkv"}, clip.parent, 16_000, "", max_seconds=1)
    cut = containers.run_media({"video": "dog.mkv", "seconds": 1}, clip.parent, 16_000, "", 1)
    assert cut.waveform is not None and len(cut.waveform) == 16_000
