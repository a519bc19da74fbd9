"""A ground-truth benchmark for audio-visual interpretability methods: small model organisms with
the picture's route planted where it is known, and every method graded on how well it recovers it.

Organisms (:data:`SUITE`): the shipped ``testbed-windowed`` (the text reads video only in layers
4–5) and ``testbed-heads`` (the answer reads it only through heads 4:1 and 4:3); windows at other
depths and widths, two separated windows, heads in two layers and a window on clips whose sound is
interleaved with the frames (audio in video), trained by the stopping recipe (cached under the
output folder); the audio side — the same models studied with a sound swap,
graded against their planted audio windows (``swap="sound"``); and two controls: ``control``
(``testbed-windowed``, whose picture wins every conflict, patched at its audio positions — they
come before the video, so patching them can restore nothing) and ``sound wins`` (trained with a
third of the conflicts labelled with their sound: no clip has a suppression to undo).

Which clips count (:func:`~patchwork.bench.suite.usable_mask`): those whose clean run prefers the
audio answer and whose conflict run the picture's, by a gap worth a ratio; a grade read from
fewer than :data:`~patchwork.bench.suite.MIN_USABLE` of them is ``untestable``, never a pass.

Grades, per organism and method (:func:`grade`):

- window organisms, activation patching of the answer position's residual stream (the text and
  answer positions together on the audio side; ``exact``, ``attribution``, ``attribution+verify``),
  :func:`~patchwork.analysis.windows.locate`'s status and windows, the *error* in layers
  (:func:`~patchwork.bench.suite.window_error`: located layers outside the planted spans, and
  spans no located window touches; 0 = recovered exactly) with its interval over resampled clips,
  and the *AUROC* of each
  clip's per-layer steps of the restored answer against the planted layers (mean over clips; ties
  within :data:`~patchwork.analysis.ground_truth.TIE_TOLERANCE` count half);
- window organisms, attention knockout: the recovery (normalized effect) when the text's access
  to the picture is blocked inside the planted window, and outside it (by construction ≈ 0);
- window organisms, the logit lens at the answer position, one study per run: the first layer at
  which the conflict run's lens preference (log p(visual) − log p(audio)) departs from the clean
  run's by more than a floor or a hundredth of the clip's gap
  (:func:`~patchwork.bench.lens.lens_departure`) — before the window the two runs' residual
  streams there are the same — and ``lens_error``, its distance in layers from the planted
  window's first layer (mean over clips);
- head organisms: head patching and single-head knockout graded by
  :func:`~patchwork.analysis.ground_truth.planted_recovery` (clips whose first-ranked head is
  planted, the planted heads' share of the restoration); path patching (the video positions'
  residual after each layer → each later head's values) over paths, a path planted when its
  receiver is a planted head (:func:`~patchwork.analysis.ground_truth.planted_path_recovery`);
- controls: ``nothing`` when ``locate`` finds no window, ``spurious`` when it finds one;
- every ranking of cells (layers, heads) on the organisms with a truth: faithfulness curves and
  their areas ``cpr``, ``cmd``, ``bottom_area`` (:mod:`patchwork.bench.faithfulness`), beside the
  planted truth's own.

Every grade read from clips has a 95% interval over them (``NAME_low``, ``NAME_high``: the
percentile bootstrap of whole clips), the faithfulness areas included.

:func:`run_bench` writes ``bench.zarr`` (an :class:`xarray.Dataset`: dimensions ``organism`` and
``technique``, the method graded; the curves also over ``ranked`` and ``k``), ``bench.png`` and
``faithfulness.png`` into the output folder.
"""

from __future__ import annotations

from patchwork.bench.figures import grade_frame, reference_lines
from patchwork.bench.run import run_bench
from patchwork.bench.suite import MIN_USABLE, SUITE, Organism, grade

__all__ = [
    "MIN_USABLE",
    "SUITE",
    "Organism",
    "grade",
    "grade_frame",
    "reference_lines",
    "run_bench",
]
