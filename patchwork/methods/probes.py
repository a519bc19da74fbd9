"""Linear probes: stored pooled residual features, and a cross-validated probe over the store.

The study method stores, per sample, the residual stream (decoder layer output) mean-pooled over
each position group's positions: ``probe_features`` (sample, probe_layer, probe_group,
probe_hidden), in the model's hidden units. Features are per sample, so they fill the store unit
by unit like every other method. ``probe_logit_diff`` (sample,) stores the run's own answer
preference, logit(audio answer) − logit(visual answer), so probes can be restricted to samples the
model answers with the picture's sound (< 0). The probe itself needs all samples and runs
afterwards, as an analysis over the store (:func:`probe_scores`).

Labels come from the store's per-sample coordinates: ``audio_answer`` names the true sound (for
"what do you hear" studies the sound word is the sound's category), ``visual_answer`` the
picture's. A shuffled-label probe (same folds, labels permuted) gives the chance baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from patchwork.data.sample import Sample
from patchwork.methods.method import Method
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.schema import Probes


class ProbesMethod(Method):
    kind = "probes"
    spec: Probes

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.layers = self.resolve_layers(self.spec.layers)
        config = getattr(self.loaded.adapter.config, "text_config", self.loaded.adapter.config)
        self.hidden = int(config.hidden_size)

    def runs(self) -> tuple[str, ...]:
        return (self.spec.run,)

    def variables(self) -> dict[str, ArraySpec]:
        return {
            "probe_features": ArraySpec(
                ("sample", "probe_layer", "probe_group", "probe_hidden"),
                {
                    "probe_layer": list(self.layers),
                    "probe_group": list(self.spec.position_groups),
                    "probe_hidden": list(range(self.hidden)),
                },
                long_name="mean hidden state of the position group (probe features)",
            ),
            "probe_logit_diff": ArraySpec(
                ("sample",),
                long_name="logit difference, audio − visual answer, of the probed run",
                units="1",
            ),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        adapter = patcher.adapter
        device = next(adapter.root.parameters()).device
        groups_wanted = self.spec.position_groups
        features = np.full(
            (len(samples), len(self.layers), len(groups_wanted), self.hidden),
            np.nan,
            dtype=np.float32,
        )
        logit_diff = np.full(len(samples), np.nan, dtype=np.float32)
        sites = [(layer, "residual") for layer in self.layers]
        for row, sample in enumerate(samples):
            inputs = {key: value.to(device) for key, value in sample.runs[self.spec.run].items()}
            answer_logits, residuals = patcher.record(inputs, sites)
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            logit_diff[row] = float(answer_logits[0, ids[0]] - answer_logits[0, ids[1]])
            groups = adapter.position_groups(inputs["input_ids"])
            for li, layer in enumerate(self.layers):
                stream = adapter.merge_streams(residuals[(layer, "residual")]).detach().float()
                for gi, group in enumerate(groups_wanted):
                    mask = groups[group].to(stream.device)
                    if bool(mask.any()):
                        features[row, li, gi] = stream[mask].mean(0).cpu().numpy()
        return {"probe_features": features, "probe_logit_diff": logit_diff}


def probe_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    folds: int = 5,
    seed: int = 0,
    steps: int = 150,
    weight_decay: float = 1e-3,
) -> float:
    """Cross-validated accuracy of a multinomial logistic regression.

    ``features`` (n, d) float, ``labels`` (n,) int64 in [0, classes). Folds are a seeded
    permutation split ``folds`` ways; each fold standardizes with its training part's statistics
    and fits full-batch Adam (lr 0.05, L2 ``weight_decay``); all folds are fitted together as
    one batched problem. Returns held-out accuracy in [0, 1].
    """
    n, d = features.shape
    classes = int(labels.max()) + 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held_out = torch.zeros(folds, n, dtype=torch.bool)
    for fold in range(folds):
        held_out[fold, order[fold::folds]] = True
    train = (~held_out).float()[:, :, None]  # (folds, n, 1)
    count = train.sum(1, keepdim=True)
    mean = (features[None] * train).sum(1, keepdim=True) / count
    var = ((features[None] - mean) ** 2 * train).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    x = (features[None] - mean) / (var.sqrt() + 1e-6)  # (folds, n, d)
    weight = torch.zeros(folds, d, classes, requires_grad=True)
    bias = torch.zeros(folds, 1, classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    targets = labels[None].expand(folds, n)
    for _ in range(steps):
        logits = x @ weight + bias
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, classes), targets.reshape(-1), reduction="none"
        ).reshape(folds, n)
        loss = (losses * train[..., 0]).sum() / train.sum() * folds
        loss = loss + weight_decay * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x @ weight + bias).argmax(-1)
        correct = (predicted == targets) & held_out
    return int(correct.sum()) / n


def probe_scores(
    results: xr.Dataset,
    target: str = "audio_answer",
    folds: int = 5,
    seed: int = 0,
    steps: int = 150,
    weight_decay: float = 1e-3,
) -> xr.Dataset:
    """Probe accuracy per (probe_layer, probe_group) for the labels in coordinate ``target``.

    ``results``: a store's dataset with ``probe_features``; only samples marked ``done`` are
    used. Returns ``accuracy`` and ``shuffled`` (the same probe on permuted labels) and attrs
    ``chance`` (share of the most frequent label) and ``samples``; ``steps`` and
    ``weight_decay`` go to :func:`probe_accuracy`.
    """
    data = results
    if "done" in results:
        data = results.sel(sample=results["done"].values.astype(bool))
    words = np.array([str(word) for word in data[target].values], dtype=object)
    names, labels_np = np.unique(words, return_inverse=True)
    labels = torch.as_tensor(labels_np, dtype=torch.long)
    permuted = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    features = data["probe_features"].transpose("sample", "probe_layer", "probe_group", ...)
    values = torch.as_tensor(np.asarray(features.values, dtype=np.float32))
    layers, groups = features["probe_layer"].values, features["probe_group"].values
    accuracy = np.full((len(layers), len(groups)), np.nan)
    shuffled = np.full_like(accuracy, np.nan)
    for li in range(len(layers)):
        for gi in range(len(groups)):
            x = values[:, li, gi]
            if torch.isnan(x).any():
                continue
            accuracy[li, gi] = probe_accuracy(x, labels, folds, seed, steps, weight_decay)
            shuffled[li, gi] = probe_accuracy(x, permuted, folds, seed, steps, weight_decay)
    coords = {"probe_layer": layers, "probe_group": groups}
    dims = ("probe_layer", "probe_group")
    counts = np.bincount(labels_np)
    return xr.Dataset(
        {"accuracy": (dims, accuracy), "shuffled": (dims, shuffled)},
        coords=coords,
        attrs={
            "target": target,
            "chance": float(counts.max() / counts.sum()),
            "samples": int(len(labels)),
            "classes": [str(name) for name in names],
        },
    )
