"""Named sample generators: data made on the fly instead of read from a manifest.

- ``random``: random features in the token layout of a random-init Qwen2.5-Omni thinker, for
  tests and smoke runs. Every sample draws from its own seeded generator, so sample ``i`` is the
  same whatever the sample count.
- ``testbed``: the synthetic audio-visual world the default model was trained on
  (:mod:`patchwork.testbed`).
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch

from patchwork.data.sample import Sample
from patchwork.data.source import SampleInfo, SampleSource
from patchwork.errors import ModelError
from patchwork.loading.model import RANDOM_SPECIALS, LoadedModel
from patchwork.models.qwen2_5_omni import audio_token_count
from patchwork.study.schema import RunSpec, Study

MEL_BINS, MEL_FRAMES = 32, 40  # -> 10 audio tokens (random_init has 32 mel bins)
FRAME_SIZE, PATCH, TEMPORAL, MERGE = 16, 4, 2, 2  # -> grid (1, 4, 4), 4 video tokens


def generate_samples(
    study: Study, loaded: LoadedModel, media_root: Path | None = None
) -> SampleSource:
    """The study's samples from its named generator."""
    spec = study.dataset
    if spec.generator == "testbed":
        from patchwork import testbed

        runs = {name: run.model_dump() for name, run in study.runs.items()}
        named = study.model.checkpoint or "testbed"
        directory = Path(named)
        checkpoint = directory if directory.is_dir() else testbed.checkpoint_path(named)
        with tempfile.TemporaryDirectory(prefix="patchwork-media-", dir=media_root) as media:
            try:
                samples = testbed.make_samples(
                    checkpoint, spec.samples, spec.seed, runs, study.question, Path(media)
                )
            except ModelError as error:
                raise ModelError(f"{study.where('question')}: {error}") from None
            return SampleSource.from_list(samples)

    def load(start: int, stop: int) -> list[Sample]:
        try:
            return [
                random_sample(index, spec.seed, study.runs, study.question, loaded)
                for index in range(start, stop)
            ]
        except ModelError as error:
            raise ModelError(f"{study.where('question')}: {error}") from None

    infos = [random_info(index, spec.seed, loaded) for index in range(spec.samples)]
    return SampleSource(infos, load)


def _answer_ids(index: int, seed: int, loaded: LoadedModel) -> tuple[int, int]:
    vocab_size = loaded.adapter.config.text_config.vocab_size
    first_word = max(RANDOM_SPECIALS.values()) + 1
    generator = torch.Generator().manual_seed(_stable_seed(seed, index, "answers"))
    audio_id, visual_id = (
        int(i) + first_word
        for i in torch.randperm(vocab_size - first_word, generator=generator)[:2]
    )
    return audio_id, visual_id


def random_info(index: int, seed: int, loaded: LoadedModel) -> SampleInfo:
    """Metadata of sample ``index`` of the ``random`` generator, without building its tensors."""
    audio_id, visual_id = _answer_ids(index, seed, loaded)
    return SampleInfo(f"s{index:05d}", f"tok{audio_id}", f"tok{visual_id}")


def random_sample(
    index: int,
    seed: int,
    runs: Mapping[str, RunSpec],
    question: str,
    loaded: LoadedModel,
    mel_frames: int = MEL_FRAMES,
    frame_size: int = FRAME_SIZE,
) -> Sample:
    """One sample of the ``random`` generator (see module docstring).

    ``mel_frames`` (audio length, 4 frames per audio token) and ``frame_size`` (square frame side
    in pixels, a multiple of 8) set the sequence length, e.g. for benchmarks.
    """

    def draw(role: str, *shape: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_stable_seed(seed, index, role))
        return torch.randn(*shape, generator=generator)

    grid = (1, frame_size // PATCH, frame_size // PATCH)
    input_ids = loaded.adapter.prompt_ids(
        loaded.token_ids(question),
        [audio_token_count(mel_frames)],
        [grid[0] * grid[1] * grid[2] // MERGE**2],
    )
    patches = grid[0] * grid[1] * grid[2]
    patch_dim = 3 * TEMPORAL * PATCH * PATCH
    sound = draw("sound", 1, MEL_BINS, mel_frames)
    sounds = {
        "own": sound,
        "other_category": draw("other_sound", 1, MEL_BINS, mel_frames),
        "silence": torch.zeros_like(sound),
    }
    pictures = {
        "own": draw("picture", patches, patch_dim),
        "other_category": draw("other_picture", patches, patch_dim),
        "blank": torch.zeros(patches, patch_dim),
    }
    built = {}
    for name, run in runs.items():
        built[name] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "input_features": sounds[run.audio],
            "feature_attention_mask": torch.ones(1, mel_frames, dtype=torch.long),
            "pixel_values_videos": pictures[run.picture],
            "video_grid_thw": torch.tensor([grid]),
            "video_second_per_grid": torch.tensor([1.0]),
        }
    audio_id, visual_id = _answer_ids(index, seed, loaded)
    return Sample(
        sample_id=f"s{index:05d}",
        runs=built,
        audio_answer=f"tok{audio_id}",
        visual_answer=f"tok{visual_id}",
        audio_answer_id=audio_id,
        visual_answer_id=visual_id,
    )


def _stable_seed(*parts: object) -> int:
    """A seed from parts, equal across processes (unlike ``hash``, which is salted per process)."""
    return zlib.crc32(repr(parts).encode())
