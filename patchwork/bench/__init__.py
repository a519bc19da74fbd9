"""A ground-truth benchmark for audio-visual interpretability methods: small model organisms with
the picture's route planted where it is known, and every method graded on how well it recovers it.

Organisms (:data:`SUITE`): the shipped ``testbed-windowed`` (the text reads video only in layers
4–5) and ``testbed-heads`` (the answer reads it only through heads 4:1 and 4:3), windows at other
depths and widths trained by the stopping recipe (cached under the output folder), and a control
without suppression (trained with a third of the conflicts labelled with their sound: the picture
does not win, so there is nothing to find).

Grades, per organism and method (:func:`grade`):

- window organisms, activation patching of the answer position's residual stream (``exact``,
  ``attribution``, ``attribution+verify``): :func:`~patchwork.analysis.windows.locate`'s status
  and window, the *error* in layers (how many located layers lie outside the planted window; 0 =
  recovered exactly), and the *AUROC* of each clip's per-layer steps of the restored answer
  against the planted layers (mean over clips);
- window organisms, attention knockout: the recovery (normalized effect) when the text's access
  to the picture is blocked inside the planted window, and outside it (by construction ≈ 0);
- head organisms: head patching and single-head knockout graded by
  :func:`~patchwork.analysis.ground_truth.planted_recovery` (clips whose first-ranked head is
  planted, the planted heads' share of the restoration);
- the control: ``nothing`` when ``locate`` finds no window (or no clip has a gap worth a
  normalized effect), ``spurious`` otherwise.

:func:`run_bench` writes ``bench.zarr`` (an :class:`xarray.Dataset`) and a
figure into the output folder (dimensions ``organism`` and ``technique``: the method graded).
"""

from __future__ import annotations

from patchwork.bench.suite import SUITE, Organism, grade, run_bench

__all__ = ["SUITE", "Organism", "grade", "run_bench"]
