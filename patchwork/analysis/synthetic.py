"""Synthetic result datasets with a known answer, shaped exactly like a result store.

They let the analysis be tested (and tried in the docs) without running a model: the normalized
effect follows a chosen step across layers in chosen cells, plus per-sample offsets and noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from patchwork.analysis.results import METRICS

#: Default steps: patching the answer position's residual stream restores the audio answer from
#: the step layer on; patching the video positions' residual helps only before it.
DEFAULT_STEPS: Mapping[tuple[str, str], tuple[float, float]] = {
    ("answer", "residual"): (0.0, 1.0),
    ("video", "residual"): (0.8, 0.0),
}


def synthetic_results(
    n_samples: int = 32,
    n_layers: int = 8,
    step_layer: int = 5,
    steps: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    noise: float = 0.1,
    position_groups: Sequence[str] = ("audio", "video", "text", "answer"),
    components: Sequence[str] = ("residual", "attention", "mlp"),
    null: bool = True,
    done_fraction: float = 1.0,
    seed: int = 0,
    study_name: str = "synthetic",
    model_name: str = "synthetic-model",
) -> xr.Dataset:
    """A result dataset whose normalized effect steps at ``step_layer`` in chosen cells.

    Args:
        n_samples: number of samples.
        n_layers: number of layers (layer coordinate ``0 .. n_layers − 1``).
        step_layer: first layer at the *after* level of every step.
        steps: ``{(position_group, component): (before, after)}`` mean normalized effect below and
            from ``step_layer``; every other cell has mean 0. Defaults to :data:`DEFAULT_STEPS`.
        noise: standard deviation of the per-cell Gaussian noise, in normalized-effect units; each
            sample also gets an offset of standard deviation ``noise / 2`` shared by its layers.
        position_groups, components: the coordinates of those dimensions.
        null: whether to add ``null_effect`` (the same noise around 0, no step).
        done_fraction: fraction of samples marked done; the rest are NaN, as in a partial store.
        seed: seed of the noise.
        study_name, model_name: stored in the attributes.

    Returns:
        Dataset with ``effect`` (sample, layer, position_group, component, metric), ``baseline``
        (sample, run, metric), ``done`` (sample,), optionally ``null_effect``, and the coordinates
        and attributes of a result store.
    """
    rng = np.random.default_rng(seed)
    steps = DEFAULT_STEPS if steps is None else steps
    shape = (n_samples, n_layers, len(position_groups), len(components))
    after = np.arange(n_layers)[None, :, None, None] >= step_layer
    means = np.zeros(shape[1:])
    for (group, component), (level_before, level_after) in steps.items():
        if group in position_groups and component in components:
            g, c = list(position_groups).index(group), list(components).index(component)
            means[:, g, c] = np.where(after[0, :, 0, 0], level_after, level_before)

    def noisy(level: np.ndarray) -> np.ndarray:
        offsets = rng.normal(0.0, noise / 2, size=(n_samples, 1, 1, 1))
        return level + offsets + rng.normal(0.0, noise, size=shape)

    clean_ld = rng.normal(3.0, 0.5, size=n_samples)
    conflict_ld = rng.normal(-2.0, 0.5, size=n_samples)
    done = np.arange(n_samples) < round(done_fraction * n_samples)

    def with_metrics(normalized: np.ndarray) -> np.ndarray:
        gap = (clean_ld - conflict_ld)[:, None, None, None]
        logit_diff = conflict_ld[:, None, None, None] + normalized * gap
        stacked = np.stack([logit_diff, 1.0 / (1.0 + np.exp(-logit_diff)), normalized], axis=-1)
        stacked[~done] = np.nan
        return stacked.astype("float32")

    dims = ("sample", "layer", "position_group", "component", "metric")
    baseline = np.stack(
        [
            np.stack([clean_ld, 1 / (1 + np.exp(-clean_ld)), np.ones(n_samples)], axis=-1),
            np.stack([conflict_ld, 1 / (1 + np.exp(-conflict_ld)), np.zeros(n_samples)], axis=-1),
        ],
        axis=1,
    ).astype("float32")
    baseline[~done] = np.nan
    sounds = ["tone", "chirp", "pulse", "noise", "chord", "sweep", "click", "hum"]
    data_vars = {
        "effect": (dims, with_metrics(noisy(means))),
        "baseline": (("sample", "run", "metric"), baseline),
        "done": (("sample",), done),
    }
    if null:
        data_vars["null_effect"] = (dims, with_metrics(noisy(np.zeros(shape[1:]))))
    return xr.Dataset(
        data_vars,
        coords={
            "sample": [f"s{i:04d}" for i in range(n_samples)],
            "layer": np.arange(n_layers),
            "position_group": list(position_groups),
            "component": list(components),
            "metric": list(METRICS),
            "run": ["clean", "conflict"],
            "audio_answer": ("sample", [sounds[i % 8] for i in range(n_samples)]),
            "visual_answer": ("sample", [sounds[(i + 3) % 8] for i in range(n_samples)]),
        },
        attrs={"study_name": study_name, "model_name": model_name, "synthetic": 1},
    )
