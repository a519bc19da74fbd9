"""Cross-validated linear probes over a store's ``probe_features``, in numpy.

The probes study method (:mod:`patchwork.methods.probes`) stores per-sample pooled residual
features; the probe needs all samples at once, so it runs afterwards, over the store. It lives here
rather than beside the method so that analysis (``patchwork plot``, ``patchwork status``) reads
probe stores without importing torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr


def probe_accuracy(
    features: Any,
    labels: Any,
    folds: int = 5,
    seed: int = 0,
    steps: int = 150,
    weight_decay: float = 1e-3,
) -> float:
    """Cross-validated accuracy of a multinomial logistic regression.

    ``features`` (n, d) float, ``labels`` (n,) int in [0, classes) — numpy arrays, or anything
    ``numpy.asarray`` takes (a CPU torch tensor). Folds are a seeded permutation split ``folds``
    ways; each fold standardizes with its training part's statistics and fits full-batch Adam
    (lr 0.05, betas 0.9/0.999, L2 ``weight_decay`` on the weights); all folds are fitted together
    as one batched problem. Returns held-out accuracy in [0, 1].
    """
    x_all = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    n, d = x_all.shape
    classes = int(y.max()) + 1
    order = np.random.default_rng(seed).permutation(n)
    held_out = np.zeros((folds, n), dtype=bool)
    for fold in range(folds):
        held_out[fold, order[fold::folds]] = True
    train = (~held_out).astype(np.float64)[:, :, None]  # (folds, n, 1)
    count = train.sum(1, keepdims=True)
    mean = (x_all[None] * train).sum(1, keepdims=True) / count
    var = ((x_all[None] - mean) ** 2 * train).sum(1, keepdims=True) / np.maximum(count - 1, 1)
    x = (x_all[None] - mean) / (np.sqrt(var) + 1e-6)  # (folds, n, d)
    onehot = np.eye(classes)[y][None]  # (1, n, classes)
    weight = np.zeros((folds, d, classes))
    bias = np.zeros((folds, 1, classes))
    moments = [
        np.zeros_like(weight),
        np.zeros_like(weight),
        np.zeros_like(bias),
        np.zeros_like(bias),
    ]
    scale = folds / train.sum()  # the loss is Σ train-part cross-entropy / Σ train × folds
    rate, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        logits = x @ weight + bias
        logits -= logits.max(-1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(-1, keepdims=True)
        upstream = (probabilities - onehot) * train * scale  # d loss / d logits
        gradients = (
            np.swapaxes(x, 1, 2) @ upstream + 2 * weight_decay * weight,
            upstream.sum(1, keepdims=True),
        )
        for index, (parameter, gradient) in enumerate(zip((weight, bias), gradients, strict=True)):
            first, second = moments[2 * index], moments[2 * index + 1]
            first *= beta1
            first += (1 - beta1) * gradient
            second *= beta2
            second += (1 - beta2) * gradient**2
            corrected = first / (1 - beta1**step)
            parameter -= rate * corrected / (np.sqrt(second / (1 - beta2**step)) + eps)
    predicted = (x @ weight + bias).argmax(-1)
    correct = (predicted == y[None]) & held_out
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
    ``chance`` (share of the most frequent label), ``samples`` (samples used), ``n_total``
    (samples stored) and ``classes``; ``steps`` and ``weight_decay`` go to
    :func:`probe_accuracy`.
    """
    data = results
    if "done" in results:
        data = results.sel(sample=results["done"].values.astype(bool))
    words = np.array([str(word) for word in data[target].values], dtype=object)
    names, labels = np.unique(words, return_inverse=True)
    permuted = labels[np.random.default_rng(seed).permutation(len(labels))]
    features = data["probe_features"].transpose("sample", "probe_layer", "probe_group", ...)
    values = np.asarray(features.values, dtype=np.float64)
    layers, groups = features["probe_layer"].values, features["probe_group"].values
    accuracy = np.full((len(layers), len(groups)), np.nan)
    shuffled = np.full_like(accuracy, np.nan)
    for li in range(len(layers)):
        for gi in range(len(groups)):
            x = values[:, li, gi]
            if len(labels) == 0 or np.isnan(x).any():
                continue
            accuracy[li, gi] = probe_accuracy(x, labels, folds, seed, steps, weight_decay)
            shuffled[li, gi] = probe_accuracy(x, permuted, folds, seed, steps, weight_decay)
    coords = {"probe_layer": layers, "probe_group": groups}
    dims = ("probe_layer", "probe_group")
    counts = np.bincount(labels) if len(labels) else np.ones(1)
    return xr.Dataset(
        {"accuracy": (dims, accuracy), "shuffled": (dims, shuffled)},
        coords=coords,
        attrs={
            "target": target,
            "chance": float(counts.max() / counts.sum()),
            "samples": int(len(labels)),
            "n_total": int(results.sizes["sample"]),
            "classes": [str(name) for name in names],
        },
    )
