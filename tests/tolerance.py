"""Tolerances that follow the magnitude of what they compare."""

from __future__ import annotations


def normalized_effect_tolerance(logit_tolerance: float, normalized: float, gap: float) -> float:
    """Absolute tolerance of ``(patched − conflict) / gap`` when each logit difference is known to
    ``logit_tolerance``: the error grows as the clean − conflict gap shrinks, so a fixed tolerance
    is either loose on wide gaps or flaky on narrow ones."""
    return 2 * logit_tolerance * (1 + abs(normalized)) / abs(gap)
