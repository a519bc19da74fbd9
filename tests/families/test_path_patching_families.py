"""Path patching by definition (Wang et al. 2022: attention heads off the path frozen, MLPs
recomputed) on every family's tiny checkpoint, against plain runs written here.

The reference shares nothing with patchwork but the weights and the run inputs. Per sender:

1. the frozen run: the conflict run with the sender's clean value (residual after layer 0 as the
   family's next module reads it — Qwen3-Omni's after DeepStack, Gemma 3n's four AltUp streams —
   the MLP's output or one head's ``o_proj`` input) at the sender group's positions, every later
   attention module returning its cached conflict output; the receiving layer's ``q_proj``,
   ``k_proj`` and ``v_proj`` outputs are kept;
2. per receiver input: the conflict run with only that projection's output replaced by the frozen
   run's (the model's own q/k norms, rotary and attention follow); its heads' outputs are kept;
3. per receiving head: the conflict run with only that head's output taken from step 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchwork.engine.runner import load_samples

from . import reference
from .test_other_methods import VISUAL, _groups, _query_heads, _run_family_study, _text_model

#: The receiving layer: the last, so that an MLP lies between it and a sender of layer 0 where
#: the checkpoint has three layers (the generic Qwen2-Audio has two).
RECEIVER = {"qwen2_5_omni": 2, "qwen3_omni": 2, "gemma3n": 2, "generic": 1}
PROJECTIONS = {"queries": "q_proj", "keys": "k_proj", "values": "v_proj"}


def _tensor(value):
    return value[0] if isinstance(value, tuple) else value


def _run(model, inputs, extra, hooks):
    """Answer logits (vocab,) of one run with ``hooks`` (module, 'pre' | 'post', function)."""
    handles = [
        module.register_forward_pre_hook(function)
        if kind == "pre"
        else module.register_forward_hook(function)
        for module, kind, function in hooks
    ]
    try:
        return reference.forward(model, inputs, extra)
    finally:
        for handle in handles:
            handle.remove()


def _keep(store, key):
    def hook(module, args, output=None):
        store[key] = (args[0] if output is None else _tensor(output))[0].detach().clone()

    return hook


def _pin(value):
    def hook(module, args, output):
        tensor = value[None].clone()
        return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

    return hook


def _write(value, positions):
    def hook(module, args, output):
        tensor = _tensor(output).clone()
        tensor[0, positions] = value[positions]
        return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

    return hook


def _frozen_projections(model, family, clean, conflict, extra, sender, positions, receiver):
    """Step 1: the receiving layer's projection outputs (seq, width) in the frozen run."""
    component, head = sender
    text = _text_model(model)
    first = text.layers[0]
    heads = _query_heads(model)
    kept: dict = {}
    _run(
        model,
        clean,
        extra,
        [
            (first.mlp, "post", _keep(kept, "mlp")),
            (first.self_attn.o_proj, "pre", _keep(kept, "heads")),
        ],
    )
    residual = reference.capture(model, family, clean, len(text.layers), extra)[(0, "residual")]
    _run(
        model,
        conflict,
        extra,
        [
            (layer.self_attn, "post", _keep(kept, ("attention", i)))
            for i, layer in enumerate(text.layers)
        ],
    )
    hooks = []
    if component == "residual":

        def write_residual(tensor):
            tensor = tensor.clone()
            if family == "gemma3n":  # (streams, batch, seq, hidden)
                tensor[:, 0, positions] = residual[:, positions]
            else:
                tensor[0, positions] = residual[positions]
            return tensor

        handle = reference._hook(model, family, 0, "residual", write_residual)
    elif component == "mlp":
        hooks.append((first.mlp, "post", _write(kept["mlp"], positions)))
    else:
        width = kept["heads"].shape[-1] // heads
        columns = slice(head * width, (head + 1) * width)

        def send(module, args):
            hidden = args[0].clone()
            hidden[0, positions, columns] = kept["heads"][positions, columns]
            return (hidden, *args[1:])

        hooks.append((first.self_attn.o_proj, "pre", send))
    for index in range(1, len(text.layers)):
        hooks.append((text.layers[index].self_attn, "post", _pin(kept[("attention", index)])))
    attention = text.layers[receiver].self_attn
    hooks += [
        (getattr(attention, name), "post", _keep(kept, name)) for name in PROJECTIONS.values()
    ]
    try:
        _run(model, conflict, extra, hooks)
    finally:
        if component == "residual":
            handle.remove()
    return {name: kept[module] for name, module in PROJECTIONS.items()}


@pytest.mark.parametrize(
    ("family", "attention"),
    [
        ("qwen2_5_omni", "sdpa"),
        ("qwen2_5_omni", "eager"),
        ("qwen3_omni", "sdpa"),
        ("qwen3_omni", "eager"),
        ("gemma3n", "sdpa"),
        ("generic", "sdpa"),
    ],
)
def test_path_patching_equals_plain_runs_on_every_family(
    tmp_path: Path, family_root: Path, checkpoint, family: str, attention: str
) -> None:
    visual, receiver = VISUAL[family], RECEIVER[family]
    methods = f"""\
  - kind: path_patching
    sender_group: {visual}
    senders: [residual, mlp, heads]
    sender_layers: [0]
    receivers: [queries, keys, values]
    receiver_layers: [{receiver}]
"""
    study, results, loaded, extra = _run_family_study(
        tmp_path, family_root, checkpoint, family, methods, attention
    )
    assert bool(results["done"].all())
    model = loaded.model
    heads = _query_heads(model)
    attention_module = _text_model(model).layers[receiver].self_attn
    effect = results["path_effect"].sel(
        metric="logit_diff", sender_layer=0, receiver_layer=receiver
    )
    checked, moved = 0, []
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        clean, conflict = dict(sample.runs["clean"]), dict(sample.runs["conflict"])
        positions = _groups(model, conflict["input_ids"])[visual]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        base = float(
            results["path_baseline"].sel(
                sample=sample.sample_id, path_run="conflict", metric="logit_diff"
            )
        )
        for sender in [("residual", None), ("mlp", None)] + [("head", h) for h in range(heads)]:
            frozen = _frozen_projections(
                model, family, clean, conflict, extra, sender, positions, receiver
            )
            label = sender[0] if sender[1] is None else f"head {sender[1]}"
            for receiver_input, name in PROJECTIONS.items():
                kept: dict = {}
                _run(
                    model,
                    conflict,
                    extra,
                    [
                        (getattr(attention_module, name), "post", _pin(frozen[receiver_input])),
                        (attention_module.o_proj, "pre", _keep(kept, "heads")),
                    ],
                )
                width = kept["heads"].shape[-1] // heads
                for head in range(heads):
                    columns = slice(head * width, (head + 1) * width)

                    def one_head(module, args, columns=columns, kept=kept):
                        hidden = args[0].clone()
                        hidden[0, :, columns] = kept["heads"][:, columns]
                        return (hidden, *args[1:])

                    logits = _run(
                        model, conflict, extra, [(attention_module.o_proj, "pre", one_head)]
                    )
                    expected = float(logits[ids[0]] - logits[ids[1]])
                    stored = float(
                        effect.sel(
                            sample=sample.sample_id,
                            sender=label,
                            receiver_head=head,
                            receiver_input=receiver_input,
                        )
                    )
                    where = (sample.sample_id, label, receiver_input, head)
                    assert stored == pytest.approx(expected, abs=1e-5), where
                    moved.append(abs(stored - base))
                    checked += 1
    assert checked == len(results["sample"]) * (2 + heads) * 3 * heads
    assert max(moved) > 1e-4  # some path carries the picture's (or the sound's) change
