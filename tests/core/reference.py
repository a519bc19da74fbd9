"""An independent computation of patching effects with plain torch forward hooks.

Shares nothing with patchwork's engine but the model: one full forward per condition, as
TransformerLens-style loops do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

LAYER_PATH = ("model", "language_model", "layers")


def decoder_layers(thinker: nn.Module) -> nn.ModuleList:
    return thinker.model.language_model.layers


def module_of(thinker: nn.Module, layer: int, component: str) -> nn.Module:
    block = decoder_layers(thinker)[layer]
    return {"residual": block, "attention": block.self_attn, "mlp": block.mlp}[component]


def hidden(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index]


def capture(thinker: nn.Module, inputs: dict, sites: Sequence[tuple[int, str]]) -> dict:
    saved: dict = {}
    handles = []
    for layer, component in sites:

        def keep(module, args, output, key=(layer, component)):
            saved[key] = hidden(output)[0].detach().clone()

        handles.append(module_of(thinker, layer, component).register_forward_hook(keep))
    try:
        with torch.no_grad():
            thinker(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return saved


def patched_answer_logits(
    thinker: nn.Module,
    inputs: dict,
    source: dict,
    layers: Sequence[int],
    component: str,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Answer logits (vocab,) of ``inputs`` with ``source`` activations at ``positions``."""
    handles = []
    for layer in layers:

        def replace(module, args, output, layer=layer):
            tensor = hidden(output).clone()
            tensor[0, positions] = source[(layer, component)][positions]
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        handles.append(module_of(thinker, layer, component).register_forward_hook(replace))
    try:
        with torch.no_grad():
            return thinker(**inputs).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()


def logit_diff(logits: torch.Tensor, audio_id: int, visual_id: int) -> float:
    return float(logits[audio_id] - logits[visual_id])
