"""Attribution patching: a first-order estimate of every patching effect from one backward pass.

For a site (layer, component) with target activation ``a``, source activation ``a'`` and gradient
``g`` of a metric with respect to ``a`` (all (seq, hidden)), patching positions ``P`` changes the
metric by about ``Σ_{p∈P} (a'_p − a_p)·g_p``; a layer window sums its layers. One forward and one
backward pass per metric give the estimate for every condition at once (Nanda 2023; Kramár et al.
2024, "AtP*"). The estimate is linear: saturated attention and cancelling paths make it err, so
``attribution+verify`` patches the top conditions exactly and stores the agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.interventions.patching import Activations, Condition
from patchwork.models.adapter import ModelAdapter, _attribute


def site_gradients(
    adapter: ModelAdapter,
    target: ModelInputs,
    sites: Iterable[tuple[int, str]],
    audio_id: int,
    visual_id: int,
) -> tuple[Activations, dict[str, Activations], dict[str, float]]:
    """Target activations at ``sites``, the gradients of ``logit_diff`` and of
    ``audio_probability`` with respect to them (each (seq, hidden)), and the metrics' values.

    Parameters are frozen for the pass (no parameter gradients are kept); the first decoder
    layer's input is made a leaf that requires grad so that gradients reach every site.
    """
    root = adapter.root
    wanted = set(sites)
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    layers: nn.ModuleList = _attribute(root, adapter.layers_path)

    def start_graph(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs

    def keep(site: tuple[int, str]):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            value = adapter.output_tensor(site[1], output)
            value.retain_grad()
            outputs[site] = value

        return hook

    flags = [parameter.requires_grad for parameter in root.parameters()]
    handles = [layers[0].register_forward_pre_hook(start_graph, with_kwargs=True)]
    handles += [
        adapter.component(root, layer, component).register_forward_hook(keep((layer, component)))
        for layer, component in wanted
    ]
    try:
        for parameter in root.parameters():
            parameter.requires_grad_(False)
        with torch.enable_grad():
            logits = adapter.answer_logits(root(**adapter.forward_kwargs(target)).logits)[0]
            metrics = {
                "logit_diff": logits[audio_id] - logits[visual_id],
                "audio_probability": torch.softmax(logits.float(), -1)[audio_id],
            }
            gradients: dict[str, Activations] = {}
            for name, value in metrics.items():
                for tensor in outputs.values():
                    tensor.grad = None
                value.backward(retain_graph=True)
                gradients[name] = {
                    site: _gradient(tensor)[0].detach().clone() for site, tensor in outputs.items()
                }
    finally:
        for handle in handles:
            handle.remove()
        for parameter, flag in zip(root.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    activations = {site: t[0].detach() for site, t in outputs.items()}
    return activations, gradients, {name: float(v.detach()) for name, v in metrics.items()}


def _gradient(tensor: torch.Tensor) -> torch.Tensor:
    """The gradient a backward pass left on ``tensor`` (zeros where the metric does not depend
    on it)."""
    return tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)


def estimate_changes(
    conditions: Sequence[Condition],
    source: Activations,
    target: Activations,
    gradients: Activations,
    group_masks: Mapping[str, torch.Tensor],
) -> np.ndarray:
    """Estimated change of the metric (len(conditions),) when each condition is patched."""
    per_position = {
        site: ((source[site] - target[site]).float() * gradients[site].float()).sum(-1)
        for site in gradients
    }
    changes = np.empty(len(conditions), dtype=np.float64)
    for row, condition in enumerate(conditions):
        mask = group_masks[condition.position_group]
        changes[row] = sum(
            float(per_position[(layer, condition.component)][mask].sum())
            for layer in condition.layers
        )
    return changes


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (average ranks for ties); NaN if undefined."""
    if len(first) < 2:
        return float("nan")
    ranks = [_ranks(np.asarray(values, dtype=np.float64)) for values in (first, second)]
    a, b = (r - r.mean() for r in ranks)
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
