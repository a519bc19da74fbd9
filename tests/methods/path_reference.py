"""Path patching by definition (Wang et al. 2022) in plain torch: the reference the path-patching
tests hold patchwork's stored paths to.

It shares nothing with patchwork but the model's weights: the sender's clean value is taken from
a hooked clean run; the frozen run is the conflict run with that value written at the sender
group's positions, every attention module after the sender's layer returning its cached
conflict-run output (and under ``attention+mlp`` every MLP after it, the sending head's own
layer's included), the rest recomputed by the model; the receiving layer's attention input is
hooked there. The answer is read from the conflict run whose receiving attention is recomputed by
hand, with one query head's queries, keys or values computed from that frozen input (Qwen3's q/k
norms applied as its attention applies them).

Qwen3-Omni adds DeepStack features to a layer's output before the next layer reads it, so its
residual stream after layer l is the next layer's input (``Anatomy.deepstack``), as in
``tests/families/reference.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from patchwork.engine.runner import load_samples
from patchwork.loading.model import load_model
from patchwork.patching.metrics import answer_metrics

from . import reference


@dataclass(frozen=True)
class Anatomy:
    """The facts the reference needs of a model: its decoder ``layers`` and final ``norm``, how a
    run is made (``extra`` forward arguments) and whether the residual stream after a layer is the
    next module's input (``deepstack``: Qwen3-Omni) rather than the layer's output."""

    model: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    extra: dict | None = None
    deepstack: bool = False

    def run(self, inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**inputs, **(self.extra or {})).logits[:, -1]

    def residual_site(self, index: int) -> tuple[nn.Module, bool]:
        """(module, is_pre_hook) whose output (or first input) is the residual after ``index``."""
        if self.deepstack:
            following = self.layers[index + 1] if index + 1 < len(self.layers) else self.norm
            return following, True
        return self.layers[index], False


def _tensor(value):
    return value[0] if isinstance(value, tuple) else value


def cached(anatomy: Anatomy, inputs: dict) -> dict:
    """One run's row 0 per layer: 'residual' (after the layer), 'mlp', 'attention' (outputs) and
    'heads' (the output projection's input), each (seq, width)."""
    saved, handles = {}, []
    for index, layer in enumerate(anatomy.layers):
        site, pre = anatomy.residual_site(index)
        if pre:
            handles.append(
                site.register_forward_pre_hook(
                    lambda m, a, key=("residual", index): saved.__setitem__(key, a[0][0].clone())
                )
            )
        else:
            handles.append(
                site.register_forward_hook(
                    lambda m, a, o, key=("residual", index): saved.__setitem__(
                        key, _tensor(o)[0].clone()
                    )
                )
            )
        for name, module in (("mlp", layer.mlp), ("attention", layer.self_attn)):
            handles.append(
                module.register_forward_hook(
                    lambda m, a, o, key=(name, index): saved.__setitem__(key, _tensor(o)[0].clone())
                )
            )
        handles.append(
            layer.self_attn.o_proj.register_forward_pre_hook(
                lambda m, a, key=("heads", index): saved.__setitem__(key, a[0][0].clone())
            )
        )
    try:
        anatomy.run(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return saved


def frozen_inputs(anatomy: Anatomy, conflict, clean, frozen, sender, freeze, positions) -> dict:
    """Each decoder layer's attention input (seq, hidden) in the frozen run of ``sender``
    (component, layer, head)."""
    layers = anatomy.layers
    component, sent_layer, head = sender
    dim = layers[0].self_attn.head_dim
    inputs, handles = {}, []

    def write(value):
        def hook(module, args, output):
            tensor = _tensor(output).clone()
            tensor[0, positions] = value[positions]
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        return hook

    def pin(value):
        def hook(module, args, output):
            tensor = value[None].clone()
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        return hook

    def write_input(value):
        def pre_hook(module, args):
            tensor = args[0].clone()
            tensor[0, positions] = value[positions]
            return (tensor, *args[1:])

        return pre_hook

    def send_head(module, args):
        hidden = args[0].clone()
        columns = slice(head * dim, (head + 1) * dim)
        hidden[0, positions, columns] = clean[("heads", sent_layer)][positions, columns]
        return (hidden, *args[1:])

    layer = layers[sent_layer]
    if component == "residual":
        site, pre = anatomy.residual_site(sent_layer)
        value = clean[("residual", sent_layer)]
        if pre:
            handles.append(site.register_forward_pre_hook(write_input(value)))
        else:
            handles.append(site.register_forward_hook(write(value)))
    elif component == "mlp":
        handles.append(layer.mlp.register_forward_hook(write(clean[("mlp", sent_layer)])))
    else:
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(send_head))
    for index, later in enumerate(layers):
        if index > sent_layer:
            handles.append(later.self_attn.register_forward_hook(pin(frozen[("attention", index)])))
        mlp_pinned = index > sent_layer or (index == sent_layer and component == "head")
        if freeze == "attention+mlp" and mlp_pinned:
            handles.append(later.mlp.register_forward_hook(pin(frozen[("mlp", index)])))
        handles.append(
            later.self_attn.register_forward_pre_hook(
                lambda m, a, k, index=index: inputs.__setitem__(
                    index, k.get("hidden_states", a[0] if a else None)[0].clone()
                ),
                with_kwargs=True,
            )
        )
    try:
        anatomy.run(conflict)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def path_logit_diff(
    anatomy: Anatomy, conflict, receiver, head, receiver_input, frozen_input, ids
) -> float:
    """The conflict run with layer ``receiver``'s attention recomputed by hand, query head
    ``head`` reading its ``receiver_input`` computed from ``frozen_input`` (seq, hidden)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        captured["rotary"] = kwargs["position_embeddings"]

    def projected(module, hidden, cos, sin):
        seq, dim = hidden.shape[1], module.head_dim
        q = module.q_proj(hidden).view(1, seq, -1, dim)
        k = module.k_proj(hidden).view(1, seq, -1, dim)
        if hasattr(module, "q_norm"):  # Qwen3: RMS norms over each head's queries and keys
            q, k = module.q_norm(q), module.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = module.v_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
        q = q * cos[:, None] + reference._rotate(q) * sin[:, None]
        k = k * cos[:, None] + reference._rotate(k) * sin[:, None]
        repeat = q.shape[1] // k.shape[1]
        return q, k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)

    def replace(module, args, output):
        hidden = captured["hidden"]
        cos, sin = captured["rotary"]
        q, k, v = projected(module, hidden, cos, sin)
        moved = projected(module, frozen_input[None], cos, sin)
        which = ("queries", "keys", "values").index(receiver_input)
        (q, k, v)[which][0, head] = moved[which][0, head]
        seq, dim = hidden.shape[1], module.head_dim
        scores = q @ k.transpose(-1, -2) / dim**0.5
        allowed = torch.ones(seq, seq, dtype=torch.bool).tril()
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(1, seq, -1)
        return (module.o_proj(out), weights)

    attention = anatomy.layers[receiver].self_attn
    handles = [
        attention.register_forward_pre_hook(grab, with_kwargs=True),
        attention.register_forward_hook(replace),
    ]
    try:
        logits = anatomy.run(conflict)
    finally:
        for handle in handles:
            handle.remove()
    return float(answer_metrics(logits, *ids)["logit_diff"][0])


def check_against_reference(
    study,
    results,
    pairs,
    tolerance,
    anatomy: Callable[[nn.Module], Anatomy] | None = None,
    positions_of: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Every stored path of the sender/receiver layer ``pairs`` equals the reference; returns how
    many were checked. ``anatomy`` and ``positions_of`` (the sender group's (seq,) mask) default
    to the Qwen2.5-Omni thinker's and its video positions."""
    effect = results["path_effect"].sel(metric="logit_diff")
    freeze = study.interventions[0].freeze
    loaded = load_model(study.model)
    model = loaded.model
    if anatomy is None:
        text = model.model.language_model
        body = Anatomy(model, text.layers, text.norm)
    else:
        body = anatomy(model)
    if positions_of is None:

        def positions_of(model, ids):
            return reference.groups_of(ids, model.config)["video"]

    config = getattr(model.config, "thinker_config", model.config)
    heads = getattr(config, "text_config", config).num_attention_heads
    checked = 0
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        clean = cached(body, sample.runs["clean"])
        conflict = sample.runs["conflict"]
        frozen = cached(body, conflict)
        positions = positions_of(model, conflict["input_ids"])
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for label in effect["sender"].values:
            component, _, sent_head = str(label).partition(" ")
            for sent_layer in {sender for sender, _ in pairs}:
                sender = (component, sent_layer, int(sent_head) if sent_head else None)
                inputs = frozen_inputs(body, conflict, clean, frozen, sender, freeze, positions)
                for receiver in [r for s, r in pairs if s == sent_layer]:
                    for receiver_input in effect["receiver_input"].values:
                        for head in range(heads):
                            expected = path_logit_diff(
                                body,
                                conflict,
                                receiver,
                                head,
                                str(receiver_input),
                                inputs[receiver],
                                ids,
                            )
                            stored = effect.sel(
                                sample=sample.sample_id,
                                sender=label,
                                sender_layer=sent_layer,
                                receiver_layer=receiver,
                                receiver_head=head,
                                receiver_input=receiver_input,
                            )
                            where = (label, sent_layer, receiver, head, str(receiver_input))
                            assert float(stored) == pytest.approx(expected, abs=tolerance), where
                            checked += 1
    return checked
