"""Steering: directions fitted on one share of the dataset, measured on the rest, against a
plain-torch reference (forward hooks on the decoder layers) on a tiny thinker and the testbed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork import open_results, parse_study, run_study
from patchwork.engine.runner import load_samples
from patchwork.errors import StudyError
from patchwork.loading.model import load_model
from patchwork.methods.steering import fit_split
from patchwork.patching.metrics import answer_metrics

from .helpers import study_text

STEERING = """\
  - kind: steering
    run: conflict
    source: clean
    layers: [0, 2]
    position_group: {group}
    alphas: [0, 1, 3]
    fit_fraction: 0.4
"""


def steering_study(attention: str = "sdpa", samples: int = 5, group: str = "video", unit: int = 2):
    text = study_text(attention, samples, STEERING.format(group=group))
    return parse_study(text.replace("unit_size: 2", f"unit_size: {unit}"))


def residuals(model, layers_module, inputs, layers) -> dict[int, torch.Tensor]:
    """Each decoder layer's output (seq, hidden) of one run, by plain forward hooks."""
    kept = {}

    def keep(layer):
        def hook(module, args, output):
            kept[layer] = (output[0] if isinstance(output, tuple) else output)[0].detach()

        return hook

    handles = [layers_module[layer].register_forward_hook(keep(layer)) for layer in layers]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return kept


def steered_logit_diff(model, layers_module, inputs, layer, vector, mask, ids) -> float:
    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + vector.to(hidden.dtype) * mask.reshape(1, -1, 1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = layers_module[layer].register_forward_hook(add)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    handle.remove()
    return float(answer_metrics(logits, *ids)["logit_diff"][0])


def check_against_reference(study, results, group: str, atol: float) -> None:
    """Directions from plain hooks over the fit samples; every held-out sample's steered logit
    difference for every (layer, α) of the mean-difference direction, recomputed."""
    loaded = load_model(study.model)
    model, adapter = loaded.adapter.root, loaded.adapter
    layers_module = model.get_submodule(adapter.layers_path)
    samples = load_samples(study, loaded).load(0, len(results["sample"]))
    held = results["steering_held_out"].values.astype(bool)
    layers = [int(layer) for layer in results["steering_layer"].values]
    totals = dict.fromkeys(layers, 0.0)
    for sample in [s for s, h in zip(samples, held, strict=True) if not h]:
        means = {}
        for run in ("clean", "conflict"):
            mask = adapter.position_groups(sample.runs[run]["input_ids"])[group]
            kept = residuals(model, layers_module, sample.runs[run], layers)
            means[run] = {layer: kept[layer][mask].double().mean(0) for layer in layers}
        for layer in layers:
            totals[layer] = totals[layer] + means["clean"][layer] - means["conflict"][layer]
    directions = {layer: (total / (~held).sum()).float() for layer, total in totals.items()}
    effect = results["steering_effect"].sel(
        steering_direction="mean_difference", metric="logit_diff"
    )
    for row, sample in enumerate(samples):
        if not held[row]:
            assert np.isnan(effect.values[row]).all()
            continue
        run = sample.runs["conflict"]
        mask = adapter.position_groups(run["input_ids"])[group]
        ids = (sample.audio_answer_id, sample.visual_answer_id)
        for li, layer in enumerate(layers):
            for ai, alpha in enumerate(results["steering_alpha"].values):
                vector = float(alpha) * directions[layer]
                expected = steered_logit_diff(model, layers_module, run, layer, vector, mask, ids)
                assert float(effect.values[row, li, ai]) == pytest.approx(expected, abs=atol)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_steering_equals_a_plain_torch_reference(tmp_path: Path, attention: str) -> None:
    study = steering_study(attention)
    results = open_results(run_study(study, tmp_path).store).load()
    check_against_reference(study, results, "video", atol=1e-5)
    # α = 0 is the unsteered run; the shuffled direction is stored beside the real one
    zero = results["steering_effect"].sel(steering_alpha=0.0)
    held = results["steering_held_out"].values.astype(bool)
    baseline = results["steering_baseline"].sel(steering_run="conflict").values
    for direction in ("mean_difference", "shuffled"):
        values = zero.sel(steering_direction=direction).values[held]  # (held, layer, metric)
        np.testing.assert_allclose(values, np.repeat(baseline[held][:, None], 2, 1), atol=1e-5)
    moved = results["steering_effect"].sel(steering_alpha=3.0, metric="logit_diff").values[held]
    assert np.abs(moved[..., 0] - moved[..., 1]).max() > 1e-4  # the control is another vector


def test_steering_on_the_testbed_equals_the_reference(tmp_path: Path) -> None:
    study = parse_study(
        """\
name: steering-testbed
model: {family: qwen2_5_omni, checkpoint: testbed, attention: sdpa}
dataset: {generator: testbed, samples: 6, seed: 0}
runs:
  clean: {audio: own, picture: blank}
  conflict: {audio: own, picture: other_category}
question: what do you hear
interventions:
"""
        + STEERING.format(group="video").replace("[0, 2]", "[0, 3, 7]")
        + "execution: {batch_size: 5, unit_size: 4, seed: 1}\n"
    )
    results = open_results(run_study(study, tmp_path).store).load()
    check_against_reference(study, results, "video", atol=1e-4)
    # the last layer's residual feeds nothing but the final norm at the answer position:
    # steering the video positions there changes nothing
    last = results["steering_effect"].sel(steering_layer=7, metric="logit_diff")
    held = results["steering_held_out"].values.astype(bool)
    base = results["steering_baseline"].sel(steering_run="conflict", metric="logit_diff").values
    expected = np.broadcast_to(base[held][:, None, None], last.values[held].shape)
    np.testing.assert_allclose(last.values[held], expected, atol=1e-4)


def test_the_split_is_the_studys_whatever_the_units(tmp_path: Path) -> None:
    small = open_results(run_study(steering_study(unit=1), tmp_path / "one").store).load()
    large = open_results(run_study(steering_study(unit=5), tmp_path / "five").store).load()
    held = small["steering_held_out"].values
    np.testing.assert_array_equal(held, large["steering_held_out"].values)
    np.testing.assert_array_equal(held, (~fit_split(5, 0.4, 0)).astype(np.float32))
    np.testing.assert_allclose(
        small["steering_effect"].values, large["steering_effect"].values, atol=1e-5
    )


@settings(max_examples=100, deadline=None)
@given(count=st.integers(2, 500), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**31))
def test_fit_split_leaves_both_sides_non_empty(count: int, fraction: float, seed: int) -> None:
    split = fit_split(count, fraction, seed)
    assert 1 <= split.sum() <= count - 1
    assert abs(int(split.sum()) - fraction * count) <= max(1.0, 0.5 + 1e-9)
    np.testing.assert_array_equal(split, fit_split(count, fraction, seed))


def test_steering_needs_a_sample_to_fit_and_one_to_measure(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"interventions\[0\]\.fit_fraction: steering needs"):
        run_study(steering_study(samples=1), tmp_path)


def test_repeated_alphas_are_refused_with_the_line() -> None:
    text = study_text("sdpa", 3, STEERING.format(group="video").replace("[0, 1, 3]", "[0, 1, 1]"))
    with pytest.raises(StudyError, match=r":\d+: interventions\[0\]\.alphas: .*distinct"):
        parse_study(text)


def test_the_dose_response_table_and_figure(tmp_path: Path) -> None:
    from patchwork.analysis import method_figures

    results = open_results(run_study(steering_study(), tmp_path).store).load()
    table = method_figures.steering_table(results)
    held = results["steering_held_out"].values.astype(bool)
    assert set(table["n"]) == {int(held.sum())}
    assert len(table) == 2 * 3 * 2  # layers × alphas × directions
    top = results["steering_audio_top"].values[held]  # (held, layer, alpha, direction)
    row = table[(table.layer == 2) & (table.alpha == 3.0) & (table.direction == "shuffled")]
    assert float(row["audio_answer_rate"].iloc[0]) == pytest.approx(top[:, 1, 2, 1].mean())
    figure = method_figures.plot_steering(results)
    assert [axes.get_xlabel() for axes in figure.axes] == ["α (multiples of the direction)"] * 2
