"""Attribution patching: a first-order estimate of every patching effect from one backward pass.

For a site (layer, component) with target activation ``a``, source activation ``a'`` and gradient
``g`` of a metric with respect to ``a`` (all (seq, hidden)), patching positions ``P`` changes the
metric by about ``Σ_{p∈P} (a'_p − a_p)·g_p``; a layer window sums its layers. One forward and one
backward pass per metric give the estimate for every condition at once (Nanda 2023; Kramár et al.
2024, "AtP*"). The estimate is linear: saturated attention, the final norm and cancelling paths make
it err. :mod:`patchwork.patching.atp_star` corrects the first two; ``attribution+verify``
patches the top conditions exactly and stores the agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.models.adapter import ModelAdapter, _attribute
from patchwork.models.attention import AttentionRecord, recorded_attention
from patchwork.patching.metrics import answer_metrics
from patchwork.patching.partial_forward import TargetCache
from patchwork.patching.patcher import Activations, Condition

#: (layer, component, position_group) → estimated change of one metric.
Cells = dict[tuple[int, str, str], float]


@dataclass
class Linearization:
    """The target run (batch of one) and the gradients of its answer metrics.

    ``activations``: site → (seq, hidden); ``gradients``: metric → site → (seq, hidden);
    ``metrics``: the metrics' values. With ``attention``: each decoder layer's input (seq, hidden),
    the rotary embeddings, each layer's attention record and, per metric, the gradients of its
    query, key and probabilities. With ``readout``: the final norm's input at the answer position
    (hidden,) and its gradient per metric. With ``graddrop``: per dropped
    layer, the gradients of ``logit_diff`` at every site when nothing flows back through that
    layer's attention and MLP. With ``cache``: what exact patched runs of this target resume
    from.
    """

    activations: Activations
    gradients: dict[str, Activations]
    metrics: dict[str, float]
    layer_inputs: list[torch.Tensor] = field(default_factory=list)
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    attention: dict[int, AttentionRecord] = field(default_factory=dict)
    attention_gradients: dict[str, dict[int, tuple[torch.Tensor, ...]]] = field(
        default_factory=dict
    )
    readout_input: torch.Tensor | None = None
    readout_gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: dict[int, Activations] = field(default_factory=dict)
    cache: TargetCache | None = None


def linearize(
    adapter: ModelAdapter,
    target: ModelInputs,
    sites: Iterable[tuple[int, str]],
    audio_id: int,
    visual_id: int,
    *,
    attention: bool = False,
    readout: bool = False,
    graddrop: bool = False,
    cache: bool = False,
) -> Linearization:
    """One forward of ``target`` and one backward pass per metric (plus one per layer for
    ``graddrop``); see :func:`linearize_rows`."""
    return linearize_rows(
        adapter,
        [target],
        sites,
        [(audio_id, visual_id)],
        attention=attention,
        readout=readout,
        graddrop=graddrop,
        cache=cache,
    )[0]


def linearize_rows(
    adapter: ModelAdapter,
    targets: Sequence[ModelInputs],
    sites: Iterable[tuple[int, str]],
    answers: Sequence[tuple[int, int]],
    *,
    attention: bool = False,
    readout: bool = False,
    graddrop: bool = False,
    cache: bool = False,
) -> list[Linearization]:
    """The linearization of each of ``targets`` (runs of one token layout, with their (audio,
    visual) answer ids), from one batched forward and one backward pass per metric (plus one
    per layer for ``graddrop``): rows of a batch do not interact, so the gradient of the sum of
    the rows' metrics is each row's own. ``attention`` and ``readout`` also keep what the AtP*
    corrections read; ``cache`` what exact patched runs resume from (:class:`TargetCache`).

    Parameters are frozen for the pass (no parameter gradients are kept); the first decoder
    layer's input is made a leaf that requires grad so that gradients reach every site.
    """
    root = adapter.root
    layers: nn.ModuleList = _attribute(root, adapter.layers_path)
    rows = len(targets)
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    seen: dict[str, Any] = {"inputs": [torch.empty(0)] * len(layers)}
    dropping: dict[str, int | None] = {"layer": None}

    def start_graph(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs

    def keep(site: tuple[int, str], where: str):
        def hook(module: nn.Module, *arguments: Any) -> None:
            if where == "input":  # a pre-hook's (args, kwargs)
                args, kwargs = arguments
                value = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            else:  # a forward hook's (args, kwargs, output)
                value = adapter.output_tensor(site[1], arguments[-1])
            value.retain_grad()
            outputs[site] = value

        return hook

    def keep_input(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            seen["inputs"][index] = hidden.detach()
            seen.setdefault("rotary", kwargs.get("position_embeddings"))

        return hook

    def keep_readout(module: nn.Module, args: tuple) -> None:
        args[0].retain_grad()
        seen["readout"] = args[0]

    def drop_gradient(index: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            value = output[0] if isinstance(output, tuple) else output
            value.register_hook(
                lambda grad: torch.zeros_like(grad) if dropping["layer"] == index else None
            )

        return hook

    hooks: list[tuple[nn.Module, str, Any]] = [(layers[0], "pre", start_graph)]
    for site in set(sites):
        module, where = adapter.site(root, *site)
        hooks.append((module, "pre" if where == "input" else "post", keep(site, where)))
    if attention or cache:
        hooks += [(layer, "pre", keep_input(index)) for index, layer in enumerate(layers)]
    if readout:
        hooks.append((_attribute(root, adapter.final_norm_path), "pre-args", keep_readout))
    if graddrop:
        hooks += [
            (adapter.component(root, index, component), "post", drop_gradient(index))
            for index in range(len(layers))
            for component in ("attention", "mlp")
        ]
    kwargs = adapter.forward_kwargs(adapter.stack_inputs(targets))
    if cache:
        kwargs["use_cache"] = True
    audio, visual = (torch.tensor(ids) for ids in zip(*answers, strict=True))
    with ExitStack() as stack:
        for module, kind, hook in hooks:
            stack.enter_context(_hooked(module, kind, hook))
        records = stack.enter_context(recorded_attention(adapter)) if attention else {}
        stack.enter_context(_frozen(root))
        stack.enter_context(torch.enable_grad())
        output = root(**kwargs)
        logits = adapter.answer_logits(output.logits)
        metrics = answer_metrics(logits, audio, visual)
        retained = list(outputs.values())
        retained += [t for r in records.values() for t in (r.query, r.key, r.probs)]
        retained += [seen["readout"]] if readout else []
        results = [
            Linearization(
                {site: _row(adapter, site, t, row).detach() for site, t in outputs.items()},
                {},
                {name: float(value[row].detach()) for name, value in metrics.items()},
            )
            for row in range(rows)
        ]
        for name, value in metrics.items():
            gradients = _backward(value.sum(), outputs, retained)
            attention_gradients = {
                index: tuple(_gradient(t) for t in (r.query, r.key, r.probs))
                for index, r in records.items()
            }
            for row, result in enumerate(results):
                result.gradients[name] = {
                    site: _row(adapter, site, g, row).clone() for site, g in gradients.items()
                }
                result.attention_gradients[name] = {
                    index: tuple(g[row] for g in grads)
                    for index, grads in attention_gradients.items()
                }
                if readout:
                    result.readout_gradients[name] = _gradient(seen["readout"])[row, -1]
        for index in range(len(layers)) if graddrop else ():
            dropping["layer"] = index
            gradients = _backward(metrics["logit_diff"].sum(), outputs, retained)
            for row, result in enumerate(results):
                result.dropped[index] = {
                    site: _row(adapter, site, g, row).clone() for site, g in gradients.items()
                }
    if attention or cache:
        cos, sin = (t.detach() for t in seen["rotary"])
    for row, result in enumerate(results):
        if attention or cache:
            rotary = (_one_row(cos, row, rows), _one_row(sin, row, rows))
            result.layer_inputs = [value[row] for value in seen["inputs"]]
            result.position_embeddings = rotary
        if attention:
            result.attention = {
                index: AttentionRecord(
                    r.query[row : row + 1].detach(),
                    r.key[row : row + 1].detach(),
                    None if r.mask is None else _one_row(r.mask, row, rows).detach(),
                    r.scaling,
                    r.probs[row : row + 1].detach(),
                )
                for index, r in records.items()
            }
        if readout:
            result.readout_input = seen["readout"][row, -1].detach()
        if cache:
            found = output.cache if hasattr(output, "cache") else output.past_key_values
            layer_cache = found.layers
            result.cache = TargetCache(
                layer_inputs=[value[row : row + 1] for value in seen["inputs"]],
                position_embeddings=rotary,
                keys=[layer.keys[row : row + 1].detach() for layer in layer_cache],
                values=[layer.values[row : row + 1].detach() for layer in layer_cache],
                answer_logits=logits[row : row + 1].detach(),
                activations=result.activations,
                input_ids=targets[row]["input_ids"],
            )
    return results


@contextmanager
def _hooked(module: nn.Module, kind: str, hook: Any) -> Iterator[None]:
    """``hook`` on ``module`` inside the block: 'pre' (with kwargs, may replace them),
    'pre-args' (positional arguments only) or 'post' (forward hook)."""
    if kind == "pre":
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    elif kind == "pre-args":
        handle = module.register_forward_pre_hook(hook)
    else:
        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of ``model`` requires grad inside the block."""
    flags = [parameter.requires_grad for parameter in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


def _backward(
    value: torch.Tensor,
    outputs: Mapping[tuple[int, str], torch.Tensor],
    retained: Sequence[torch.Tensor],
) -> Activations:
    """Gradients of ``value`` at every site (batched, as the site's tensor); the graph is kept
    for the next pass."""
    for tensor in retained:
        tensor.grad = None
    value.backward(retain_graph=True)
    return {site: _gradient(tensor).detach() for site, tensor in outputs.items()}


def _row(
    adapter: ModelAdapter, site: tuple[int, str], tensor: torch.Tensor, row: int
) -> torch.Tensor:
    """One row of a site's batched tensor (the adapter says which axis holds rows)."""
    return tensor.select(adapter.batch_axis(site[1]), row)


def _one_row(tensor: torch.Tensor, row: int, rows: int) -> torch.Tensor:
    """Row ``row`` of a (rows or 1, …) tensor, keeping its leading axis (a tensor of one row
    is shared by every row)."""
    return tensor[row : row + 1] if tensor.shape[0] == rows else tensor[:1]


def _gradient(tensor: torch.Tensor) -> torch.Tensor:
    """The gradient a backward pass left on ``tensor`` (zeros where the metric does not depend
    on it)."""
    return tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)


def site_changes(
    delta: Activations,
    gradients: Activations,
    group_masks: Mapping[str, torch.Tensor],
    groups: Iterable[str],
) -> Cells:
    """First-order change of one metric (``gradients`` are its) when each site's ``groups``
    positions change by ``delta`` (source − target, (…, seq, hidden) per site: Gemma 3n's
    residual has a leading stream axis, summed over)."""
    cells: Cells = {}
    for site, gradient in gradients.items():
        changes = per_position(delta[site] * widened(gradient))
        for group in groups:
            cells[(*site, group)] = float(changes[group_masks[group]].sum())
    return cells


def per_position(values: torch.Tensor) -> torch.Tensor:
    """(…, seq, hidden) → (seq,): summed over the hidden axis and any leading stream axis
    (Gemma 3n's residual)."""
    summed = values.sum(-1)
    return summed.flatten(0, -2).sum(0) if summed.ndim > 1 else summed


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32, or float64 if it is already (half precisions are too coarse)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def condition_changes(conditions: Sequence[Condition], cells: Mapping[Any, float]) -> np.ndarray:
    """Estimated change (len(conditions),) of each condition: its window's cells summed."""
    return np.array(
        [
            sum(cells[(layer, c.component, c.position_group)] for layer in c.layers)
            for c in conditions
        ],
        dtype=np.float64,
    )


def budgeted(spread: Sequence[float], costs: Sequence[int], budget: float) -> set[int]:
    """Indices of the cells to patch exactly within ``budget`` of the work of patching every
    cell: those whose patch changes nothing (cost 0), then, greedily, the largest ``spread`` (a
    cell's ``Σ ‖Δ‖²``, the scale of a first-order estimate's error) per unit of ``costs`` while
    the budget lasts."""
    chosen = {index for index, cost in enumerate(costs) if cost == 0}
    allowed = budget * sum(costs)
    order = sorted(
        (index for index, cost in enumerate(costs) if cost > 0),
        key=lambda index: -spread[index] / costs[index],
    )
    spent = 0
    for index in order:
        if spent + costs[index] <= allowed:
            chosen.add(index)
            spent += costs[index]
    return chosen


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
