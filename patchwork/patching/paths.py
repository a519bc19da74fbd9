"""Path patching: a sender's clean signal reaching the answer through one receiving head's values,
every other path frozen to the target run (Wang et al. 2022, arXiv 2211.00593; Goldowsky-Dill et
al. 2023, arXiv 2304.05969).

Sender: the residual stream after decoder layer ``l`` at a position group ``G``, whose change
from the target (conflict) run to the source (clean) run is ``Δ`` (positions of G, hidden).
Receiver: the values that query head ``h`` of a later layer ``l'`` reads. With every attention
and MLP output between ``l`` and ``l'`` frozen to the target run, the receiver's input at ``G``
is the target's input to layer ``l'`` plus ``Δ`` — exactly, because the residual stream adds —
so its values there are ``v' = v_proj(norm(x + Δ))``. Head ``h`` keeps the target's attention
probabilities ``P_h`` (its queries and keys are not on the path) and its output changes by
``P_h[:, G] · (v' − v)`` at every query position; only that head's output is replaced (under
grouped-query attention its key/value head is shared, but the other query heads keep the
target's values). The patched run then goes on from layer ``l'`` as usual, and the answer's
metrics are read.

Needs the adapter's attention-input norm (``attention_norm_name``) and ``self_attn.v_proj``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack

import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.errors import ModelError
from patchwork.models.adapter import ModelAdapter
from patchwork.models.attention import recorded_attention
from patchwork.patching.heads import head_count, output_projection, with_head_edits


def value_projection(adapter: ModelAdapter, layer: int) -> tuple[nn.Module, nn.Linear]:
    """Layer ``layer``'s attention-input norm and value projection."""
    norm_name = adapter.attention_norm_name
    values = getattr(adapter.component(adapter.root, layer, "attention"), "v_proj", None)
    if norm_name is None or not isinstance(values, nn.Linear):
        raise ModelError(
            f"the {adapter.family} adapter does not say how a layer computes its values from the "
            "residual stream (attention_norm_name and self_attn.v_proj); path patching needs it"
        )
    return getattr(adapter.layer(adapter.root, layer), norm_name), values


def receiver_state(
    adapter: ModelAdapter, inputs: ModelInputs, layers: Iterable[int]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """One run of ``inputs`` (the target): per layer in ``layers`` its residual input (seq,
    hidden), its attention probabilities (heads, seq, seq) and its heads' outputs (seq, heads,
    head_dim)."""
    wanted = set(layers)
    heads = head_count(adapter)
    inputs_at: dict[int, torch.Tensor] = {}
    outputs_at: dict[int, torch.Tensor] = {}

    def keep_input(layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            inputs_at[layer] = hidden[0].detach()

        return hook

    def keep_output(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            value = args[0][0].detach()
            outputs_at[layer] = value.reshape(*value.shape[:-1], heads, -1)

        return hook

    with ExitStack() as stack, torch.no_grad():
        for layer in wanted:
            module = adapter.layer(adapter.root, layer)
            handle = module.register_forward_pre_hook(keep_input(layer), with_kwargs=True)
            stack.callback(handle.remove)
            projection = output_projection(adapter, layer)
            stack.callback(projection.register_forward_pre_hook(keep_output(layer)).remove)
        records = stack.enter_context(recorded_attention(adapter))
        adapter.root(**adapter.forward_kwargs(inputs))
        probs = {layer: records[layer].probs[0].detach() for layer in wanted}
    return inputs_at, probs, outputs_at


def head_change(
    adapter: ModelAdapter,
    layer: int,
    head: int,
    layer_input: torch.Tensor,
    probs: torch.Tensor,
    delta: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Change (seq, head_dim) of query head ``head``'s output at layer ``layer`` when the values
    it reads at ``positions`` are computed from ``layer_input`` + ``delta`` (positions,
    hidden) there."""
    norm, values = value_projection(adapter, layer)
    heads = head_count(adapter)
    kv_heads = values.out_features * heads // output_projection(adapter, layer).in_features
    width = values.out_features // kv_heads
    kv = head // (heads // kv_heads)
    with torch.no_grad():
        before = values(norm(layer_input[positions]))
        after = values(norm(layer_input[positions] + delta.to(layer_input.dtype)))
    moved = (after - before)[:, kv * width : (kv + 1) * width]
    return probs[head][:, positions].to(moved.dtype) @ moved


def patched_head_outputs(
    adapter: ModelAdapter, target: ModelInputs, rows: Sequence[tuple[int, int, torch.Tensor]]
) -> torch.Tensor:
    """Answer logits (len(rows), vocab) of the target run, each row with one head's output
    (layer, head, new output (seq, head_dim)) replaced at every position."""
    by_layer: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for row, (layer, head, output) in enumerate(rows):
        by_layer.setdefault(layer, []).append((row, head, output))

    def replace(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            for row, head, output in by_layer[layer]:
                hidden[row, :, head] = output.to(hidden.dtype)
            return hidden

        return edit

    return with_head_edits(
        adapter, target, len(rows), {layer: replace(layer) for layer in by_layer}
    )
