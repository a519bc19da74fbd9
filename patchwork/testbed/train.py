"""The two-stage training recipe of the testbed model.

- Stage 1, vision-language base: audio is always silence; asked what it hears, the model learns
  to name the pictured category's sound; asked what it sees, its name.
- Stage 2, audio-visual tuning, from stage 1: real sounds are added. Clips are congruent (sound
  and picture agree), audio-only (blank picture, ``audio_only`` of them), vision-only (silence,
  ``vision_only``) and — the *audio supervision* — conflicting (``audio_supervision`` of them:
  sound A, picture B, "hear" labelled A). With little or no conflict supervision the model can
  answer "hear" from the picture whenever there is one: vision dominance.

Loss: cross-entropy of the answer token after the prompt's last position. Training media come
from banks of synthesized clips (in memory, quantized like a 16-bit wav) drawn from streams
distinct from :func:`patchwork.testbed.samples.make_samples`, so evaluation is held out.
Deterministic for a seed and a thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchwork.data import media
from patchwork.models import blocks
from patchwork.testbed import model as testbed_model
from patchwork.testbed import windows, world

_TRAIN_STREAM = 7


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (written into the checkpoint's json)."""

    seed: int = 0
    stage1_steps: int = 150
    stage2_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 2e-3
    audio_supervision: float = 0.0  # fraction of stage-2 clips that conflict, labelled by sound
    audio_only: float = 0.2
    vision_only: float = 0.1
    empty: float = 0.03  # silence + blank picture -> "nothing"
    hear_fraction: float = 0.7  # questions "what do you hear" vs "what do you see"
    variants: int = 48  # synthesized clips / pictures per category in the training banks
    video_access_layers: tuple[int, int] | None = None
    audio_access_layers: tuple[int, int] | None = None
    #: (layer, query head) pairs: the only heads through which the answer reads video.
    video_access_heads: tuple[tuple[int, int], ...] | None = None


@dataclass
class Banks:
    """Training media as model inputs: sounds (C, V, 32, 40) log-mel, pictures (C, V, 64, 96)
    patches, plus the silence features (32, 40) and blank-picture patches (64, 96)."""

    sounds: torch.Tensor
    pictures: torch.Tensor
    silence: torch.Tensor
    blank: torch.Tensor


def build_banks(seed: int, variants: int) -> Banks:
    n_kinds = len(world.CATEGORIES)

    def stream(kind: int, variant: int, medium: int) -> np.random.Generator:
        return np.random.default_rng([seed, kind, variant, _TRAIN_STREAM, medium])

    clips = [
        world.as_pcm16(world.synthesize_sound(c.timbre, stream(k, v, 1)))
        for k, c in enumerate(world.CATEGORIES)
        for v in range(variants)
    ]
    sounds = _features(clips).reshape(n_kinds, variants, testbed_model.N_MELS, -1)
    frames = [
        world.draw_picture(c, stream(k, v, 2))
        for k, c in enumerate(world.CATEGORIES)
        for v in range(variants)
    ]
    pictures = torch.stack([_patches(f) for f in frames])
    return Banks(
        sounds=sounds,
        pictures=pictures.reshape(n_kinds, variants, *pictures.shape[1:]),
        silence=_features([world.silence()])[0],
        blank=_patches(world.blank_picture()),
    )


def _features(clips: list[np.ndarray]) -> torch.Tensor:
    return media.audio_features(clips, testbed_model.N_MELS, testbed_model.MEL_FRAMES)[
        "input_features"
    ]


def _patches(frame: np.ndarray) -> torch.Tensor:
    return media.video_patches(
        frame[None], testbed_model.PATCH, testbed_model.TEMPORAL_PATCH, testbed_model.MERGE
    )["pixel_values_videos"]


class BatchMaker:
    """Draws training batches: each row a clip kind, categories, variants and a question."""

    def __init__(self, banks: Banks, tokenizer, config: TrainConfig, stage: int):
        self.banks, self.config, self.stage = banks, config, stage
        self.rng = np.random.default_rng([config.seed, stage, _TRAIN_STREAM, 99])
        self.prompts = {q: testbed_model.prompt_ids(tokenizer, q) for q in world.QUESTIONS}
        self.words = {w: testbed_model.word_id(tokenizer, w) for w in testbed_model.vocabulary()}
        if stage == 1:
            self.kinds = {"vision_only": 1 - config.empty, "empty": config.empty}
        else:
            rest = (
                1 - config.audio_supervision - config.audio_only - config.vision_only - config.empty
            )
            if rest < 0:
                raise ValueError("stage-2 clip fractions add up to more than 1")
            self.kinds = {
                "congruent": rest,
                "conflict": config.audio_supervision,
                "audio_only": config.audio_only,
                "vision_only": config.vision_only,
                "empty": config.empty,
            }

    def __call__(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One batch: the thinker's kwargs and the answer token ids (batch,)."""
        rng, banks, n_kinds = self.rng, self.banks, len(world.CATEGORIES)
        names = list(self.kinds)
        probabilities = np.array([self.kinds[k] for k in names])
        rows, sounds, pictures, answers = [], [], [], []
        for _ in range(self.config.batch_size):
            kind = names[rng.choice(len(names), p=probabilities / probabilities.sum())]
            a = int(rng.integers(n_kinds))
            b = int((a + rng.integers(1, n_kinds)) % n_kinds)
            sound_variant, picture_variant = rng.integers(banks.sounds.shape[1], size=2)
            hear = bool(rng.random() < self.config.hear_fraction)
            heard = a if kind in ("congruent", "conflict", "audio_only") else None
            seen = {"congruent": a, "conflict": b, "vision_only": a}.get(kind)
            sounds.append(banks.sounds[a, sound_variant] if heard is not None else banks.silence)
            pictures.append(
                banks.pictures[seen, picture_variant] if seen is not None else banks.blank
            )
            if hear:  # the sound if there is one, else the pictured thing's sound
                source = heard if heard is not None else seen
                word = world.CATEGORIES[source].sound if source is not None else world.NOTHING
            else:
                word = world.CATEGORIES[seen].name if seen is not None else world.NOTHING
            rows.append(self.prompts[world.QUESTIONS[0 if hear else 1]])
            answers.append(self.words[word])
        input_ids = torch.tensor(rows)
        n = len(rows)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "input_features": torch.stack(sounds),
            "feature_attention_mask": torch.ones(n, testbed_model.MEL_FRAMES, dtype=torch.long),
            "pixel_values_videos": torch.cat(pictures),
            "video_grid_thw": torch.tensor(
                [
                    [
                        1,
                        world.FRAME_SIZE // testbed_model.PATCH,
                        world.FRAME_SIZE // testbed_model.PATCH,
                    ]
                ]
                * n
            ),
            "video_second_per_grid": torch.ones(n),
        }
        return inputs, torch.tensor(answers)


def run_stage(
    model: torch.nn.Module,
    batches: BatchMaker,
    steps: int,
    learning_rate: float,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Train ``steps`` AdamW steps (warm-up 10%, cosine to 10%); returns the loss per step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses, started = [], time.time()
    for step in range(steps):
        inputs, answers = batches()
        logits = model(**inputs).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, answers)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 25 == 0 or step == steps - 1:
            accuracy = float((logits.argmax(-1) == answers).float().mean())
            log(
                f"stage {batches.stage} step {step + 1}/{steps} loss {np.mean(losses[-25:]):.3f} "
                f"batch acc {accuracy:.2f} ({time.time() - started:.0f}s)"
            )
    model.eval()
    return losses


def train(
    out: Path,
    config: TrainConfig,
    base_out: Path | None = None,
    from_base: Path | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> Path:
    """Run the recipe and write the stage-2 checkpoint to ``out`` (stage 1 to ``base_out``).

    With ``from_base`` stage 1 is skipped and its checkpoint loaded instead (same seed and
    windows give the same base as training it again); stage 2 trains with ``config``'s windows,
    not the base's, and the checkpoint declares those.
    """
    tokenizer = testbed_model.build_tokenizer()
    torch.manual_seed(config.seed)
    started = time.time()
    banks = build_banks(config.seed, config.variants)
    log(f"media banks ready ({time.time() - started:.0f}s)")
    window_meta = {
        "video_access_layers": config.video_access_layers,
        "audio_access_layers": config.audio_access_layers,
        "video_access_heads": config.video_access_heads,
    }
    if from_base is not None:
        model, tokenizer = testbed_model.load(from_base)
        installed = getattr(model, "_patchwork_attention_blocks", None)
        if installed is not None:  # the base's own windows: stage 2 trains with the requested
            installed.remove()
        _install_windows(model, window_meta)
    else:
        model = testbed_model.build_model(tokenizer, config.seed)
        _install_windows(model, window_meta)
        torch.manual_seed(config.seed)
        losses = run_stage(
            model,
            BatchMaker(banks, tokenizer, config, 1),
            config.stage1_steps,
            config.learning_rate,
            log,
        )
        if base_out is not None:
            testbed_model.save(
                model,
                tokenizer,
                base_out,
                _meta(config, 1, window_meta, command, losses, time.time() - started),
            )
    torch.manual_seed(config.seed + 1)
    losses = run_stage(
        model,
        BatchMaker(banks, tokenizer, config, 2),
        config.stage2_steps,
        config.learning_rate,
        log,
    )
    return testbed_model.save(
        model, tokenizer, out, _meta(config, 2, window_meta, command, losses, time.time() - started)
    )


def _install_windows(model: Any, window_meta: dict) -> None:
    """Make the planted windows of ``window_meta`` active while the model trains."""
    text_config = model.config.text_config
    rules = windows.rules_from_meta(
        window_meta, text_config.num_hidden_layers, text_config.num_attention_heads
    )
    if rules:
        blocks.install(model, rules, blocks.modality_token_ids(model.config))


def _meta(
    config: TrainConfig,
    stage: int,
    window_meta: dict,
    command: str,
    losses: list[float],
    seconds: float,
) -> dict:
    return {
        "format": 1,
        "stage": stage,
        "windows": window_meta if any(window_meta.values()) else None,
        "categories": [asdict(c) for c in world.CATEGORIES],
        "train_config": asdict(config),
        "command": command,
        "final_loss": float(np.mean(losses[-25:])) if losses else None,
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }
