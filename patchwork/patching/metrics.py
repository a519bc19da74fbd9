"""Metrics of one forward, read at the answer position.

- ``logit_diff``: logit(audio answer) − logit(visual answer); > 0 means the sound wins.
- ``audio_probability``: softmax probability of the audio answer.
- ``normalized_effect``: (patched − conflict) / (clean − conflict) of ``logit_diff``; 0 = no
  change from the conflict run, 1 = the clean run's preference fully restored.
"""

from __future__ import annotations

import numpy as np
import torch

from patchwork.study.specs import METRICS

#: Denominators of normalized_effect smaller than this give NaN rather than a huge ratio.
MIN_GAP = 1e-6


def answer_metrics(
    answer_logits: torch.Tensor, audio_id: int | torch.Tensor, visual_id: int | torch.Tensor
) -> dict[str, torch.Tensor]:
    """``logit_diff`` and ``audio_probability`` of logits (batch, vocab), each of shape (batch,).
    The answer ids are one for every row, or one per row (tensors of shape (batch,))."""
    logits = answer_logits.to(torch.promote_types(answer_logits.dtype, torch.float32))

    def column(values: torch.Tensor, ids: int | torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            return values[:, ids]
        return values.gather(1, ids.reshape(-1, 1).to(values.device))[:, 0]

    return {
        "logit_diff": column(logits, audio_id) - column(logits, visual_id),
        "audio_probability": column(torch.softmax(logits, dim=-1), audio_id),
    }


def normalized_effect(
    patched: torch.Tensor, clean: torch.Tensor, conflict: torch.Tensor
) -> torch.Tensor:
    """(patched − conflict) / (clean − conflict), NaN where the clean–conflict gap is ~0."""
    gap = clean - conflict
    safe_gap = torch.where(gap.abs() < MIN_GAP, torch.ones_like(gap), gap)
    ratio = (patched - conflict) / safe_gap
    return torch.where(gap.abs() < MIN_GAP, torch.full_like(ratio, float("nan")), ratio)


def metric_table(
    logit_diff: torch.Tensor,
    audio_probability: torch.Tensor,
    clean_logit_diff: torch.Tensor,
    conflict_logit_diff: torch.Tensor,
) -> torch.Tensor:
    """Stack the three metrics in ``METRICS`` order along a last axis: shape (..., 3)."""
    values = {
        "logit_diff": logit_diff,
        "audio_probability": audio_probability,
        "normalized_effect": normalized_effect(logit_diff, clean_logit_diff, conflict_logit_diff),
    }
    return torch.stack([values[name] for name in METRICS], dim=-1)


def metric_rows(
    metrics: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    baseline: dict[str, torch.Tensor],
) -> np.ndarray:
    """(rows, metrics) in ``METRICS`` order of :func:`answer_metrics` results, their
    ``normalized_effect`` 1 at the ``reference`` run and 0 at the ``baseline`` run."""
    table = metric_table(
        metrics["logit_diff"],
        metrics["audio_probability"],
        reference["logit_diff"],
        baseline["logit_diff"],
    )
    return table.cpu().numpy()


def baseline_rows(
    reference: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor]
) -> np.ndarray:
    """(2, metrics): the ``reference`` and ``baseline`` runs' own rows (:func:`metric_rows`)."""
    return np.concatenate([metric_rows(run, reference, baseline) for run in (reference, baseline)])
