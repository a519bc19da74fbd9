"""Knockout, attention share, logit lens and probes on every family's tiny checkpoint, each stored
value equal to an independent plain-torch computation.

The references share nothing with patchwork but the loaded weights and the run inputs: residuals
are captured with plain hooks (:mod:`.reference`), position groups are read from the config's
token ids here, attention probabilities are the model's own ``output_attentions`` under eager,
knockout edits the attention mask a layer receives with a hook written here (the reference study's
technique), and the logit lens at the last layer is the model's own output distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import open_results, parse_study, run_study
from patchwork.engine.runner import load_samples
from patchwork.loading.model import load_model

from . import builders, reference

VISUAL = {"qwen2_5_omni": "video", "qwen3_omni": "video", "gemma3n": "image", "generic": "audio"}
LAYER = 1
TOLERANCE = 1e-5


def _groups(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """(seq,) masks from the config's placeholder ids; answer = last position, text = the rest."""
    config = getattr(model.config, "thinker_config", model.config)
    ids = ids.reshape(-1)

    def token(name: str) -> int | None:
        for attribute in (f"{name}_token_index", f"{name}_token_id"):
            if getattr(config, attribute, None) is not None:
                return int(getattr(config, attribute))
        return None

    groups = {}
    for name in ("audio", "video", "image"):
        found = token(name)
        groups[name] = ids == found if found is not None else torch.zeros_like(ids, dtype=bool)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[-1] = True
    groups["text"] = ~(groups["audio"] | groups["video"] | groups["image"] | answer)
    groups["answer"] = answer
    return groups


def _query_heads(model: torch.nn.Module) -> int:
    config = getattr(model.config, "thinker_config", model.config)
    return int(getattr(config, "text_config", config).num_attention_heads)


def _text_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.model.language_model


def _merged(model: torch.nn.Module, family: str, residual: torch.Tensor) -> torch.Tensor:
    """One (seq, hidden) residual; Gemma 3n's four AltUp streams merged as its text model merges
    them after the last layer (transformers' Gemma3nTextModel.forward, restated)."""
    if family != "gemma3n":
        return residual
    text = _text_model(model)
    first = residual[0]
    target = torch.mean(first**2, dim=-1, keepdim=True) ** 0.5
    streams = [first]
    for index in range(1, residual.shape[0]):
        projected = text.altup_unembed_projections[index - 1](residual[index])
        magnitude = torch.mean(projected**2, dim=-1, keepdim=True) ** 0.5
        magnitude = torch.maximum(magnitude, torch.tensor(1e-5))
        streams.append(projected * target / magnitude)
    return torch.stack(streams).mean(0)


def _lens(model: torch.nn.Module, merged: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and the config's final soft cap (if any), then softmax."""
    logits = model.lm_head(_text_model(model).norm(merged))
    config = model.config.get_text_config()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.softmax(logits.float(), dim=-1)


def _knocked_out(model, inputs, extra, pairs: torch.Tensor) -> torch.Tensor:
    """Answer logits with ``pairs`` (1, 1 or heads, seq, seq: True = query → key blocked, one
    set per head or one for all) removed from the mask layer LAYER's attention gets."""
    seq = pairs.shape[-1]

    def edit(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(seq, seq, dtype=torch.bool).tril()[None, None]
        if mask.dtype == torch.bool:
            mask = mask & ~pairs
        else:
            mask = mask.masked_fill(pairs, torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": mask}

    attention = _text_model(model).layers[LAYER].self_attn
    handle = attention.register_forward_pre_hook(edit, with_kwargs=True)
    try:
        return reference.forward(model, inputs, extra)
    finally:
        handle.remove()


def _attention(model, inputs, extra) -> tuple[torch.Tensor, ...]:
    """The model's own eager attention probabilities, (heads, seq, seq) per layer."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inputs, **(extra or {}), output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    return tuple(layer[0].float() for layer in out.attentions)


def _run_family_study(
    tmp_path: Path, family_root: Path, checkpoint, family: str, methods: str, attention="sdpa"
):
    """The family's tiny study with ``methods`` as its interventions, its model under
    ``attention``: (study, results, loaded, the extra forward arguments of its runs)."""
    builders.write_manifest(
        tmp_path / "samples.jsonl", builders.family_rows(family, family_root / "media")
    )
    extra = f"  attention: {attention}\n"
    extra += builders.GENERIC_BLOCK if family == "generic" else ""
    text = builders.study(
        tmp_path, family, checkpoint(family), builders.FAMILY_GROUPS[family], extra
    ).read_text()
    head, _, _ = text.partition("interventions:")
    study = parse_study(
        head + "interventions:\n" + methods + "execution: {unit_size: 2}\n", tmp_path / "s.yaml"
    )
    results = open_results(run_study(study, store_root=tmp_path / "store").store).load()
    forward_extra = {"use_audio_in_video": True} if family == "qwen2_5_omni" else None
    return study, results, load_model(study.model), forward_extra


@pytest.mark.parametrize("family", sorted(VISUAL))
def test_knockout_share_lens_and_probes_equal_plain_torch(
    tmp_path: Path, family_root: Path, checkpoint, family: str
) -> None:
    visual = VISUAL[family]
    methods = f"""\
  - kind: attention_knockout
    rules: {{late: {{queries: [answer, text], keys: [{visual}], layers: [{LAYER}]}}}}
  - kind: attention_share
    queries: [answer, text]
    keys: [{visual}, text]
  - kind: logit_lens
    position_groups: [{visual}, answer]
  - kind: probes
    position_groups: [{visual}, answer]
"""
    study, results, loaded, forward_extra = _run_family_study(
        tmp_path, family_root, checkpoint, family, methods
    )
    assert bool(results["done"].all())
    model = loaded.model
    layers = len(_text_model(model).layers)
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        sid = sample.sample_id
        conflict, clean = dict(sample.runs["conflict"]), dict(sample.runs["clean"])
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        groups = _groups(model, conflict["input_ids"])
        plain = reference.forward(model, conflict, forward_extra)

        # knockout: the knocked-out run's logit difference
        pairs = (groups["answer"] | groups["text"])[:, None] & groups[visual][None, :]
        knocked = _knocked_out(model, conflict, forward_extra, pairs[None, None])
        stored = results["knockout_effect"].sel(sample=sid, knockout=f"late@{LAYER}-{LAYER}")
        expected = float(knocked[ids[0]] - knocked[ids[1]])
        assert float(stored.sel(metric="logit_diff")) == pytest.approx(expected, abs=TOLERANCE)
        assert not np.isclose(expected, float(plain[ids[0]] - plain[ids[1]]), atol=1e-4)
        baseline = results["knockout_baseline"].sel(sample=sid, metric="logit_diff")
        clean_logits = reference.forward(model, clean, forward_extra)
        for run, logits in (("conflict", plain), ("clean", clean_logits)):
            assert float(baseline.sel(knockout_run=run)) == pytest.approx(
                float(logits[ids[0]] - logits[ids[1]]), abs=TOLERANCE
            )

        # attention share: the model's own eager probabilities, per head
        attention = _attention(model, conflict, forward_extra)
        for query in ("answer", "text"):
            for key in (visual, "text"):
                for layer in range(layers):
                    weights = attention[layer]
                    expected_share = weights[:, groups[query]][:, :, groups[key]].sum(-1).mean(-1)
                    stored_share = results["share"].sel(
                        sample=sid, share_layer=layer, share_query=query, share_key=key
                    )
                    np.testing.assert_allclose(
                        stored_share.values, expected_share.numpy(), rtol=0, atol=TOLERANCE
                    )

        # logit lens and probes: residuals captured with plain hooks
        residuals = reference.capture(model, family, conflict, layers, forward_extra)
        for layer in range(layers):
            merged = _merged(model, family, residuals[(layer, "residual")]).detach()
            with torch.no_grad():
                distribution = _lens(model, merged)
            for group in (visual, "answer"):
                mean = distribution[groups[group]].mean(0)
                stored_lens = results["lens_probability"].sel(
                    sample=sid, lens_layer=layer, lens_group=group
                )
                np.testing.assert_allclose(
                    stored_lens.values, mean[list(ids)].numpy(), rtol=0, atol=TOLERANCE
                )
                features = results["probe_features"].sel(
                    sample=sid, probe_layer=layer, probe_group=group
                )
                np.testing.assert_allclose(
                    features.values, merged[groups[group]].mean(0).numpy(), rtol=0, atol=1e-4
                )
        # the lens of the last layer at the answer is the model's own next-token distribution
        own = torch.softmax(plain.float(), -1)[list(ids)].numpy()
        last = results["lens_probability"].sel(
            sample=sid, lens_layer=layers - 1, lens_group="answer"
        )
        np.testing.assert_allclose(last.values, own, rtol=0, atol=TOLERANCE)
        assert float(results["probe_logit_diff"].sel(sample=sid)) == pytest.approx(
            float(plain[ids[0]] - plain[ids[1]]), abs=TOLERANCE
        )


def test_the_lens_reads_out_as_the_model_does_where_logits_are_large(
    family_root: Path, checkpoint
) -> None:
    """Gemma 3n soft-caps its logits (30 · tanh(logits / 30)): invisible on the tiny model's small
    logits, so the unembedding is scaled up here until the cap matters; the last layer's lens at
    the answer must still be the model's own distribution."""
    from patchwork.loading.manifest import load_manifest
    from patchwork.methods.logit_lens import lens_distribution
    from patchwork.study import load_study

    folder = family_root / "lens-cap"
    folder.mkdir(exist_ok=True)
    path = builders.family_study(folder, "gemma3n", checkpoint("gemma3n"), family_root / "media")
    study = load_study(path)
    loaded = load_model(study.model)
    model = loaded.model
    with torch.no_grad():
        model.lm_head.weight.mul_(400.0)  # a fresh load: the store's model is another one
    sample = load_manifest(study, loaded)[0]
    inputs = dict(sample.runs["conflict"])
    own = torch.softmax(reference.forward(model, inputs).float(), -1)
    assert float(reference.forward(model, inputs).abs().max()) > 15  # the cap is in play
    layers = len(_text_model(model).layers)
    residual = reference.capture(model, "gemma3n", inputs, layers)[(layers - 1, "residual")]
    with torch.no_grad():
        lens = lens_distribution(loaded.adapter, loaded.adapter.merge_streams(residual))[-1]
    torch.testing.assert_close(lens, own, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(VISUAL))
def test_steering_equals_plain_torch(
    tmp_path: Path, family_root: Path, checkpoint, family: str, attention: str
) -> None:
    """Directions from the fit samples' residuals (plain hooks: after DeepStack's additions, on
    every Gemma 3n stream), added with a hook written here on the held-out samples."""
    visual = VISUAL[family]
    methods = f"""\
  - kind: steering
    layers: [{LAYER}]
    position_group: {visual}
    alphas: [0, 2]
"""
    study, results, loaded, forward_extra = _run_family_study(
        tmp_path, family_root, checkpoint, family, methods, attention
    )
    model = loaded.model
    layers = len(_text_model(model).layers)
    samples = load_samples(study, loaded).load(0, len(results["sample"]))
    held = results["steering_held_out"].values.astype(bool)
    assert held.any() and not held.all()

    def mean(sample, run: str) -> torch.Tensor:
        residual = reference.capture(model, family, sample.runs[run], layers, forward_extra)[
            (LAYER, "residual")
        ]
        mask = _groups(model, sample.runs[run]["input_ids"])[visual]
        return residual[..., mask, :].double().mean(-2)

    fitted = [sample for sample, h in zip(samples, held, strict=True) if not h]
    direction = sum(mean(s, "clean") - mean(s, "conflict") for s in fitted) / len(fitted)
    effect = results["steering_effect"].sel(
        steering_layer=LAYER, steering_direction="mean_difference", metric="logit_diff"
    )
    for sample, measured in zip(samples, held, strict=True):
        if not measured:
            continue
        run = sample.runs["conflict"]
        positions = _groups(model, run["input_ids"])[visual]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for alpha in (0.0, 2.0):
            shift = (alpha * direction).float()

            def add(tensor, shift=shift, positions=positions):
                tensor = tensor.clone()
                if family == "gemma3n":
                    tensor[:, 0, positions] += shift[:, None, :].to(tensor.dtype)
                else:
                    tensor[0, positions] += shift.to(tensor.dtype)
                return tensor

            handle = reference._hook(model, family, LAYER, "residual", add)
            try:
                logits = reference.forward(model, run, forward_extra)
            finally:
                handle.remove()
            expected = float(logits[ids[0]] - logits[ids[1]])
            stored = float(effect.sel(sample=sample.sample_id, steering_alpha=alpha))
            assert stored == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(VISUAL))
def test_head_patching_equals_plain_torch(
    tmp_path: Path, family_root: Path, checkpoint, family: str, attention: str
) -> None:
    """Each head's slice of o_proj's input replaced by the clean run's, with a pre-hook written
    here, one forward per (head, group)."""
    visual = VISUAL[family]
    methods = f"""\
  - kind: head_patching
    layers: [{LAYER}]
    position_groups: [{visual}, answer]
"""
    study, results, loaded, forward_extra = _run_family_study(
        tmp_path, family_root, checkpoint, family, methods, attention
    )
    model = loaded.model
    projection = _text_model(model).layers[LAYER].self_attn.o_proj
    heads = _query_heads(model)
    checked, kept = 0, {}  # kept: the clean run's o_proj input, per sample in turn
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        handle = projection.register_forward_pre_hook(
            lambda module, args: kept.update(clean=args[0][0].detach().clone())
        )
        reference.forward(model, sample.runs["clean"], forward_extra)
        handle.remove()
        conflict = sample.runs["conflict"]
        groups = _groups(model, conflict["input_ids"])
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        width = kept["clean"].shape[-1] // heads
        for index in range(heads):
            for group in (visual, "answer"):
                positions, columns = groups[group], slice(index * width, (index + 1) * width)

                def replace(module, args, positions=positions, columns=columns):
                    hidden = args[0].clone()
                    hidden[0, positions, columns] = kept["clean"][positions, columns]
                    return (hidden, *args[1:])

                handle = projection.register_forward_pre_hook(replace)
                try:
                    logits = reference.forward(model, conflict, forward_extra)
                finally:
                    handle.remove()
                expected = float(logits[ids[0]] - logits[ids[1]])
                stored = results["head_effect"].sel(
                    sample=sample.sample_id, head_layer=LAYER, head=index, head_group=group
                )
                assert float(stored.sel(metric="logit_diff")) == pytest.approx(
                    expected, abs=TOLERANCE
                )
                checked += 1
    assert checked >= 2 * heads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(VISUAL))
def test_head_knockout_equals_plain_torch(
    tmp_path: Path, family_root: Path, checkpoint, family: str, attention: str
) -> None:
    """A rule on one query head: the mask layer LAYER's attention receives loses the pairs for
    that head only (one mask per head, written here)."""
    visual = VISUAL[family]
    methods = f"""\
  - kind: attention_knockout
    rules: {{one: {{queries: [answer, text], keys: [{visual}], layers: [{LAYER}], heads: [1]}}}}
"""
    study, results, loaded, forward_extra = _run_family_study(
        tmp_path, family_root, checkpoint, family, methods, attention
    )
    model = loaded.model
    heads = _query_heads(model)
    moved = []
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        run = sample.runs["conflict"]
        groups = _groups(model, run["input_ids"])
        seq = groups["answer"].numel()
        pairs = torch.zeros(1, heads, seq, seq, dtype=torch.bool)
        pairs[0, 1] = (groups["answer"] | groups["text"])[:, None] & groups[visual][None, :]

        logits = _knocked_out(model, run, forward_extra, pairs)
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        stored = results["knockout_effect"].sel(
            sample=sample.sample_id, knockout=f"one@{LAYER}-{LAYER}#h1", metric="logit_diff"
        )
        assert float(stored) == pytest.approx(float(logits[ids[0]] - logits[ids[1]]), abs=TOLERANCE)
        base = results["knockout_baseline"].sel(
            sample=sample.sample_id, knockout_run="conflict", metric="logit_diff"
        )
        moved.append(abs(float(stored) - float(base)))
    assert max(moved) > 1e-6  # the one head's knockout changes the answer


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_path_patching_equals_plain_torch_where_values_can_be_recomputed(
    tmp_path: Path, family_root: Path, checkpoint, family: str, attention: str
) -> None:
    """Path patching with attention and MLPs frozen (``freeze: attention+mlp``) on a Qwen
    layer (x + attention + MLP): each stored path equals two plain runs — one with the
    receiver's value projection fed the sender-shifted residual at the sender's positions (every
    query head of that key/value head reads them), then the target run with only the receiving
    query head's output taken from it. IOI's definition on every family:
    ``test_path_patching_families``."""
    visual = VISUAL[family]
    methods = f"""\
  - kind: path_patching
    sender_group: {visual}
    sender_layers: [0]
    receiver_layers: [{LAYER}]
    freeze: attention+mlp
"""
    study, results, loaded, forward_extra = _run_family_study(
        tmp_path, family_root, checkpoint, family, methods, attention
    )
    model = loaded.model
    layer = _text_model(model).layers[LAYER]
    heads = _query_heads(model)
    layers = len(_text_model(model).layers)
    kept: dict = {}  # the receiver's input, then its heads' outputs with shifted values
    for sample in load_samples(study, loaded).load(0, len(results["sample"])):
        conflict = sample.runs["conflict"]
        positions = _groups(model, conflict["input_ids"])[visual]
        clean_residual = reference.capture(
            model, family, sample.runs["clean"], layers, forward_extra
        )
        conflict_residual = reference.capture(model, family, conflict, layers, forward_extra)
        delta = (clean_residual[(0, "residual")] - conflict_residual[(0, "residual")])[positions]
        handle = layer.register_forward_pre_hook(
            lambda m, a, k: kept.update(
                x=(k["hidden_states"] if "hidden_states" in k else a[0])[0]
            ),
            with_kwargs=True,
        )
        reference.forward(model, conflict, forward_extra)
        handle.remove()
        with torch.no_grad():
            shifted = layer.self_attn.v_proj(layer.input_layernorm(kept["x"][positions] + delta))

        def shift(module, args, output, positions=positions, shifted=shifted):
            output = output.clone()
            output[0, positions] = shifted
            return output

        def grab(module, args):
            kept["heads"] = args[0][0].detach().clone()

        handles = [
            layer.self_attn.v_proj.register_forward_hook(shift),
            layer.self_attn.o_proj.register_forward_pre_hook(grab),
        ]
        reference.forward(model, conflict, forward_extra)
        for handle in handles:
            handle.remove()
        width = kept["heads"].shape[-1] // heads
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for head in range(heads):
            columns = slice(head * width, (head + 1) * width)

            def one_head(module, args, columns=columns):
                hidden = args[0].clone()
                hidden[0, :, columns] = kept["heads"][:, columns]
                return (hidden, *args[1:])

            handle = layer.self_attn.o_proj.register_forward_pre_hook(one_head)
            try:
                logits = reference.forward(model, conflict, forward_extra)
            finally:
                handle.remove()
            stored = results["path_effect"].sel(
                sample=sample.sample_id,
                sender="residual",
                receiver_input="values",
                sender_layer=0,
                receiver_layer=LAYER,
                receiver_head=head,
                metric="logit_diff",
            )
            assert float(stored) == pytest.approx(
                float(logits[ids[0]] - logits[ids[1]]), abs=TOLERANCE
            )
