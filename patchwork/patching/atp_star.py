"""Corrections to attribution patching's linear estimate (Kramár et al. 2024, "AtP*"), for sweeps
over (layer, component, position group) cells.

A patched site changes the residual stream at its positions ``P`` by ``Δ`` (source − target), and
every later layer reads that change directly. The linear estimate treats two places on that path
as if they were straight lines; both are recomputed exactly here, for the direct path only:

- ``qk`` (AtP*'s QK fix): every later layer ``j``'s attention softmax. The queries and keys the
  changed residual ``x_j + Δ`` gives at ``P`` are projected through layer ``j`` itself; the new
  attention probabilities of the rows and columns they change are computed exactly, and their
  change, read through ``∂metric/∂probabilities``, replaces the first-order change through those
  queries and keys. A saturated softmax is where the linear estimate misses most.
- ``readout``: the final norm, unembedding and metric at the answer position, applied to
  ``x_L + Δ`` exactly in place of their first-order change. The final RMS norm rescales a
  residual whose norm the patch changes; its gradient cannot see that.
- ``graddrop`` (AtP*'s GradDrop, against cancellation): for each layer ``d``, the estimate with no
  gradient flowing back through layer ``d``'s attention and MLP; the mean of their absolute values
  over the layers outside a condition's window ranks conditions whose paths cancel.

Each correction returns cells keyed by (layer, component, position_group), added to the linear
cells before windows are summed. Corrections are second order: they vanish as ``Δ`` shrinks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from patchwork.models.adapter import ModelAdapter, _attribute
from patchwork.models.attention import project
from patchwork.patching.attribution import (
    Cells,
    Linearization,
    condition_changes,
    site_changes,
    widened,
)
from patchwork.patching.metrics import answer_metrics
from patchwork.patching.patcher import Activations, Condition

#: Relative change of an activation, in units of its dtype's epsilon, below which a position
#: counts as unchanged (float32: 1.2e-4).
CHANGE_TOLERANCE = 1000
#: Sites projected through one later layer at a time (bounds the correction's memory).
ROWS_PER_CHUNK = 16


def deltas(source: Activations, linearization: Linearization) -> Activations:
    """Source − target at every site, (…, seq, hidden), in float32 or wider."""
    return {
        site: widened(source[site] - value) for site, value in linearization.activations.items()
    }


def qk_corrections(
    adapter: ModelAdapter,
    linearization: Linearization,
    delta: Activations,
    group_masks: Mapping[str, torch.Tensor],
    groups: Iterable[str],
) -> dict[str, Cells]:
    """Per metric, each cell's exact-minus-linear change through later layers' attention softmax
    (see the module docstring)."""
    metrics = list(linearization.gradients)
    cells = {metric: dict.fromkeys(_keys(delta, groups), 0.0) for metric in metrics}
    changed = _changed_positions(linearization, delta)
    with torch.no_grad():
        for group in groups:
            positions = (group_masks[group].to(changed.device) & changed).nonzero()[:, 0]
            if len(positions) == 0:
                continue
            for layer in range(1, adapter.num_layers):
                sites = [site for site in delta if site[0] < layer]
                if not sites:
                    continue
                softmax = _LayerSoftmax(linearization, layer, positions)
                for first in range(0, len(sites), ROWS_PER_CHUNK):
                    chunk = sites[first : first + ROWS_PER_CHUNK]
                    rows = torch.stack([delta[site][positions] for site in chunk])
                    terms = softmax.terms(*_project(adapter, linearization, layer, positions, rows))
                    for index, metric in enumerate(metrics):
                        for site, value in zip(chunk, terms[:, index].tolist(), strict=True):
                            cells[metric][(*site, group)] += value
    return cells


def _changed_positions(linearization: Linearization, delta: Activations) -> torch.Tensor:
    """(seq,) True where some site's change exceeds float rounding (``CHANGE_TOLERANCE`` epsilons
    of the activation's norm). The target run here uses recorded attention, so positions the
    patch cannot reach (before the first token whose input differs) still differ by rounding; the
    correction, second order in the change, is negligible there."""
    changed = []
    for site, value in linearization.activations.items():
        tolerance = CHANGE_TOLERANCE * torch.finfo(delta[site].dtype).eps
        changed.append(delta[site].norm(dim=-1) > tolerance * widened(value).norm(dim=-1))
    return torch.stack(changed).any(0)


def _project(
    adapter: ModelAdapter,
    linearization: Linearization,
    layer: int,
    positions: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys layer ``layer`` computes at ``positions`` (n,) from its target-run input
    plus ``rows`` (rows, n, hidden)."""
    assert linearization.position_embeddings is not None
    cos, sin = (
        t[:, positions].expand(len(rows), -1, -1) for t in linearization.position_embeddings
    )
    target = linearization.layer_inputs[layer][positions]
    hidden = (widened(target) + rows).to(target.dtype)
    query, key = project(adapter, layer, hidden, (cos, sin))
    return widened(query), widened(key)


class _LayerSoftmax:
    """One layer's target-run attention and its gradients, read at changed ``positions``."""

    def __init__(self, linearization: Linearization, layer: int, positions: torch.Tensor) -> None:
        record = linearization.attention[layer]
        query, key = widened(record.query[0]), widened(record.key[0])
        probs = widened(record.probs[0])  # (heads, seq, seq)
        seq_len, device = probs.shape[-1], probs.device
        self.positions, self.scaling = positions, record.scaling
        self.query_at, self.key_at = query[:, positions], key[:, positions]
        self.groups = query.shape[0] // key.shape[0]
        self.keys = key.repeat_interleave(self.groups, dim=0).transpose(-1, -2)  # (h, dim, seq)
        self.mask = _additive_mask(record.mask, seq_len, device)[positions]  # (n, seq)
        gradients = [per_layer[layer] for per_layer in linearization.attention_gradients.values()]
        self.grad_query = torch.stack([widened(g[0][:, positions]) for g in gradients])
        self.grad_key = torch.stack([widened(g[1][:, positions]) for g in gradients])
        grad_probs = torch.stack([widened(g[2]) for g in gradients])  # (metrics, h, seq, seq)
        # rows at the changed positions: ⟨G, A'⟩ − ⟨G, A⟩ over whole rows, per head
        self.row_grads = grad_probs[:, :, positions].flatten(2).permute(1, 2, 0)  # (h, n·seq, k)
        self.row_before = (probs[:, positions].flatten(1)[:, None] @ self.row_grads).sum((0, 1))
        # later rows elsewhere: only the changed columns move
        others = torch.ones(seq_len, dtype=torch.bool, device=device)
        others[positions] = False
        others[: int(positions[0])] = False
        column = torch.zeros(seq_len, dtype=torch.bool, device=device)
        column[positions] = True
        other_probs = probs[:, others]  # (h, m, seq)
        self.other_query = query[:, others]  # (h, m, dim)
        self.old = other_probs[..., column]  # (h, m, n)
        self.log_rest = other_probs[..., ~column].sum(-1).log()  # (h, m)
        other_grads = grad_probs[:, :, others]
        self.grad_columns = other_grads[..., column]  # (metrics, h, m, n)
        self.grad_rest = (other_grads[..., ~column] * other_probs[..., ~column]).sum(-1)

    def terms(self, new_query: torch.Tensor, new_key: torch.Tensor) -> torch.Tensor:
        """Exact-minus-linear change (rows, metrics) for new queries (rows, heads, n, dim) and
        keys (rows, kv_heads, n, dim) at the changed positions."""
        rows = len(new_query)
        linear = torch.einsum("rhnd,mhnd->rm", new_query - self.query_at, self.grad_query)
        linear += torch.einsum("rhnd,mhnd->rm", new_key - self.key_at, self.grad_key)
        new_keys = new_key.repeat_interleave(self.groups, dim=1).transpose(-1, -2)
        scaled = new_query * self.scaling

        # heads lead, so each head is one matrix product: (h, rows·n, dim) @ (h, dim, seq)
        heads_first = scaled.transpose(0, 1).reshape(len(self.keys), -1, scaled.shape[-1])
        scores = torch.bmm(heads_first, self.keys).view(
            len(self.keys), rows, -1, self.mask.shape[1]
        )
        scores[..., self.positions] = torch.matmul(scaled, new_keys).transpose(0, 1)
        scores += self.mask
        new_rows = torch.softmax(scores, dim=-1).view(len(self.keys), rows, -1)
        exact = torch.bmm(new_rows, self.row_grads).sum(0) - self.row_before

        key_shift = new_keys - self.keys[..., self.positions]  # (rows, h, dim, n)
        log_weights = self.old.log() + torch.matmul(self.other_query * self.scaling, key_shift)
        log_rest = self.log_rest[None, ..., None].expand(rows, -1, -1, 1)
        log_total = torch.logsumexp(torch.cat([log_rest, log_weights], -1), -1)  # (rows, h, m)
        new_columns = (log_weights - log_total[..., None]).exp()
        exact += torch.einsum("rhm,khm->rk", (-log_total).exp() - 1, self.grad_rest)
        exact += torch.einsum("rhmn,khmn->rk", new_columns - self.old, self.grad_columns)
        return exact - linear


def _additive_mask(mask: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
    """The recorded additive mask (seq, seq), or a causal one where the run used none."""
    if mask is not None:
        return widened(mask[0, 0, :, :seq_len])
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    return torch.where(causal, 0.0, float("-inf"))


def readout_corrections(
    adapter: ModelAdapter,
    linearization: Linearization,
    delta: Activations,
    group_masks: Mapping[str, torch.Tensor],
    groups: Iterable[str],
    audio_id: int,
    visual_id: int,
) -> dict[str, Cells]:
    """Per metric, each cell's exact-minus-linear change through the final norm, unembedding and
    metric at the answer position, for groups that contain it (0 for the others)."""
    assert linearization.readout_input is not None
    metrics = list(linearization.gradients)
    cells = {metric: dict.fromkeys(_keys(delta, groups), 0.0) for metric in metrics}
    sites = list(delta)
    answer = torch.stack([delta[site][-1] for site in sites])
    target = linearization.readout_input
    readout = torch.cat([widened(target[None]), widened(target) + answer])
    norm = _attribute(adapter.root, adapter.final_norm_path)
    unembed = _attribute(adapter.root, adapter.unembed_path)
    with torch.no_grad():
        # row 0 is the target itself, read the same way: rounding cancels
        values = answer_metrics(unembed(norm(readout.to(target.dtype))), audio_id, visual_id)
    for metric in metrics:
        linear = answer @ widened(linearization.readout_gradients[metric])
        change = values[metric][1:] - values[metric][0] - linear
        for group in groups:
            if bool(group_masks[group][-1]):
                for site, value in zip(sites, change.tolist(), strict=True):
                    cells[metric][(*site, group)] = value
    return cells


def graddrop_magnitudes(
    conditions: Sequence[Condition],
    linearization: Linearization,
    delta: Activations,
    group_masks: Mapping[str, torch.Tensor],
) -> np.ndarray:
    """GradDrop's size of the change of ``logit_diff`` per condition (len(conditions),): the mean
    over the dropped layers outside its window of the absolute linear estimate with that layer
    dropped."""
    groups = {c.position_group for c in conditions}
    dropped = list(linearization.dropped)
    changes = np.abs(
        [
            condition_changes(
                conditions, site_changes(delta, linearization.dropped[d], group_masks, groups)
            )
            for d in dropped
        ]
    )  # (dropped layers, conditions)
    outside = np.array([[d not in c.layers for c in conditions] for d in dropped])
    return (changes * outside).sum(0) / outside.sum(0)


def _keys(delta: Activations, groups: Iterable[str]) -> list[tuple[int, str, str]]:
    return [(*site, group) for site in delta for group in groups]
