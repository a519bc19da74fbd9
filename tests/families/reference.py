"""Independent patching effects with plain torch hooks: one forward per condition, batch of one.

Shares nothing with patchwork's engine but the loaded model and the run inputs. Each family's
facts are restated here from transformers' sources, not taken from the adapters:

- every test model keeps its decoder layers at ``model.language_model.layers``;
- Qwen3-Omni adds DeepStack features after a layer's output: the residual after layer l is the
  first argument of layer l+1 (of the final norm after the last layer);
- Gemma 3n's layer output is (4 streams, batch, seq, hidden).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

Source = dict[tuple[int, str], torch.Tensor]


def _text_model(model: nn.Module) -> nn.Module:
    return model.model.language_model


def _site(model: nn.Module, family: str, layer: int, component: str) -> tuple[nn.Module, bool]:
    """(module, is_pre_hook) holding ``component`` of ``layer``."""
    text = _text_model(model)
    block = text.layers[layer]
    if component == "attention":
        return block.self_attn, False
    if component == "mlp":
        return block.mlp, False
    if family == "qwen3_omni":
        following = text.layers[layer + 1] if layer + 1 < len(text.layers) else text.norm
        return following, True
    return block, False


def _row0(family: str, component: str, tensor: torch.Tensor) -> torch.Tensor:
    if family == "gemma3n" and component == "residual":
        return tensor[:, 0]
    return tensor[0]


def _hook(
    model: nn.Module, family: str, layer: int, component: str, edit: Callable
) -> torch.utils.hooks.RemovableHandle:
    module, pre = _site(model, family, layer, component)
    if pre:

        def pre_hook(module, args):
            return (edit(args[0]), *args[1:])

        return module.register_forward_pre_hook(pre_hook)

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    return module.register_forward_hook(hook)


def forward(model: nn.Module, inputs: dict, extra: dict | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **(extra or {})).logits[0, -1]


def capture(
    model: nn.Module, family: str, inputs: dict, layers: int, extra: dict | None = None
) -> Source:
    saved: Source = {}
    handles = []
    for layer in range(layers):
        for component in ("residual", "attention", "mlp"):

            def keep(tensor, key=(layer, component)):
                saved[key] = _row0(family, key[1], tensor).detach().clone()
                return tensor

            handles.append(_hook(model, family, layer, component, keep))
    try:
        forward(model, inputs, extra)
    finally:
        for handle in handles:
            handle.remove()
    return saved


def patched(
    model: nn.Module,
    family: str,
    inputs: dict,
    source: Source,
    layers: Sequence[int],
    component: str,
    positions: torch.Tensor,
    extra: dict | None = None,
) -> torch.Tensor:
    """Answer logits (vocab,) with ``source`` at ``positions`` of ``component`` in ``layers``."""
    handles = []
    for layer in layers:

        def replace(tensor, layer=layer):
            tensor = tensor.clone()
            if family == "gemma3n" and component == "residual":
                tensor[:, 0, positions] = source[(layer, component)][:, positions]
            else:
                tensor[0, positions] = source[(layer, component)][positions]
            return tensor

        handles.append(_hook(model, family, layer, component, replace))
    try:
        return forward(model, inputs, extra)
    finally:
        for handle in handles:
            handle.remove()


def check_store(results, loaded, samples, family: str, extra: dict | None = None) -> int:
    """Assert every stored effect equals the plain-torch one (1e-5); returns cells checked."""
    model = loaded.model
    layers = len(_text_model(model).layers)
    checked = 0
    for sample in samples:
        clean, conflict = dict(sample.runs["clean"]), dict(sample.runs["conflict"])
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        source = capture(model, family, clean, layers, extra)
        clean_logits, conflict_logits = (
            forward(model, clean, extra),
            forward(model, conflict, extra),
        )
        base = results["baseline"].sel(sample=sample.sample_id)
        for run, logits in (("clean", clean_logits), ("conflict", conflict_logits)):
            expected = float(logits[ids[0]] - logits[ids[1]])
            stored = float(base.sel(run=run, metric="logit_diff"))
            assert stored == pytest.approx(expected, abs=1e-5)
        groups = loaded.adapter.position_groups(conflict["input_ids"])
        cells = results["effect"].sel(sample=sample.sample_id)
        for layer in range(layers):
            for group in results["position_group"].values:
                for component in ("residual", "attention", "mlp"):
                    logits = patched(
                        model,
                        family,
                        conflict,
                        source,
                        [layer],
                        component,
                        groups[str(group)],
                        extra,
                    )
                    cell = cells.sel(layer=layer, position_group=group, component=component)
                    expected = float(logits[ids[0]] - logits[ids[1]])
                    assert float(cell.sel(metric="logit_diff")) == pytest.approx(
                        expected, abs=1e-5
                    ), (sample.sample_id, layer, str(group), component)
                    probability = float(torch.softmax(logits, -1)[ids[0]])
                    assert float(cell.sel(metric="audio_probability")) == pytest.approx(
                        probability, abs=1e-5
                    )
                    checked += 1
    return checked
