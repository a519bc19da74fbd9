"""The organisms of ``patchwork bench``, the studies run on each, and how each is graded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from patchwork.analysis.results import MIN_SAMPLES
from patchwork.bench.lens import lens_departure, lens_preference
from patchwork.testbed.windows import Spans, in_spans, spans_of

PATCHING_METHODS = ("exact", "attribution", "attribution+verify")
METHODS = (
    *PATCHING_METHODS,
    "knockout",
    "logit_lens",
    "head_patching",
    "head_knockout",
    "path_patching",
)
RECIPE: dict[str, Any] = {
    "stage2_steps": 3000,
    "picture_supervision": 0.1,
    "audio_first_steps": 300,
    "stop_at_targets": True,
}
#: A grade read from fewer usable clips than this is ``untestable``, never a pass: the bootstrap
#: intervals and means of :mod:`patchwork.analysis` are too rough below it.
MIN_USABLE = MIN_SAMPLES


@dataclass(frozen=True)
class Organism:
    """A model with its truth: a shipped ``checkpoint``, ``train`` options (a
    :class:`~patchwork.testbed.train.TrainConfig`'s fields, stage 2 from ``from_base`` when given)
    trained once and cached, or ``model_of``: another suite organism's model, studied for another
    truth. The truth: ``window`` (inclusive layers where the text reads the swapped medium, or
    several separated spans), ``heads`` ((layer, head) pairs through which alone the answer reads
    the picture), or neither: a control, whose patching of ``position_group`` (the group the
    patching studies patch) must find nothing. ``swap`` is the medium the counterfactual run
    changes: ``picture`` (clean: blank picture, conflict: another category's) or ``sound``
    (clean: own sound, conflict: another category's sound; blank picture in both)."""

    name: str
    checkpoint: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    from_base: str | None = None
    model_of: str | None = None
    window: Spans | None = None
    heads: tuple[tuple[int, int], ...] | None = None
    position_group: str = "answer"
    swap: str = "picture"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name).strip("-")

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """The planted window's inclusive spans, in order (none for a head organism or a
        control)."""
        return spans_of(self.window)

    @property
    def methods(self) -> tuple[str, ...]:
        if self.heads is not None:
            return ("head_patching", "head_knockout", "path_patching")
        if self.window is not None:
            return (*PATCHING_METHODS, "knockout", "logit_lens")
        return PATCHING_METHODS


def _audio_side(
    window: tuple[int, int],
    checkpoint: str | None = None,
    model_of: str | None = None,
    suffix: str = "",
) -> Organism:
    """The audio-side truth of a window organism's model (``checkpoint=`` or ``model_of=``): its
    planted audio window, graded by a sound swap that patches text and answer positions together
    (the answer also hears the sound through the text). Named by the window (and ``suffix``)."""
    first, last = window
    name = f"audio {first}" if first == last else f"audio {first}-{last}"
    return Organism(
        name + suffix,
        checkpoint=checkpoint,
        model_of=model_of,
        window=window,
        swap="sound",
        position_group="text_and_answer",
    )


SUITE: tuple[Organism, ...] = (
    Organism("window 4-5", checkpoint="testbed-windowed", window=(4, 5)),
    Organism("heads 4:1 4:3", checkpoint="testbed-heads", heads=((4, 1), (4, 3))),
    # The picture wins every conflict of testbed-windowed, but its audio positions come before the
    # video in every clip: their residual stream is the same in the clean and the conflict run,
    # so patching it can restore nothing (a null that holds exactly, yet every clip is usable).
    Organism("control", checkpoint="testbed-windowed", position_group="audio"),
    Organism(
        "window 1",
        train={**RECIPE, "video_access_layers": (1, 1), "audio_access_layers": (0, 0)},
        window=(1, 1),
    ),
    Organism(
        "window 5-6",
        train={**RECIPE, "video_access_layers": (5, 6), "audio_access_layers": (0, 3)},
        window=(5, 6),
    ),
    Organism(
        "window 2-3",
        train={**RECIPE, "video_access_layers": (2, 3), "audio_access_layers": (0, 1)},
        window=(2, 3),
    ),
    Organism(
        "window 3-6",
        train={**RECIPE, "video_access_layers": (3, 6), "audio_access_layers": (1, 2)},
        window=(3, 6),
    ),
    Organism(
        "heads 2:1 5:3",
        train={**RECIPE, "video_access_heads": ((2, 1), (5, 3))},
        heads=((2, 1), (5, 3)),
    ),
    Organism(
        "windows 1+5-6",
        train={**RECIPE, "video_access_layers": ((1, 1), (5, 6)), "audio_access_layers": (0, 0)},
        window=((1, 1), (5, 6)),
    ),
    # Clips whose soundtrack is interleaved with the frames, as Qwen2.5-Omni reads a video's
    # sound (the picture held for 4 frames: video, audio, video chunks; testbed --audio-in-video).
    Organism(
        "window 2-3 audio-in-video",
        train={
            **RECIPE,
            "video_access_layers": (2, 3),
            "audio_access_layers": (0, 1),
            "audio_in_video": True,
        },
        window=(2, 3),
    ),
    # Audio-side truth: the same models, studied with a sound swap (the picture blank in both
    # runs): the text and the answer read the sound only in the planted audio window.
    _audio_side((0, 2), checkpoint="testbed-windowed"),
    _audio_side((0, 0), model_of="window 1"),
    _audio_side((0, 1), model_of="window 2-3"),
    _audio_side((1, 2), model_of="window 3-6"),
    _audio_side((0, 3), model_of="window 5-6"),
    _audio_side((0, 1), model_of="window 2-3 audio-in-video", suffix=" audio-in-video"),
    # Trained with a third of its conflicts labelled with their sound: its conflict runs prefer
    # the sound, so no clip has a suppression to undo and every grade is untestable.
    Organism(
        "sound wins",
        train={"audio_supervision": 0.3, "stage2_steps": 300},
        from_base="testbed-base",
    ),
)


def organism_path(organism: Organism, cache: Path, log: Callable[[str], None]) -> Path:
    """The organism's checkpoint: shipped, cached under ``cache``, or trained there now."""
    from patchwork.testbed.model import checkpoint_path
    from patchwork.testbed.train import TrainConfig, train

    if organism.checkpoint is not None:
        return checkpoint_path(organism.checkpoint)
    if organism.model_of is not None:
        return organism_path(next(o for o in SUITE if o.name == organism.model_of), cache, log)
    directory = cache / organism.slug
    if (directory / "patchwork_testbed.json").is_file():
        return directory
    log(f"training organism {organism.name!r} into {directory} (once; cached)")
    base = checkpoint_path(organism.from_base) if organism.from_base else None
    return train(directory, TrainConfig(**organism.train), from_base=base, log=lambda line: None)


def to_train(organisms: Sequence[Organism], cache: Path) -> list[Organism]:
    """The organisms whose models ``organisms`` need (a ``model_of`` organism its model's) and
    ``cache`` does not hold yet, each once, in order."""
    by_name = {o.name: o for o in (*SUITE, *organisms)}
    missing: dict[str, Organism] = {}
    for organism in organisms:
        model = by_name[organism.model_of] if organism.model_of is not None else organism
        if model.train and not (cache / model.slug / "patchwork_testbed.json").is_file():
            missing.setdefault(model.name, model)
    return list(missing.values())


def train_in_process(organism: Organism, cache: Path, threads: int) -> Path:
    """Train ``organism`` into ``cache`` with ``threads`` torch threads: the entry of a worker
    process (the weights depend on the thread count, never on the process)."""
    import torch

    torch.set_num_threads(threads)
    return organism_path(organism, cache, log=lambda line: None)


def study_text(
    organism: Organism, checkpoint: Path, method: str, samples: int, lens_run: str = "conflict"
) -> str:
    """The study that ``method`` runs on ``organism`` (``logit_lens``: the one reading
    ``lens_run``, one of :data:`~patchwork.bench.lens.LENS_RUNS`)."""
    conflict = "{audio: own, picture: other_category}"
    if organism.swap == "sound":
        conflict = "{audio: other_category, picture: blank}"
    name = f"bench-{organism.slug}-{method.replace('+', '-')}"
    if method == "logit_lens":
        name += f"-{lens_run}"
    head = f"""\
name: {name}
model: {{family: qwen2_5_omni, checkpoint: {checkpoint}, attention: sdpa}}
dataset: {{generator: testbed, samples: {samples}, seed: 0}}
runs:
  clean: {{audio: own, picture: blank}}
  conflict: {conflict}
question: what do you hear
metrics: [logit_diff, normalized_effect]
execution: {{batch_size: 16, unit_size: 16, seed: 0}}
interventions:
"""
    if method in PATCHING_METHODS:
        return (
            head
            + f"""\
  - kind: activation_patching
    components: [residual]
    layers: all
    window: 1
    position_groups: [{organism.position_group}]
    noise_floor: none
    method: {method}
"""
        )
    if method == "knockout":
        assert organism.window is not None
        inside = [layer for layer in range(8) if in_spans(layer, organism.window)]
        outside = [layer for layer in range(8) if not in_spans(layer, organism.window)]
        keys = "audio" if organism.swap == "sound" else "video"
        return (
            head
            + f"""\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      inside: {{queries: [answer, text], keys: [{keys}], layers: {inside}}}
      outside: {{queries: [answer, text], keys: [{keys}], layers: {outside}}}
      layer: {{queries: [answer, text], keys: [{keys}], window: 1}}
"""
        )
    if method == "logit_lens":
        return (
            head
            + f"""\
  - kind: logit_lens
    run: {lens_run}
    position_groups: [answer]
    top_k: 1
"""
        )
    if method == "path_patching":
        assert organism.heads is not None
        senders = list(range(max(layer for layer, _ in organism.heads)))
        return (
            head
            + f"""\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    sender_layers: {senders}
    receiver_layers: all
"""
        )
    if method == "head_patching":
        return (
            head
            + """\
  - kind: head_patching
    layers: all
    position_groups: [answer]
"""
        )
    return (
        head
        + """\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      picture: {queries: [answer], keys: [video], window: 1, heads: each}
"""
    )


#: The grades read from every clip, each with a 95% interval over the clips (``NAME_low``,
#: ``NAME_high``: the percentile bootstrap of whole clips, 1000 resamples, seed 0; the
#: faithfulness areas' from :mod:`patchwork.bench.faithfulness`).
INTERVAL_GRADES = (
    "error_layers",
    "auroc",
    "inside",
    "outside",
    "lens_error",
    "first_planted",
    "planted_share",
    "cpr",
    "cmd",
    "bottom_area",
)
GRADES = (
    "status",
    "error_layers",
    "auroc",
    "lens_error",
    "inside",
    "outside",
    "first_planted",
    "planted_share",
    "cpr",
    "cmd",
    "bottom_area",
    "samples_used",
    "samples_total",
    *(f"{name}_{side}" for name in INTERVAL_GRADES for side in ("low", "high")),
)


def grade(
    organism: Organism, method: str, results: xr.Dataset, min_usable: int = MIN_USABLE
) -> dict[str, Any]:
    """The grades of one method's results on one organism (see the package docstring); those
    that do not apply are NaN (status: empty). Only usable clips are graded; with fewer than
    ``min_usable`` of them the status is ``untestable`` and every other grade NaN."""
    from patchwork.analysis import ground_truth, locate, located_spans

    grades: dict[str, Any] = dict.fromkeys(GRADES, np.nan)
    grades["status"] = ""
    usable = usable_mask(method, results)
    grades["samples_used"], grades["samples_total"] = int(usable.sum()), int(usable.size)
    if grades["samples_used"] < min_usable:
        grades["status"] = "untestable"
        return grades
    if method in PATCHING_METHODS:
        located = locate(from_embeddings(results), n_resamples=500)
        found = located.sel(position_group=organism.position_group, component="residual")
        status = str(found["status"].values)
        if organism.window is None:
            grades["status"] = "spurious" if status == "located" else "nothing"
            return grades
        grades["status"] = status
        if status == "located":
            grades["error_layers"] = window_error(located_spans(found), organism.spans)
            _error_over_clips(grades, organism, results.isel(sample=np.flatnonzero(usable)))
        steps = layer_steps(results, organism.position_group).isel(sample=usable)
        layers = steps["layer"].values
        planted = np.array([in_spans(int(layer), organism.window) for layer in layers])
        _over_clips(grades, "auroc", [ground_truth.auroc(row, planted) for row in steps.values])
    elif method == "knockout":
        effect = results["knockout_effect"].sel(metric="normalized_effect").isel(sample=usable)
        labels = [str(label) for label in effect["knockout"].values]
        for rule in ("inside", "outside"):
            chosen = [label for label in labels if label.startswith(f"{rule}@")]
            _over_clips(grades, rule, effect.sel(knockout=chosen).mean("knockout").values)
    elif method == "logit_lens":
        first = organism.spans[0][0]
        departed = lens_departure(results).isel(sample=usable).values
        _over_clips(grades, "lens_error", np.abs(departed - first))
    else:
        assert organism.heads is not None
        if method == "path_patching":
            paths = ground_truth.paths_restoration(results).isel(sample=usable)
            graded = ground_truth.planted_path_recovery(paths, organism.heads)
        else:
            scores = head_scores(method, results).isel(sample=usable)
            graded = ground_truth.planted_recovery(scores, organism.heads)
        _over_clips(grades, "first_planted", graded["first_planted"].to_numpy(float))
        _over_clips(grades, "planted_share", graded["planted_share"].to_numpy(float), np.median)
    return grades


def _over_clips(
    grades: dict[str, Any],
    name: str,
    per_clip: Any,
    statistic: Callable[[np.ndarray], Any] = np.mean,
) -> None:
    """``grades[name]``: ``statistic`` (mean or median) of the clips' finite values, with its 95%
    percentile-bootstrap interval over whole clips (:func:`~patchwork.analysis.bootstrap_weights`,
    1000 resamples, seed 0) as ``name_low`` and ``name_high``."""
    from patchwork.analysis.bootstrap import bootstrap_weights

    values = np.asarray(per_clip, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    grades[name] = float(statistic(values))
    counts = bootstrap_weights(values.size, 1000, seed=0).values
    resampled = [statistic(np.repeat(values, drawn)) for drawn in counts]
    grades[f"{name}_low"], grades[f"{name}_high"] = (
        float(bound) for bound in np.quantile(resampled, [0.025, 0.975])
    )


def _error_over_clips(
    grades: dict[str, Any], organism: Organism, results: xr.Dataset, n_resamples: int = 200
) -> None:
    """``error_layers_low``, ``error_layers_high``: the 95% percentile interval of the located
    windows' error over resamples of the usable clips ``results`` (whole clips, seed 0; each
    resample located with 200 resamples of its own). A resample where nothing is located misses
    every span."""
    from patchwork.analysis import locate, located_spans
    from patchwork.analysis.bootstrap import bootstrap_weights

    errors = []
    for drawn in bootstrap_weights(results.sizes["sample"], n_resamples, seed=0).values:
        picked = np.repeat(np.arange(drawn.size), drawn)
        clips = results.isel(sample=picked).assign_coords(
            sample=[f"clip {i}" for i in range(picked.size)]
        )
        found = locate(from_embeddings(clips), n_resamples=200).sel(
            position_group=organism.position_group, component="residual"
        )
        errors.append(window_error(located_spans(found), organism.spans))
    grades["error_layers_low"], grades["error_layers_high"] = (
        float(bound) for bound in np.quantile(errors, [0.025, 0.975])
    )


def window_error(located: Sequence[tuple[int, int]], spans: tuple[tuple[int, int], ...]) -> int:
    """Layers by which the ``located`` windows (inclusive (first, last) pairs) miss the planted
    ``spans``: for each window, how far it reaches before the first span or past the last, plus
    the layers it covers between spans; and the width of every span that no window touches
    (0 = each span found, nothing outside)."""
    first, last = spans[0][0], spans[-1][1]

    def planted(layer: int) -> bool:
        return any(a <= layer <= b for a, b in spans)

    error = sum(
        max(0, first - start)
        + max(0, end - last)
        + sum(not planted(layer) for layer in range(max(start, first), min(end, last) + 1))
        for start, end in located
    )
    return error + sum(
        b - a + 1 for a, b in spans if not any(start <= b and a <= end for start, end in located)
    )


def from_embeddings(results: xr.Dataset) -> xr.Dataset:
    """Patching ``results`` with a layer −1 in front of the first: the patched group's residual
    stream *before* layer 0, its input embeddings. Every group the bench patches has the same
    inputs in its clean and its conflict run (text tokens; the sound, for the control), so
    patching there leaves the conflict run — normalized effect 0, the conflict run's logit
    difference — exactly. ``locate`` then sees a window that starts at layer 0 (the rise from −1
    to 0); without it, a window there is invisible (the step lies before the first stored layer)."""
    effect = results["effect"]
    start = xr.full_like(effect.isel(layer=[0]), np.nan).assign_coords(layer=[-1])
    conflict = results["baseline"].sel(metric="logit_diff").isel(run=1, drop=True)
    start.loc[{"metric": "normalized_effect"}] = 0.0
    start.loc[{"metric": "logit_diff"}] = conflict.expand_dims(layer=[-1]).broadcast_like(
        start.sel(metric="logit_diff")
    )
    kept = {name: results[name] for name in ("baseline", "done") if name in results}
    return xr.Dataset(
        {"effect": xr.concat([start, effect], "layer"), **kept}, attrs=dict(results.attrs)
    )


def usable_mask(method: str, results: xr.Dataset) -> np.ndarray:
    """Which clips of ``method``'s results a grade reads
    (:func:`~patchwork.analysis.ground_truth.usable_clips` of their clean and conflict runs)."""
    from patchwork.analysis import sample_coverage
    from patchwork.analysis.ground_truth import usable_clips

    if method in PATCHING_METHODS:  # exactly the clips locate reads
        excluded = {sample for ids in sample_coverage(results).excluded.values() for sample in ids}
        return np.array([str(sample) not in excluded for sample in results["sample"].values])
    if method == "logit_lens":
        answer = -lens_preference(results).isel(lens_layer=-1)  # the model's own logit difference
        clean, conflict = answer.sel(lens_run="clean"), answer.sel(lens_run="conflict")
    elif method == "head_patching":
        runs = results["head_baseline"].sel(metric="logit_diff")
        clean, conflict = runs.isel(head_run=0), runs.isel(head_run=1)
    elif method == "path_patching":
        runs = results["path_baseline"].sel(metric="logit_diff")
        clean, conflict = runs.isel(path_run=0), runs.isel(path_run=1)
    else:
        runs = results["knockout_baseline"].sel(metric="logit_diff")
        clean, conflict = runs.isel(knockout_run=1), runs.isel(knockout_run=0)
    done = results["done"].values.astype(bool) if "done" in results else True
    return np.asarray(usable_clips(clean, conflict).values & done, dtype=bool)


def layer_steps(results: xr.Dataset, group: str = "answer") -> xr.DataArray:
    """(sample, layer): each layer's step of the restored answer — the normalized effect of
    patching ``group``'s residual stream after it, minus that after the layer before (0 before
    layer 0)."""
    effect = results["effect"].sel(
        metric="normalized_effect", position_group=group, component="residual"
    )
    effect = effect.transpose("sample", "layer").sortby("layer").astype(np.float64)
    return effect.copy(data=np.diff(effect.values, axis=1, prepend=0.0))


def head_scores(method: str, results: xr.Dataset) -> xr.DataArray:
    """(sample, layer, head): each head's restoration by ``head_patching`` or ``head_knockout``
    (:mod:`~patchwork.analysis.ground_truth`)."""
    from patchwork.analysis import ground_truth

    if method == "head_patching":
        return ground_truth.head_restoration(results)
    return ground_truth.knockout_restoration(results, "picture")


def cell_scores(organism: Organism, method: str, results: xr.Dataset) -> np.ndarray | None:
    """``method``'s mean score over its usable clips for each of ``organism``'s faithfulness cells
    — layers in order (window organisms: patching's layer steps, single-layer knockout's
    restoration), or (layer, head) pairs in order (head organisms; path patching: a receiving
    head's best sender layer). None for the logit lens, which ranks no cells."""
    from patchwork.analysis import ground_truth

    if method == "logit_lens":
        return None
    usable = usable_mask(method, results)
    if method == "path_patching":
        by_sender = ground_truth.path_cells(results).isel(sample=usable).mean("sample")
        scores = by_sender.max("sender_layer", skipna=True).stack(cell=("layer", "head"))
        return np.asarray(scores.values, dtype=np.float64)
    if method in PATCHING_METHODS:
        scores = layer_steps(results, organism.position_group)
    elif method == "knockout":
        scores = ground_truth.layer_knockout_restoration(results, "layer")
    else:
        scores = head_scores(method, results).stack(cell=("layer", "head"))
    return np.asarray(scores.isel(sample=usable).mean("sample").values, dtype=np.float64)
