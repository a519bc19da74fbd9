"""Path patching by definition (Wang et al. 2022) against a plain-torch reference written here.

The reference shares nothing with patchwork but the model's weights: the sender's clean value is
taken from a hooked clean run; the frozen run is the conflict run with that value written at the
sender group's positions, every attention module after the sender's layer returning its cached
conflict-run output (and under ``attention+mlp`` every MLP after it, the sending head's own
layer's included), the rest recomputed by the model; the receiving layer's attention input is
hooked there. The answer is read from the conflict run whose receiving attention is recomputed by
hand, with one query head's queries, keys or values computed from that frozen input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import open_results, parse_study, run_study
from patchwork.engine.runner import load_samples
from patchwork.errors import ModelError, StudyError
from patchwork.loading.model import load_model
from patchwork.patching.metrics import answer_metrics
from patchwork.patching.paths import check_structure

from . import reference
from .helpers import study_text

PATHS = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    sender_layers: [0, 1]
    receiver_layers: [1, 2]
"""

EVERY_KIND = """\
  - kind: path_patching
    from: clean
    into: conflict
    sender_group: video
    senders: [residual, mlp, heads]
    sender_layers: [0, 1]
    receivers: [queries, keys, values]
    receiver_layers: [1, 2]
    freeze: {freeze}
"""

TESTBED = """\
name: paths-testbed
model: {{family: qwen2_5_omni, checkpoint: testbed, attention: sdpa}}
dataset: {{generator: testbed, samples: 2, seed: 0}}
runs:
  clean: {{audio: own, picture: blank}}
  conflict: {{audio: own, picture: other_category}}
question: what do you hear
interventions:
  - kind: path_patching
    senders: {senders}
    sender_layers: [0, 1]
    receivers: [values]
    receiver_layers: [1, 2]
    freeze: {freeze}
execution: {{batch_size: 16, unit_size: 2, seed: 0}}
"""


def _tensor(value):
    return value[0] if isinstance(value, tuple) else value


def cached(model, layers, inputs):
    """One run's row 0 per layer: 'residual' (layer output), 'mlp', 'attention' (outputs) and
    'heads' (the output projection's input), each (seq, width)."""
    saved, handles = {}, []
    for index, layer in enumerate(layers):
        for name, module in (
            ("residual", layer),
            ("mlp", layer.mlp),
            ("attention", layer.self_attn),
        ):
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
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return saved


def frozen_inputs(model, layers, conflict, clean, frozen, sender, freeze, positions):
    """Each decoder layer's attention input (seq, hidden) in the frozen run of ``sender``
    (component, layer, head)."""
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

    def send_head(module, args):
        hidden = args[0].clone()
        columns = slice(head * dim, (head + 1) * dim)
        hidden[0, positions, columns] = clean[("heads", sent_layer)][positions, columns]
        return (hidden, *args[1:])

    layer = layers[sent_layer]
    if component == "residual":
        handles.append(layer.register_forward_hook(write(clean[("residual", sent_layer)])))
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
        with torch.no_grad():
            model(**conflict)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def path_logit_diff(model, layers, conflict, receiver, head, receiver_input, frozen_input, ids):
    """The conflict run with layer ``receiver``'s attention recomputed by hand, query head
    ``head`` reading its ``receiver_input`` computed from ``frozen_input`` (seq, hidden)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        captured["rotary"] = kwargs["position_embeddings"]

    def projected(module, hidden, cos, sin):
        seq, dim = hidden.shape[1], module.head_dim
        q = module.q_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
        k = module.k_proj(hidden).view(1, seq, -1, dim).transpose(1, 2)
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

    attention = layers[receiver].self_attn
    handles = [
        attention.register_forward_pre_hook(grab, with_kwargs=True),
        attention.register_forward_hook(replace),
    ]
    try:
        with torch.no_grad():
            logits = model(**conflict).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()
    return float(answer_metrics(logits, *ids)["logit_diff"][0])


def check_against_reference(study, results, pairs, tolerance):
    """Every stored path of the sender/receiver layer ``pairs`` equals the reference; returns how
    many were checked."""
    effect = results["path_effect"].sel(metric="logit_diff")
    freeze = study.interventions[0].freeze
    loaded = load_model(study.model)
    model = loaded.model
    layers = reference.layers_of(model)
    heads = model.config.text_config.num_attention_heads
    checked = 0
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        clean = cached(model, layers, sample.runs["clean"])
        conflict = sample.runs["conflict"]
        frozen = cached(model, layers, conflict)
        positions = reference.groups_of(conflict["input_ids"], model.config)["video"]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for label in effect["sender"].values:
            component, _, sent_head = str(label).partition(" ")
            for sent_layer in {sender for sender, _ in pairs}:
                sender = (component, sent_layer, int(sent_head) if sent_head else None)
                inputs = frozen_inputs(
                    model, layers, conflict, clean, frozen, sender, freeze, positions
                )
                for receiver in [r for s, r in pairs if s == sent_layer]:
                    for receiver_input in effect["receiver_input"].values:
                        for head in range(heads):
                            expected = path_logit_diff(
                                model,
                                layers,
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


@pytest.mark.parametrize(
    ("freeze", "attention"),
    [("attention", "sdpa"), ("attention", "eager"), ("attention+mlp", "sdpa")],
)
def test_every_sender_and_receiver_equals_the_definition_by_hand(
    tmp_path: Path, freeze: str, attention: str
) -> None:
    """Residual, MLP and head senders × queries, keys and values receivers, under either freeze:
    every stored path equals the plain-torch reference (1e-5 on the logit difference)."""
    study = parse_study(study_text(attention, 2, EVERY_KIND.format(freeze=freeze)))
    results = open_results(run_study(study, tmp_path).store).load()
    effect = results["path_effect"].sel(metric="logit_diff")
    assert effect.dims == (
        "sample",
        "sender",
        "sender_layer",
        "receiver_layer",
        "receiver_head",
        "receiver_input",
    )
    assert list(effect["sender"].values) == ["residual", "mlp", "head 0", "head 1"]
    assert list(effect["receiver_input"].values) == ["queries", "keys", "values"]
    # a receiver at or before its sender is no path
    assert np.isnan(effect.sel(sender_layer=1, receiver_layer=1).values).all()
    assert not np.isnan(effect.sel(sender_layer=0).values).any()
    checked = check_against_reference(study, results, [(0, 1), (0, 2), (1, 2)], 1e-5)
    assert checked == 2 * 4 * 3 * 3 * 2  # samples × senders × pairs × inputs × heads


def test_recomputed_mlps_move_paths_only_where_an_mlp_lies_between(tmp_path: Path) -> None:
    """On the default model the two freezes agree on every path with no MLP between sender and
    receiver (a residual or MLP sender of layer l into layer l + 1) and differ on the others:
    IOI recomputes the MLPs on those paths, patchwork's old definition pinned them."""
    effects = {}
    for freeze in ("attention", "attention+mlp"):
        study = parse_study(TESTBED.format(senders="[residual, mlp, heads]", freeze=freeze))
        results = open_results(run_study(study, tmp_path / freeze).store).load()
        effects[freeze] = results["path_effect"].sel(metric="logit_diff")
    ioi, pinned = effects["attention"], effects["attention+mlp"]
    for sender in ("residual", "mlp"):
        for sent_layer, receiver in ((0, 1), (1, 2)):
            cell = {"sender": sender, "sender_layer": sent_layer, "receiver_layer": receiver}
            np.testing.assert_allclose(ioi.sel(cell), pinned.sel(cell), atol=1e-5, rtol=0)
    moved = abs(ioi - pinned).sel(sender_layer=0)
    assert float(moved.sel(sender="residual", receiver_layer=2).max()) > 0.1  # MLP 1 between
    heads = moved.sel(sender=[f"head {head}" for head in range(4)], receiver_layer=1)
    assert float(heads.max()) > 0.01  # the sending head's own MLP (layer 0) between


def test_the_default_is_ioi_and_reads_values_from_the_residual() -> None:
    entry = parse_study(study_text("sdpa", 1, PATHS)).interventions[0]
    assert (entry.freeze, entry.senders, entry.receivers) == (
        "attention",
        ("residual",),
        ("values",),
    )


def test_the_testbed_paths_equal_the_definition_by_hand(tmp_path: Path) -> None:
    """The default model (8 layers, 4 query heads over 2 key/value heads), IOI's freeze: the
    residual after layer 0 into every head's queries, keys and values of layer 3 (MLPs 1–2
    recomputed between)."""
    study = parse_study(
        TESTBED.format(senders="[residual]", freeze="attention").replace(
            "receivers: [values]\n    receiver_layers: [1, 2]",
            "receivers: [queries, keys, values]\n    receiver_layers: [3]",
        )
    )
    assert study.interventions[0].receiver_layers == (3,)
    results = open_results(run_study(study, tmp_path).store).load()
    assert check_against_reference(study, results, [(0, 3)], 1e-5) == 2 * 3 * 4


def test_receivers_must_follow_a_sender(tmp_path: Path) -> None:
    text = study_text("sdpa", 1, PATHS.replace("receiver_layers: [1, 2]", "receiver_layers: [0]"))
    with pytest.raises(StudyError, match=r"receiver_layers: no receiver layer comes after"):
        run_study(parse_study(text), tmp_path)


def test_sending_heads_must_exist(tmp_path: Path) -> None:
    text = study_text("sdpa", 1, PATHS + "    senders: [heads]\n    sender_heads: [1, 5]\n")
    with pytest.raises(StudyError, match=r"sender_heads: head 5 is out of range; the model has 2"):
        run_study(parse_study(text), tmp_path)


def test_a_layer_without_its_projections_is_refused_by_name() -> None:
    loaded = load_model(parse_study(study_text("sdpa", 1, PATHS)).model)
    attention = loaded.adapter.component(loaded.adapter.root, 1, "attention")
    attention.k_proj = torch.nn.Identity()
    check_structure(loaded.adapter, [0])
    with pytest.raises(
        ModelError, match=r"attention \(self_attn\) at layer 1 has no linear k_proj"
    ):
        check_structure(loaded.adapter, [0, 1])


def test_paths_are_ranked_by_the_share_of_the_gap_they_restore(tmp_path: Path) -> None:
    from patchwork.analysis import method_figures

    text = study_text("sdpa", 3, EVERY_KIND.format(freeze="attention"))
    results = open_results(run_study(parse_study(text), tmp_path).store).load()
    ranking = method_figures.rank_paths(results, n_resamples=200)
    assert len(ranking) == 4 * 3 * 2 * 3  # senders × (0→1, 0→2, 1→2) × heads × inputs
    assert (ranking["receiver_layer"] > ranking["sender_layer"]).all()
    assert ranking["restored"].is_monotonic_decreasing
    logit = results["path_effect"].sel(metric="logit_diff")
    base = results["path_baseline"].sel(metric="logit_diff").values  # (sample, [clean, conflict])
    for row in ranking.itertuples():
        values = logit.sel(
            sender=row.sender,
            sender_layer=row.sender_layer,
            receiver_layer=row.receiver_layer,
            receiver_head=row.receiver_head,
            receiver_input=row.receiver_input,
        ).values
        expected = (values - base[:, 1]).sum() / (base[:, 0] - base[:, 1]).sum()
        assert row.restored == pytest.approx(expected, rel=1e-6, abs=1e-9)
    figure = method_figures.plot_paths(results)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == [
        "→ queries",
        "→ keys",
        "→ values",
    ]
    assert figure.axes[0].get_ylabel() == "sender"


def test_batching_mixed_senders_changes_nothing(tmp_path: Path) -> None:
    """Frozen rows of different senders, layers and receiver inputs share a batch: one row per
    batch and every row in one batch store the same values."""
    stored = []
    for size in (1, 64):
        text = study_text("sdpa", 1, EVERY_KIND.format(freeze="attention"))
        text = text.replace("batch_size: 4", f"batch_size: {size}")
        assert f"batch_size: {size}" in text
        results = open_results(run_study(parse_study(text), tmp_path / str(size)).store).load()
        stored.append(results["path_effect"].sel(metric="logit_diff").values)
    np.testing.assert_allclose(stored[0], stored[1], atol=1e-6, rtol=0)
