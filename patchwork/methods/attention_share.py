"""Attention share as a study method: where the answer (and text) positions look, layer by layer.

For every layer, head, query group and key group: the attention probability mass that the query
group's positions put on the key group's positions (summed over keys, averaged over queries).
Weights are the eager attention probabilities; a decoder loaded with sdpa is switched to eager for
this method's forward only (the weights are the same function of q and k, so the share does not
depend on the study's attention setting). Key groups ``audio, video, image, text, answer`` partition
the positions, so their shares add up to 1.

Stored: ``share`` (sample, share_layer, share_query, share_key, share_head) and ``share_mean``
(sample, share_layer, share_query, share_key), the mean over heads. Unitless fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from patchwork.data.sample import ModelInputs, Sample
from patchwork.methods.method import Method
from patchwork.models.adapter import ModelAdapter
from patchwork.models.attention import decoder_attention
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import AttentionShare


def attention_weights(
    adapter: ModelAdapter, inputs: ModelInputs, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Eager attention probabilities per layer: (heads, seq, seq) of a one-sample run."""
    saved: dict[int, torch.Tensor] = {}
    handles = []

    def keep(layer: int):
        def hook(module: torch.nn.Module, args: tuple, output: tuple) -> None:
            saved[layer] = output[1][0].detach().float()

        return hook

    with decoder_attention(adapter, "eager"):
        try:
            for layer in layers:
                module = adapter.component(adapter.root, layer, "attention")
                handles.append(module.register_forward_hook(keep(layer)))
            with torch.no_grad():
                adapter.root(**adapter.forward_kwargs(inputs))
        finally:
            for handle in handles:
                handle.remove()
    return saved


def group_share(weights: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per head: mass from ``queries`` (seq,) bool to ``keys`` (seq,) bool of weights
    (heads, seq, seq), summed over keys and averaged over queries → (heads,)."""
    mass = weights[:, queries][:, :, keys].sum(-1)
    return mass.mean(-1)


class AttentionShareMethod(Method):
    kind = "attention_share"
    example = """\
  - kind: attention_share
    run: conflict
"""
    spec: AttentionShare

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.layers = self.resolve_layers(self.spec.layers)
        config = getattr(self.loaded.adapter.config, "text_config", self.loaded.adapter.config)
        self.heads = int(config.num_attention_heads)

    def runs(self) -> tuple[str, ...]:
        return (self.spec.run,)

    def variables(self) -> dict[str, ArraySpec]:
        coords: dict[str, list] = {
            "share_layer": list(self.layers),
            "share_query": list(self.spec.queries),
            "share_key": list(self.spec.keys),
        }
        dims = ("sample", "share_layer", "share_query", "share_key")
        return {
            "share": ArraySpec(
                (*dims, "share_head"),
                {**coords, "share_head": list(range(self.heads))},
                long_name="share of the query group's attention on the key group, per head",
                units="1",
            ),
            "share_mean": ArraySpec(
                dims,
                coords,
                long_name="share of the query group's attention on the key group, head mean",
                units="1",
            ),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        adapter = patcher.adapter
        device = next(adapter.root.parameters()).device
        spec = self.spec
        share = np.full(
            (len(samples), len(self.layers), len(spec.queries), len(spec.keys), self.heads),
            np.nan,
            dtype=np.float32,
        )
        for row, sample in enumerate(samples):
            inputs = {key: value.to(device) for key, value in sample.runs[spec.run].items()}
            weights = attention_weights(adapter, inputs, self.layers)
            groups = {
                name: mask.to(device)
                for name, mask in adapter.position_groups(inputs["input_ids"]).items()
            }
            for li, layer in enumerate(self.layers):
                for qi, query in enumerate(spec.queries):
                    if not bool(groups[query].any()):
                        continue
                    for ki, key in enumerate(spec.keys):
                        values = group_share(weights[layer], groups[query], groups[key])
                        share[row, li, qi, ki] = values.cpu().numpy()
        return {"share": share, "share_mean": share.mean(-1)}
