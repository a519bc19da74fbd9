"""The organisms of ``patchwork bench``, the studies run on each, and how each is graded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from patchwork.errors import PatchworkError

PATCHING_METHODS = ("exact", "attribution", "attribution+verify")
METHODS = (*PATCHING_METHODS, "knockout", "head_patching", "head_knockout")
RECIPE: dict[str, Any] = {
    "stage2_steps": 3000,
    "picture_supervision": 0.1,
    "audio_first_steps": 300,
    "stop_at_targets": True,
    "time_budget": 600.0,
}


@dataclass(frozen=True)
class Organism:
    """A model with its truth: a shipped ``checkpoint``, or ``train`` options (a
    :class:`~patchwork.testbed.train.TrainConfig`'s fields, stage 2 from ``from_base`` when given)
    trained once and cached; ``window`` (inclusive layers where the text reads the picture),
    ``heads`` ((layer, head) pairs through which alone the answer reads it), or neither: a
    control with nothing to find."""

    name: str
    checkpoint: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    from_base: str | None = None
    window: tuple[int, int] | None = None
    heads: tuple[tuple[int, int], ...] | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name).strip("-")

    @property
    def methods(self) -> tuple[str, ...]:
        if self.heads is not None:
            return ("head_patching", "head_knockout")
        if self.window is not None:
            return (*PATCHING_METHODS, "knockout")
        return PATCHING_METHODS


SUITE: tuple[Organism, ...] = (
    Organism("window 4-5", checkpoint="testbed-windowed", window=(4, 5)),
    Organism("heads 4:1 4:3", checkpoint="testbed-heads", heads=((4, 1), (4, 3))),
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
        "control",
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
    directory = cache / organism.slug
    if (directory / "patchwork_testbed.json").is_file():
        return directory
    log(f"training organism {organism.name!r} into {directory} (once; cached)")
    base = checkpoint_path(organism.from_base) if organism.from_base else None
    return train(directory, TrainConfig(**organism.train), from_base=base, log=lambda line: None)


def study_text(organism: Organism, checkpoint: Path, method: str, samples: int) -> str:
    """The study that ``method`` runs on ``organism``."""
    head = f"""\
name: bench-{organism.slug}-{method.replace("+", "-")}
model: {{family: qwen2_5_omni, checkpoint: {checkpoint}, attention: sdpa}}
dataset: {{generator: testbed, samples: {samples}, seed: 0}}
runs:
  clean: {{audio: own, picture: blank}}
  conflict: {{audio: own, picture: other_category}}
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
    position_groups: [answer]
    noise_floor: none
    method: {method}
"""
        )
    if method == "knockout":
        assert organism.window is not None
        first, last = organism.window
        outside = [layer for layer in range(8) if not first <= layer <= last]
        return (
            head
            + f"""\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      inside: {{queries: [answer, text], keys: [video], layers: {first}-{last}}}
      outside: {{queries: [answer, text], keys: [video], layers: {outside}}}
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


GRADES = (
    "status",
    "error_layers",
    "auroc",
    "inside",
    "outside",
    "first_planted",
    "planted_share",
    "samples_used",
)


def grade(organism: Organism, method: str, results: xr.Dataset) -> dict[str, Any]:
    """The grades of one method's results on one organism (see the package docstring); those
    that do not apply are NaN (status: empty)."""
    from patchwork.analysis import AnalysisError, ground_truth, locate

    grades: dict[str, Any] = dict.fromkeys(GRADES, np.nan)
    grades["status"] = ""
    if method in PATCHING_METHODS:
        try:
            located = locate(results, n_resamples=500)
        except AnalysisError:  # no clip's conflict run loses the audio answer: no suppression
            grades["status"] = "nothing" if organism.window is None else "no usable clip"
            grades["samples_used"] = 0
            return grades
        found = located.sel(position_group="answer", component="residual")
        status = str(found["status"].values)
        grades["samples_used"] = int(found["n_samples"])
        if organism.window is None:
            grades["status"] = "spurious" if status == "located" else "nothing"
            return grades
        first, last = organism.window
        grades["status"] = status
        if status == "located":
            start, end = int(found["start_layer"]), int(found["end_layer"])
            grades["error_layers"] = max(0, first - start) + max(0, end - last)
        grades["auroc"] = _step_auroc(results, organism.window)
    elif method == "knockout":
        effect = results["knockout_effect"].sel(metric="normalized_effect")
        labels = [str(label) for label in effect["knockout"].values]
        for rule in ("inside", "outside"):
            chosen = [label for label in labels if label.startswith(f"{rule}@")]
            grades[rule] = float(effect.sel(knockout=chosen).mean(skipna=True))
        grades["samples_used"] = int(effect.notnull().all("knockout").sum())
    else:
        assert organism.heads is not None
        restored = (
            ground_truth.head_restoration(results)
            if method == "head_patching"
            else ground_truth.knockout_restoration(results, "picture")
        )
        graded = ground_truth.planted_recovery(restored, organism.heads)
        grades["first_planted"] = float(graded["first_planted"].mean())
        grades["planted_share"] = float(graded["planted_share"].median())
        grades["samples_used"] = int(graded["planted_share"].notna().sum())
    return grades


def _step_auroc(results: xr.Dataset, window: tuple[int, int]) -> float:
    """Mean over clips of the AUROC with which each layer's step of the restored answer (the
    normalized effect of patching after it, minus that after the layer before; 0 before layer 0)
    picks out the planted layers."""
    effect = results["effect"].sel(
        metric="normalized_effect", position_group="answer", component="residual"
    )
    values = effect.transpose("sample", "layer").values.astype(np.float64)
    steps = np.diff(values, axis=1, prepend=0.0)
    layers = effect["layer"].values
    planted = (layers >= window[0]) & (layers <= window[1])
    scores = []
    for row in steps:
        if not np.isfinite(row).all():
            continue
        positive, negative = row[planted], row[~planted]
        wins = (positive[:, None] > negative[None, :]).mean()
        ties = (positive[:, None] == negative[None, :]).mean()
        scores.append(wins + 0.5 * ties)
    return float(np.mean(scores)) if scores else float("nan")


def run_bench(
    out: Path,
    organisms: Sequence[Organism] = SUITE,
    samples: int = 16,
    log: Callable[[str], None] = print,
) -> xr.Dataset:
    """Run every organism's methods, grade them, and write ``bench.zarr`` (organism × technique)
    and ``bench.png`` into ``out``; returns the graded dataset."""
    from patchwork.analysis import save_figure
    from patchwork.engine.runner import run_study
    from patchwork.store.zarr_store import open_results
    from patchwork.study import load_study

    out = Path(out)
    if samples < 2:
        raise PatchworkError(f"bench needs at least 2 samples per organism, got {samples}")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for organism in organisms:
        checkpoint = organism_path(organism, out / "organisms", log)
        for method in organism.methods:
            folder = out / "studies" / organism.slug
            folder.mkdir(parents=True, exist_ok=True)
            study_file = folder / f"{method.replace('+', '-')}.yaml"
            study_file.write_text(study_text(organism, checkpoint, method, samples))
            summary = run_study(load_study(study_file), store_root=out / "stores" / organism.slug)
            rows[(organism.name, method)] = grade(
                organism, method, open_results(summary.store).load()
            )
            log(f"{organism.name} · {method}: {_line(rows[(organism.name, method)])}")
    graded = _dataset(rows, [o.name for o in organisms])
    graded.to_zarr(out / "bench.zarr", mode="w")
    save_figure(plot_bench(graded), out, "bench")
    return graded


def _line(grades: dict[str, Any]) -> str:
    shown = [f"{key} {value}" for key, value in grades.items() if isinstance(value, str) and value]
    shown += [
        f"{key} {value:.3g}"
        for key, value in grades.items()
        if not isinstance(value, str) and np.isfinite(value)
    ]
    return ", ".join(shown)


def _dataset(rows: dict[tuple[str, str], dict[str, Any]], organisms: list[str]) -> xr.Dataset:
    methods = [method for method in METHODS if any(m == method for _, m in rows)]
    variables = {}
    for name in GRADES:
        text = name == "status"
        values = np.full((len(organisms), len(methods)), "" if text else np.nan, dtype=object)
        for (organism, method), grades in rows.items():
            values[organisms.index(organism), methods.index(method)] = grades[name]
        variables[name] = (("organism", "technique"), values.astype(str if text else np.float64))
    # not "method": Dataset.sel(method=...) is the inexact-matching argument
    return xr.Dataset(variables, coords={"organism": organisms, "technique": methods})


#: The panels of :func:`plot_bench`: grade, title, y-axis label.
PANELS = (
    ("auroc", "AUROC of the layer steps\n(window organisms; 1: planted ones first)", "AUROC"),
    ("error_layers", "located layers outside the window\n(window organisms; 0: exact)", "layers"),
    ("first_planted", "clips whose first-ranked head is planted\n(head organisms)", "share"),
)


def plot_bench(graded: xr.Dataset):
    """Per organism and method: AUROC of the layer steps and error of the located window (window
    organisms), the clips whose first-ranked head is planted (head organisms). One colour per
    method in every panel, named by one legend below the panels (never over a bar)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    frame = graded.to_dataframe().reset_index()
    methods = [str(method) for method in graded["technique"].values]
    colours = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    figure = Figure(figsize=(13, 4.4), layout="constrained")
    figure.suptitle("patchwork bench: how well each method recovers the planted truth")
    legend: dict[str, Any] = {}
    for axes, (column, title, label) in zip(figure.subplots(1, 3), PANELS, strict=True):
        shown = frame[np.isfinite(frame[column].astype(float))]
        if shown.empty:
            axes.set_axis_off()
            continue
        present = set(shown["technique"])
        sns.barplot(
            shown,
            x="organism",
            y=column,
            hue="technique",
            hue_order=[method for method in methods if method in present],
            palette=colours,
            ax=axes,
        )
        axes.set_title(title)
        axes.set(xlabel="", ylabel=label)
        axes.tick_params(axis="x", rotation=20)
        for handle, method in zip(*axes.get_legend_handles_labels(), strict=True):
            legend.setdefault(method, handle)
        if axes.get_legend() is not None:
            axes.get_legend().remove()
    if legend:
        ordered = [method for method in methods if method in legend]
        figure.legend(
            [legend[method] for method in ordered],
            ordered,
            loc="outside lower center",
            ncols=len(ordered),
            title="method",
            frameon=False,
        )
    return figure
