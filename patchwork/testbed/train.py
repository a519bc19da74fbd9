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

With ``stop_at_targets`` stage 2 runs until the model is an organism: every ``check_every``
steps a validation split (clips from a third media stream, neither training nor evaluation)
measures congruent "hear" accuracy, audio-only accuracy and the picture's share of conflicting
clips, and training stops at the first check that meets :data:`TARGETS` by ``margin``; at the
step cap without it (or at the opt-in ``time_budget``, wall clock, which makes the outcome depend
on the machine's load), :class:`TrainingError` says how close it came. Learning
to hear is a sudden jump after a plateau, and the picture's share then drifts down with more
steps, so a fixed step count that works for one window misses for another (issue #19).
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
from patchwork.errors import TrainingError
from patchwork.models import blocks
from patchwork.testbed import model as testbed_model
from patchwork.testbed import windows, world

_TRAIN_STREAM = 7
_VALID_STREAM = 8

#: What makes the testbed an organism (held-out, "what do you hear"): it hears (congruent and
#: audio-only clips) and yet names the picture's sound in most conflicts.
TARGETS = {"congruent": 0.95, "audio_only": 0.90, "picture_share": 0.60}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (written into the checkpoint's json)."""

    seed: int = 0
    stage1_steps: int = 150
    stage2_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 2e-3
    audio_supervision: float = 0.0  # fraction of stage-2 clips that conflict, labelled by sound
    #: Fraction of stage-2 clips that conflict, "hear" labelled with the *picture's* sound:
    #: vision dominance planted instead of left to emerge (the planted-window recipe).
    picture_supervision: float = 0.0
    #: Curriculum: the first stage-2 steps draw 60% audio-only clips and no conflicts, so the
    #: model learns to hear before the planted dominance (picture_supervision) sets in.
    audio_first_steps: int = 0
    audio_only: float = 0.2
    vision_only: float = 0.1
    empty: float = 0.03  # silence + blank picture -> "nothing"
    hear_fraction: float = 0.7  # questions "what do you hear" vs "what do you see"
    variants: int = 48  # synthesized clips / pictures per category in the training banks
    #: Inclusive (first, last) layers where text reads video (audio), or several such spans.
    video_access_layers: windows.Spans | None = None
    audio_access_layers: windows.Spans | None = None
    #: (layer, query head) pairs: the only heads through which the answer reads video.
    video_access_heads: tuple[tuple[int, int], ...] | None = None
    #: Stage 2 stops at the first validation check meeting TARGETS + margin (stage2_steps caps it).
    stop_at_targets: bool = False
    check_every: int = 50
    decay_steps: int = 600  # stopping at targets: the cosine reaches 10% here and stays
    margin: float = 0.03
    validation_clips: int = 200  # per kind
    #: Opt-in wall-clock limit (seconds, the whole run); None: only the step cap (deterministic).
    time_budget: float | None = None
    #: Clips laid out as a video whose soundtrack is interleaved with its frames (Qwen2.5-Omni's
    #: ``use_audio_in_video``; :func:`~patchwork.testbed.model.prompt_ids`), in both stages.
    audio_in_video: bool = False


@dataclass
class Banks:
    """Training media as model inputs: sounds (C, V, 32, 40) log-mel, pictures (C, V, P, 96)
    patches (P = 64 per 2 frames), plus the silence features (32, 40) and blank-picture patches
    (P, 96)."""

    sounds: torch.Tensor
    pictures: torch.Tensor
    silence: torch.Tensor
    blank: torch.Tensor


def build_banks(
    seed: int, variants: int, stream: int = _TRAIN_STREAM, audio_in_video: bool = False
) -> Banks:
    """Media of ``variants`` clips and pictures per category from the generator ``stream``
    (training; validation draws from another); ``audio_in_video``: each picture held for
    :data:`~patchwork.testbed.model.INTERLEAVED_FRAMES` frames."""
    n_kinds = len(world.CATEGORIES)
    frames_per_clip = testbed_model.INTERLEAVED_FRAMES if audio_in_video else 1

    def drawn(kind: int, variant: int, medium: int) -> np.random.Generator:
        return np.random.default_rng([seed, kind, variant, stream, medium])

    clips = [
        world.as_pcm16(world.synthesize_sound(c.timbre, drawn(k, v, 1)))
        for k, c in enumerate(world.CATEGORIES)
        for v in range(variants)
    ]
    sounds = _features(clips).reshape(n_kinds, variants, testbed_model.N_MELS, -1)
    frames = [
        world.draw_picture(c, drawn(k, v, 2))
        for k, c in enumerate(world.CATEGORIES)
        for v in range(variants)
    ]
    pictures = torch.stack([_patches(f, frames_per_clip) for f in frames])
    return Banks(
        sounds=sounds,
        pictures=pictures.reshape(n_kinds, variants, *pictures.shape[1:]),
        silence=_features([world.silence()])[0],
        blank=_patches(world.blank_picture(), frames_per_clip),
    )


def _features(clips: list[np.ndarray]) -> torch.Tensor:
    return media.audio_features(clips, testbed_model.N_MELS, testbed_model.MEL_FRAMES)[
        "input_features"
    ]


def _patches(frame: np.ndarray, copies: int = 1) -> torch.Tensor:
    return media.video_patches(
        np.repeat(frame[None], copies, axis=0),
        testbed_model.PATCH,
        testbed_model.TEMPORAL_PATCH,
        testbed_model.MERGE,
    )["pixel_values_videos"]


class BatchMaker:
    """Draws training batches: each row a clip kind, categories, variants and a question."""

    def __init__(
        self, banks: Banks, tokenizer, config: TrainConfig, stage: int, stream: int = _TRAIN_STREAM
    ):
        self.banks, self.config, self.stage = banks, config, stage
        self.rng = np.random.default_rng([config.seed, stage, stream, 99])
        self.prompts = {
            q: testbed_model.prompt_ids(tokenizer, q, config.audio_in_video)
            for q in world.QUESTIONS
        }
        self.words = {w: testbed_model.word_id(tokenizer, w) for w in testbed_model.vocabulary()}
        if stage == 1:
            self.kinds = {"vision_only": 1 - config.empty, "empty": config.empty}
        else:
            fractions = {
                "conflict": config.audio_supervision,
                "audio_only": config.audio_only,
                "vision_only": config.vision_only,
                "empty": config.empty,
            }
            if config.picture_supervision:  # only then: the shipped recipes draw as before
                fractions["picture_conflict"] = config.picture_supervision
            rest = 1 - sum(fractions.values())
            if rest < 0:
                raise ValueError("stage-2 clip fractions add up to more than 1")
            self.kinds = {"congruent": rest, **fractions}
        # the curriculum's first phase: mostly audio-only clips, no conflicts
        self.first_steps = config.audio_first_steps if stage == 2 else 0
        self.first_kinds = {"congruent": 0.25, "audio_only": 0.6, "vision_only": 0.1, "empty": 0.05}
        self.calls = 0

    def __call__(self) -> tuple[dict[str, Any], torch.Tensor]:
        """One batch: the thinker's kwargs and the answer token ids (batch,)."""
        kinds_now = self.first_kinds if self.calls < self.first_steps else self.kinds
        self.calls += 1
        names = list(kinds_now)
        probabilities = np.array([kinds_now[k] for k in names])
        kinds = []
        for _ in range(self.config.batch_size):
            kind = names[self.rng.choice(len(names), p=probabilities / probabilities.sum())]
            kinds.append((kind, *self._draw()))
        return self._batch(kinds)

    def clips(self, kind: str, n: int) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """``n`` clips of one kind, all asked "what do you hear": kwargs, the answer ids, and the
        ids of the picture's sound (for conflicts; else the answer's)."""
        drawn = [(kind, *self._draw()[:3], True) for _ in range(n)]
        inputs, answers = self._batch(drawn)
        pictured = [self.words[world.CATEGORIES[b].sound] for _, _, b, *_ in drawn]
        conflicting = kind in ("conflict", "picture_conflict")
        return inputs, answers, torch.tensor(pictured) if conflicting else answers

    def _draw(self) -> tuple[int, int, tuple[int, int], bool]:
        """Categories a and b ≠ a, sound and picture variants, whether the question is "hear"."""
        rng, n_kinds = self.rng, len(world.CATEGORIES)
        a = int(rng.integers(n_kinds))
        b = int((a + rng.integers(1, n_kinds)) % n_kinds)
        sound_variant, picture_variant = rng.integers(self.banks.sounds.shape[1], size=2)
        hear = bool(rng.random() < self.config.hear_fraction)
        return a, b, (int(sound_variant), int(picture_variant)), hear

    def _batch(self, drawn: list) -> tuple[dict[str, Any], torch.Tensor]:
        banks = self.banks
        rows, sounds, pictures, answers = [], [], [], []
        for kind, a, b, (sound_variant, picture_variant), hear in drawn:
            heard = (
                a if kind in ("congruent", "conflict", "picture_conflict", "audio_only") else None
            )
            seen = {"congruent": a, "conflict": b, "picture_conflict": b, "vision_only": a}.get(
                kind
            )
            sounds.append(banks.sounds[a, sound_variant] if heard is not None else banks.silence)
            pictures.append(
                banks.pictures[seen, picture_variant] if seen is not None else banks.blank
            )
            if hear:  # the sound if there is one, else (and for picture_conflict) the picture's
                source = heard if heard is not None and kind != "picture_conflict" else seen
                word = world.CATEGORIES[source].sound if source is not None else world.NOTHING
            else:
                word = world.CATEGORIES[seen].name if seen is not None else world.NOTHING
            rows.append(self.prompts[world.QUESTIONS[0 if hear else 1]])
            answers.append(self.words[word])
        input_ids = torch.tensor(rows)
        n = len(rows)
        interleaved = self.config.audio_in_video
        side = world.FRAME_SIZE // testbed_model.PATCH
        grid_steps = testbed_model.INTERLEAVED_FRAMES // testbed_model.TEMPORAL_PATCH
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "input_features": torch.stack(sounds),
            "feature_attention_mask": torch.ones(n, testbed_model.MEL_FRAMES, dtype=torch.long),
            "pixel_values_videos": torch.cat(pictures),
            "video_grid_thw": torch.tensor([[grid_steps if interleaved else 1, side, side]] * n),
            "video_second_per_grid": torch.full(
                (n,), testbed_model.SECONDS_PER_GRID if interleaved else 1.0
            ),
        }
        if interleaved:  # the thinker's own rope index for this layout
            inputs["use_audio_in_video"] = True
        return inputs, torch.tensor(answers)


def run_stage(
    model: torch.nn.Module,
    batches: BatchMaker,
    steps: int,
    learning_rate: float,
    log: Callable[[str], None] = print,
    check: Callable[[int], bool] | None = None,
    check_every: int = 50,
    schedule_steps: int | None = None,
) -> list[float]:
    """Train up to ``steps`` AdamW steps; returns the loss per step. The learning rate warms up
    over 10% of ``schedule_steps`` (default ``steps``), decays by a cosine to 10% at
    ``schedule_steps`` and stays there. ``check(step)``, called every ``check_every`` steps in
    eval mode, stops training by returning True."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    length = steps if schedule_steps is None else schedule_steps
    warmup = max(1, length // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, length - warmup))
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
        if check is not None and (step + 1) % check_every == 0:
            model.eval()
            if check(step + 1):
                break
            model.train()
    model.eval()
    return losses


class Validation:
    """The validation split of :data:`TARGETS`: ``config.validation_clips`` congruent,
    audio-only and conflicting clips asked "what do you hear", from media banks of their own
    stream; :meth:`__call__` measures ``model`` on it (the training model, as it is at each
    check) and records each check in ``history`` (seconds counted from ``started``)."""

    def __init__(
        self, model: torch.nn.Module, tokenizer, config: TrainConfig, started: float, log=print
    ):
        banks = build_banks(config.seed, 24, _VALID_STREAM, config.audio_in_video)
        maker = BatchMaker(banks, tokenizer, config, stage=2, stream=_VALID_STREAM)
        n = config.validation_clips
        self.sets = {kind: maker.clips(kind, n) for kind in ("congruent", "audio_only", "conflict")}
        self.model, self.config, self.started, self.log = model, config, started, log
        self.history: list[dict[str, float]] = []

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Congruent and audio-only accuracy and the conflicts' picture share."""
        rates = {}
        with torch.no_grad():
            for kind, (inputs, answers, pictured) in self.sets.items():
                predicted = model(**inputs).logits[:, -1].argmax(-1)
                truth = pictured if kind == "conflict" else answers
                name = "picture_share" if kind == "conflict" else kind
                rates[name] = float((predicted == truth).float().mean())
        return rates

    def met(self, rates: dict[str, float]) -> bool:
        return all(rates[name] >= target + self.config.margin for name, target in TARGETS.items())

    def __call__(self, step: int) -> bool:
        rates = self.measure(self.model)
        seconds = time.time() - self.started
        self.history.append({"step": step, **rates, "seconds": round(seconds, 1)})
        shown = ", ".join(f"{name} {value:.2f}" for name, value in rates.items())
        self.log(f"check at step {step}: {shown}")
        if self.met(rates):
            return True
        budget = self.config.time_budget
        return budget is not None and seconds > budget

    def failure(self, steps: int) -> TrainingError:
        """The error for a stage 2 that ended without meeting the targets."""
        best = max(
            self.history or [{"step": 0, **dict.fromkeys(TARGETS, 0.0)}],
            key=lambda check: sum(min(check[n] - t, 0) for n, t in TARGETS.items()),
        )
        wanted = ", ".join(f"{n} >= {t + self.config.margin:.2f}" for n, t in TARGETS.items())
        shown = ", ".join(f"{n} {best[n]:.2f}" for n in TARGETS)
        limit = (
            f"{self.config.time_budget:.0f} s"
            if self.config.time_budget is not None
            and self.history
            and self.history[-1]["seconds"] > self.config.time_budget
            else f"{steps} stage-2 steps"
        )
        return TrainingError(
            f"stage 2 did not meet the targets ({wanted}, on {self.config.validation_clips} "
            f"validation clips per kind) within {limit}; closest, at step {best['step']}: {shown}. "
            "Give it more --stage2-steps or --time-budget, or another --seed"
        )


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
    banks = build_banks(config.seed, config.variants, audio_in_video=config.audio_in_video)
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
    validation = (
        Validation(model, tokenizer, config, started, log) if config.stop_at_targets else None
    )
    torch.manual_seed(config.seed + 1)
    losses = run_stage(
        model,
        BatchMaker(banks, tokenizer, config, 2),
        config.stage2_steps,
        config.learning_rate,
        log,
        check=validation,
        check_every=config.check_every,
        schedule_steps=config.decay_steps if config.stop_at_targets else None,
    )
    meta = _meta(config, 2, window_meta, command, losses, time.time() - started)
    if validation is not None:
        if not validation.history or validation.history[-1]["step"] != len(losses):
            validation(len(losses))  # the weights written are the weights checked
        if not validation.met(validation.history[-1]):
            raise validation.failure(len(losses))
        meta["validation"] = {"targets": TARGETS, "checks": validation.history}
    meta["stage2_steps_run"] = len(losses)
    return testbed_model.save(model, tokenizer, out, meta)


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
        "audio_in_video": config.audio_in_video,
        "categories": [asdict(c) for c in world.CATEGORIES],
        "train_config": asdict(config),
        "command": command,
        "final_loss": float(np.mean(losses[-25:])) if losses else None,
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }
