"""Measure the testbed model: the behaviour table and linear probes of the sound category.

Behaviour table: held-out samples from :func:`~patchwork.testbed.samples.make_samples` (media
through files), four clip kinds × two questions. ``accuracy`` is the share of answers that name
what is really there — for "hear": the sound (A's sound; for vision-only clips, silence, the
pictured A's sound, as in training); for "see": what is pictured ("nothing" for a blank picture).
For conflicting clips ``picture_share`` is the share that names the *picture's* sound (or object):
vision dominance for "hear".

Probes: the residual stream (hidden states after each decoder layer; index 0 = embeddings) of
conflicting clips, at the audio positions (mean over them) and at the answer position, decoding
the *sound's* category with the probe a caller passes (``patchwork testbed eval --probes`` passes
the analysis's cross-validated probe, :func:`patchwork.analysis.probes.probe_accuracy`, the one
every probes study uses).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from patchwork.data.sample import Sample
from patchwork.testbed import world
from patchwork.testbed.samples import collate, make_samples

KINDS = {
    "congruent": {"audio": "own", "picture": "own"},
    "conflict": {"audio": "own", "picture": "other_category"},
    "audio_only": {"audio": "own", "picture": "blank"},
    "vision_only": {"audio": "silence", "picture": "own"},
}
EVAL_SEED = 20_000  # held-out: training draws from other streams


def forward_inputs(model: Any, runs: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """The forward's kwargs for ``runs`` stacked into one batch: with ``use_audio_in_video``
    where the ids show the interleaved layout, as the family's adapter decides it for a study."""
    from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter

    return Qwen25OmniAdapter(model).forward_kwargs(collate(runs))


def predictions(
    model: Any, runs: Sequence[Mapping[str, torch.Tensor]], batch_size: int = 64
) -> torch.Tensor:
    """Argmax next-token ids (n_runs,) after each run's last prompt position."""
    answers = []
    with torch.no_grad():
        for start in range(0, len(runs), batch_size):
            logits = model(**forward_inputs(model, runs[start : start + batch_size])).logits[:, -1]
            answers.append(logits.argmax(-1))
    return torch.cat(answers)


def behaviour_table(
    model: torch.nn.Module,
    checkpoint_dir: Path,
    n: int = 100,
    seed: int = EVAL_SEED,
    media_dir: Path | None = None,
    questions: Sequence[str] = world.QUESTIONS,
) -> pd.DataFrame:
    """One row per (question, kind): n, accuracy, picture_share (conflicts), sound_share."""
    rows = []
    for question in questions:
        with tempfile.TemporaryDirectory(prefix="testbed-eval-", dir=media_dir) as folder:
            samples = make_samples(checkpoint_dir, n, seed, KINDS, question, Path(folder))
        nothing = _word_id(checkpoint_dir, world.NOTHING)
        for kind in KINDS:
            predicted = predictions(model, [s.runs[kind] for s in samples])
            sound = torch.tensor([s.audio_answer_id for s in samples])
            picture = torch.tensor([s.visual_answer_id for s in samples])
            truth = _truth(kind, question, sound, picture, nothing)
            rows.append(
                {
                    "question": question,
                    "kind": kind,
                    "n": n,
                    "accuracy": float((predicted == truth).float().mean()),
                    "sound_share": float((predicted == sound).float().mean()),
                    "picture_share": float((predicted == picture).float().mean())
                    if kind == "conflict"
                    else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def _truth(kind: str, question: str, own: torch.Tensor, other: torch.Tensor, nothing: int):
    if "see" in question.split():
        if kind == "conflict":
            return other
        if kind == "audio_only":
            return torch.full_like(own, nothing)
    return own


def _word_id(checkpoint_dir: Path, word: str) -> int:
    from tokenizers import Tokenizer

    from patchwork.testbed.model import word_id

    return word_id(Tokenizer.from_file(str(Path(checkpoint_dir) / "tokenizer.json")), word)


def residual_features(
    model: Any, samples: Sequence[Sample], run: str = "conflict", batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual stream of ``run`` per layer: (audio_mean, answer), each (n, layers + 1, hidden)."""
    audio_token = model.config.audio_token_index
    audio_mean, answer = [], []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            inputs = forward_inputs(
                model, [s.runs[run] for s in samples[start : start + batch_size]]
            )
            hidden = torch.stack(model(**inputs, output_hidden_states=True).hidden_states, 1)
            is_audio = inputs["input_ids"].eq(audio_token).float()[:, None, :, None]
            audio_mean.append((hidden * is_audio).sum(2) / is_audio.sum(2))
            answer.append(hidden[:, :, -1])
    return torch.cat(audio_mean), torch.cat(answer)


def probe_table(
    model: torch.nn.Module,
    checkpoint_dir: Path,
    accuracy: Callable[[np.ndarray, np.ndarray], float],
    n: int = 300,
    seed: int = EVAL_SEED + 1,
    media_dir: Path | None = None,
) -> pd.DataFrame:
    """Per layer: probe accuracy for the sound's category at audio positions and at the answer
    position of conflicting clips (chance = 1 / number of categories). ``accuracy(features,
    labels)`` is the probe: the analysis's cross-validated one
    (:func:`patchwork.analysis.probes.probe_accuracy`), the same as for a study's probes."""
    with tempfile.TemporaryDirectory(prefix="testbed-probe-", dir=media_dir) as folder:
        samples = make_samples(
            checkpoint_dir,
            n,
            seed,
            {"conflict": KINDS["conflict"]},
            world.QUESTIONS[0],
            Path(folder),
        )
    names = [c.name for c in world.CATEGORIES]
    labels = np.array([names.index(s.meta["audio_category"]) for s in samples])
    audio_mean, answer = (features.numpy() for features in residual_features(model, samples))
    rows = [
        {
            "layer": layer,
            "audio_positions": accuracy(audio_mean[:, layer], labels),
            "answer_position": accuracy(answer[:, layer], labels),
        }
        for layer in range(audio_mean.shape[1])
    ]
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> dict[str, float]:
    """The acceptance numbers from a behaviour table."""
    hear = table[table.question == world.QUESTIONS[0]].set_index("kind")
    return {
        "congruent_hear": float(hear.loc["congruent", "accuracy"]),
        "audio_only_hear": float(hear.loc["audio_only", "accuracy"]),
        "conflict_picture_share": float(hear.loc["conflict", "picture_share"]),
        "conflict_sound_share": float(hear.loc["conflict", "sound_share"]),
        "vision_only_hear": float(hear.loc["vision_only", "accuracy"]),
    }


def answer_patching_sweep(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    source: str = "clean",
    target: str = "conflict",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Per decoder layer: share of ``target`` runs answering the sound after the answer position's
    residual stream (that layer's output) is replaced by the ``source`` run's.

    A quick localization check of where the picture overrides the sound (the full sweeps live in
    :mod:`patchwork.methods`).
    """
    from patchwork.models.blocks import decoder_layers

    layers = decoder_layers(model)
    sound = torch.tensor([s.audio_answer_id for s in samples])
    shares = []
    for index, layer in enumerate(layers):
        predicted = []
        for start in range(0, len(samples), batch_size):
            block = samples[start : start + batch_size]
            with torch.no_grad():
                clean = model(
                    **forward_inputs(model, [s.runs[source] for s in block]),
                    output_hidden_states=True,
                ).hidden_states[index + 1][:, -1]

                def replace(module, args, output, clean=clean):
                    patched = output.clone()
                    patched[:, -1] = clean
                    return patched

                handle = layer.register_forward_hook(replace)
                try:
                    target_inputs = forward_inputs(model, [s.runs[target] for s in block])
                    logits = model(**target_inputs).logits[:, -1]
                finally:
                    handle.remove()
            predicted.append(logits.argmax(-1))
        shares.append(float((torch.cat(predicted) == sound).float().mean()))
    return pd.DataFrame({"layer": range(len(layers)), "sound_share": shares})
