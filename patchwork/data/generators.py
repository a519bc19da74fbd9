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
from patchwork.models.loading import RANDOM_SPECIALS, LoadedModel
from patchwork.study.schema import RunSpec, Study

MEL_BINS, MEL_FRAMES = 32, 40  # -> 10 audio tokens
FRAME_SIZE, PATCH, TEMPORAL, MERGE = 16, 4, 2, 2  # -> grid (1, 4, 4), 4 video tokens


def generate_samples(study: Study, loaded: LoadedModel, media_root: Path | None = None) -> list[Sample]:
    """The study's samples from its named generator."""
    spec = study.dataset
    if spec.generator == "testbed":
        from patchwork import testbed

        runs = {name: run.model_dump() for name, run in study.runs.items()}
        checkpoint = testbed.checkpoint_path(study.model.checkpoint or "testbed")
        with tempfile.TemporaryDirectory(prefix="patchwork-media-", dir=media_root) as media:
            return testbed.make_samples(
                checkpoint, spec.samples, spec.seed, runs, study.question, Path(media)
            )
    vocab = loaded.adapter.config.text_config.vocab_size
    return [random_sample(index, spec.seed, study.runs, study.question, vocab)
            for index in range(spec.samples)]


def random_sample(
    index: int, seed: int, runs: Mapping[str, RunSpec], question: str, vocab_size: int
) -> Sample:
    """One sample of the ``random`` generator (see module docstring)."""

    def draw(role: str, *shape: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_stable_seed(seed, index, role))
        return torch.randn(*shape, generator=generator)

    first_word = max(RANDOM_SPECIALS.values()) + 1
    question_ids = [first_word + sum(map(ord, word)) % (vocab_size - first_word)
                    for word in question.split()]
    answers = torch.randperm(
        vocab_size - first_word,
        generator=torch.Generator().manual_seed(_stable_seed(seed, index, "answers")),
    )[:2] + first_word
    audio_tokens = ((MEL_FRAMES - 1) // 2 + 1 - 2) // 2 + 1
    grid = (1, FRAME_SIZE // PATCH, FRAME_SIZE // PATCH)
    video_tokens = grid[0] * grid[1] * grid[2] // MERGE**2
    ids = (
        [RANDOM_SPECIALS["audio_start"]] + [RANDOM_SPECIALS["audio"]] * audio_tokens
        + [RANDOM_SPECIALS["audio_end"], RANDOM_SPECIALS["vision_start"]]
        + [RANDOM_SPECIALS["video"]] * video_tokens
        + [RANDOM_SPECIALS["vision_end"]] + question_ids
    )
    input_ids = torch.tensor([ids])
    patches = grid[0] * grid[1] * grid[2]
    patch_dim = 3 * TEMPORAL * PATCH * PATCH
    sound = draw("sound", 1, MEL_BINS, MEL_FRAMES)
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
            "input_features": sound if run.audio == "own" else torch.zeros_like(sound),
            "feature_attention_mask": torch.ones(1, MEL_FRAMES, dtype=torch.long),
            "pixel_values_videos": pictures[run.picture],
            "video_grid_thw": torch.tensor([grid]),
            "video_second_per_grid": torch.tensor([1.0]),
        }
    audio_id, visual_id = (int(a) for a in answers)
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
