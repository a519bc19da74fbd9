"""Samples of the testbed world, built through real media files and the user-facing loader.

:func:`make_samples` draws, for sample ``i``, a sound category A and a different picture category
B from a generator seeded by ``(seed, i)`` alone, synthesizes A's sound, draws A's and B's
pictures, writes them as wav/png under ``media_dir``, reads them back with
:mod:`patchwork.data.media`, and builds each requested run from the same files: runs differ only
in which media they use, never in their token layout or in the random draws behind a medium. The
layout is the checkpoint's: interleaved (the picture held for 4 frames, the sound read in the
video) when its ``patchwork_testbed.json`` declares ``audio_in_video``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from patchwork.data import media
from patchwork.data.sample import Sample
from patchwork.errors import DataError
from patchwork.testbed import model as testbed_model
from patchwork.testbed import world

AUDIO_CHOICES = ("own", "silence", "other_category")
PICTURE_CHOICES = ("own", "blank", "other_category")
#: Streams of random numbers per sample; distinct from the training streams (see train.py).
_SAMPLE_STREAM = 101


def make_samples(
    checkpoint_dir: str | Path,
    n: int,
    seed: int,
    runs: Mapping[str, Mapping[str, str]],
    question: str = "what do you hear",
    media_dir: str | Path | None = None,
) -> list[Sample]:
    """``n`` samples, each with the runs ``runs`` names (run → {"audio": …, "picture": …}).

    ``audio`` is ``own`` (A's sound), ``silence`` or ``other_category`` (B's sound: a sound swap);
    ``picture`` is ``own`` (A's picture),
    ``blank`` (uniform grey) or ``other_category`` (B's picture). ``audio_answer`` is A's sound word
    and ``visual_answer`` B's sound word for "hear" questions (A's and B's object words for "see").
    Sample ``i`` is the same whatever ``n`` is.
    """
    if media_dir is None:
        raise DataError("make_samples needs a media_dir to write its wav/png files into")
    if n < 1:
        raise DataError(f"make_samples: n must be at least 1, got {n}")
    _check_runs(runs)
    # a plain checkpoint folder (no testbed json) keeps the separate layout
    declared = (Path(checkpoint_dir) / testbed_model.META_FILE).exists()
    interleaved = declared and testbed_model.audio_in_video(
        testbed_model.read_meta(Path(checkpoint_dir))
    )
    tokenizer = Tokenizer.from_file(str(Path(checkpoint_dir) / "tokenizer.json"))
    input_ids = torch.tensor([testbed_model.prompt_ids(tokenizer, question, interleaved)])
    hearing = "hear" in question.split()
    media_dir = Path(media_dir)
    return [
        _one_sample(index, seed, runs, input_ids, hearing, tokenizer, media_dir, interleaved)
        for index in range(n)
    ]


def _check_runs(runs: Mapping[str, Mapping[str, str]]) -> None:
    if not runs:
        raise DataError("make_samples needs at least one run")
    for name, run in runs.items():
        extra = set(run) - {"audio", "picture"}
        if extra:
            raise DataError(f"run {name!r}: unknown keys {sorted(extra)} (audio, picture)")
        if run.get("audio", "own") not in AUDIO_CHOICES:
            raise DataError(
                f"run {name!r}: audio must be one of {AUDIO_CHOICES}, got {run['audio']!r}"
            )
        if run.get("picture", "own") not in PICTURE_CHOICES:
            raise DataError(
                f"run {name!r}: picture must be one of {PICTURE_CHOICES}, got {run['picture']!r}"
            )


def draw_pair(seed: int, index: int) -> tuple[world.Category, world.Category]:
    """Sample ``index``'s sound category A and conflicting picture category B ≠ A."""
    rng = np.random.default_rng([seed, index, _SAMPLE_STREAM, 0])
    a, offset = rng.integers(len(world.CATEGORIES)), rng.integers(1, len(world.CATEGORIES))
    return world.CATEGORIES[a], world.CATEGORIES[(a + offset) % len(world.CATEGORIES)]


def _one_sample(
    index: int,
    seed: int,
    runs: Mapping[str, Mapping[str, str]],
    input_ids: torch.Tensor,
    hearing: bool,
    tokenizer: Tokenizer,
    media_dir: Path,
    interleaved: bool = False,
) -> Sample:
    sound_kind, other_kind = draw_pair(seed, index)

    # each medium draws from its own stream, so every run sees the very same clip and pictures
    def stream(medium: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, _SAMPLE_STREAM, medium])

    folder = media_dir / f"s{index:05d}"
    files = {
        "own_audio": media.save_audio(
            folder / "sound.wav", world.synthesize_sound(sound_kind.timbre, stream(1))
        ),
        "silence": media.save_audio(folder / "silence.wav", world.silence()),
        "other_audio": media.save_audio(
            folder / "other.wav", world.synthesize_sound(other_kind.timbre, stream(4))
        ),
        "own_picture": media.save_frame(
            folder / "picture.png", world.draw_picture(sound_kind, stream(2))
        ),
        "other_category": media.save_frame(
            folder / "other.png", world.draw_picture(other_kind, stream(3))
        ),
        "blank": media.save_frame(folder / "blank.png", world.blank_picture()),
    }
    built = {}
    for name, run in runs.items():
        audio = run.get("audio", "own")
        audio_file = files[{"own": "own_audio", "other_category": "other_audio"}.get(audio, audio)]
        picture = run.get("picture", "own")
        picture_file = files["own_picture" if picture == "own" else picture]
        frames = testbed_model.INTERLEAVED_FRAMES if interleaved else 1
        built[name] = build_inputs(
            input_ids,
            [media.load_audio(audio_file)],
            media.load_frames([picture_file] * frames),
            testbed_model.SECONDS_PER_GRID if interleaved else 1.0,
        )
    audio_word = sound_kind.sound if hearing else sound_kind.name
    visual_word = other_kind.sound if hearing else other_kind.name
    return Sample(
        sample_id=f"s{index:05d}",
        runs=built,
        audio_answer=audio_word,
        visual_answer=visual_word,
        audio_answer_id=testbed_model.word_id(tokenizer, audio_word),
        visual_answer_id=testbed_model.word_id(tokenizer, visual_word),
        meta={
            "audio_category": sound_kind.name,
            "picture_category": other_kind.name,
            "seed": str(seed),
            "index": str(index),
        },
    )


def build_inputs(
    input_ids: torch.Tensor,
    waveforms: Sequence[np.ndarray],
    frames: np.ndarray,
    seconds_per_grid: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The thinker's forward kwargs for one clip (batch of one): ids (1, S), log-mel features
    (1, 32, 40), the frames (n, 32, 32, 3) as a video of 16 tokens per 2 frames (one frame is
    padded to 2), ``seconds_per_grid`` apart. The forward's ``use_audio_in_video`` flag is not
    among them (tensors only): the family adapter's ``forward_kwargs`` adds it from the ids."""
    audio = media.audio_features(
        waveforms, n_mels=testbed_model.N_MELS, mel_frames=testbed_model.MEL_FRAMES
    )
    video = media.video_patches(
        frames,
        patch_size=testbed_model.PATCH,
        temporal_patch_size=testbed_model.TEMPORAL_PATCH,
        merge_size=testbed_model.MERGE,
    )
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "input_features": audio["input_features"],
        "feature_attention_mask": audio["feature_attention_mask"],
        "pixel_values_videos": video["pixel_values_videos"],
        "video_grid_thw": video["video_grid_thw"],
        "video_second_per_grid": torch.tensor([seconds_per_grid]),
    }


def collate(runs: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack runs (each a batch of one, same token length) into one batch along the row axis;
    ``pixel_values_videos`` concatenates along its patch axis, as the thinker expects."""
    if not runs:
        raise DataError("collate needs at least one run")
    return {key: torch.cat([run[key] for run in runs]) for key in runs[0]}
