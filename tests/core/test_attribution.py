"""Attribution patching: gradients checked by finite differences, estimates against exact
patching, and the verify mode's stored exact cells and agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import open_results, parse_study, run_study
from patchwork.engine.runner import load_samples
from patchwork.loading.generators import random_sample
from patchwork.loading.model import load_model
from patchwork.patching.attribution import (
    condition_changes,
    linearize,
    site_changes,
    spearman,
)
from patchwork.patching.patcher import Patcher, sweep_conditions
from patchwork.study.schema import RunSpec
from patchwork.study.specs import ModelSpec, RandomInit

from . import reference
from .helpers import study_text

RUNS = {"clean": RunSpec(picture="blank"), "conflict": RunSpec(picture="other_category")}


@pytest.mark.parametrize(
    ("group", "component", "layer"),
    [("video", "residual", 0), ("text", "attention", 1), ("all", "mlp", 2)],
)
def test_estimates_are_the_derivative_of_exact_patching(group, component, layer) -> None:
    """Patching a_target + ε (a_source − a_target) moves the logit diff by ε × estimate + O(ε²)."""
    loaded = load_model(
        ModelSpec(random_init=RandomInit(layers=3, hidden_size=32, heads=2, kv_heads=1, seed=6))
    )
    sample = random_sample(0, 2, RUNS, "what do you hear", loaded)
    conflict, ids = sample.runs["conflict"], (sample.audio_answer_id, sample.visual_answer_id)
    (condition,) = sweep_conditions([layer], 1, 3, [group], [component])
    sites = {(layer, component)}
    _, source = Patcher(loaded.adapter).record(sample.runs["clean"], sites)
    linearization = linearize(loaded.adapter, conflict, sites, *ids)
    target, values = linearization.activations, linearization.metrics
    masks = loaded.adapter.position_groups(conflict["input_ids"])
    delta = {site: source[site] - target[site] for site in sites}
    cells = site_changes(delta, linearization.gradients["logit_diff"], masks, [group])
    estimate = condition_changes([condition], cells)[0]

    epsilon = 1e-3
    blend = {site: target[site] + epsilon * (source[site] - target[site]) for site in sites}
    logits = reference.patched_answer_logits(
        loaded.model, dict(conflict), blend, [layer], component, masks[group]
    )
    slope = (reference.logit_diff(logits, *ids) - values["logit_diff"]) / epsilon
    assert estimate == pytest.approx(slope, rel=0.05, abs=1e-3)


def test_spearman_matches_hand_computed_values() -> None:
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ties take average ranks: x ranks (0.5, 0.5, 2, 3), y ranks (0, 1, 2, 3)
    assert spearman(np.array([1.0, 1, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(
        0.9486833, abs=1e-6
    )


def with_method(method: str, budget: float = 0.0) -> str:
    text = study_text(layers=3, samples=4, unit_size=4)
    return text.replace(
        "    noise_floor:",
        f"    method: {method}\n    verify_top_k: 6\n    verify_budget: {budget}\n    noise_floor:",
    )


def results(tmp_path: Path, method: str, budget: float = 0.0):
    study = parse_study(with_method(method, budget))
    return open_results(run_study(study, tmp_path / f"{method}-{budget}").store).load()


def test_attribution_ranks_cells_like_exact_patching(tmp_path: Path) -> None:
    exact, estimated = results(tmp_path, "exact"), results(tmp_path, "attribution")
    a = estimated["effect"].sel(metric="normalized_effect").values.ravel()
    b = exact["effect"].sel(metric="normalized_effect").values.ravel()
    assert spearman(a, b) >= 0.9
    # the batched linearization's conflict run equals exact's own run to float rounding
    np.testing.assert_allclose(estimated["baseline"].values, exact["baseline"].values, atol=1e-6)
    # with no budget, exact only where the patch changes nothing (the audio group: the runs
    # differ in the picture only), and there it is the conflict run
    verified = estimated["verified"].values.astype(bool)
    groups = list(estimated["position_group"].values)
    assert verified[:, :, groups.index("audio")].all()
    assert not verified[:, :, groups.index("video")].any()
    conflict = estimated["baseline"].sel(run="conflict").values
    expected = np.broadcast_to(conflict[:, None, None, None, :], estimated["effect"].shape)
    np.testing.assert_allclose(estimated["effect"].values[verified], expected[verified], atol=1e-6)


@pytest.mark.parametrize("budget", [0.25, 1.0])
def test_a_budget_reports_exact_effects_where_least_certain(tmp_path: Path, budget: float) -> None:
    exact = results(tmp_path, "exact")
    estimate = results(tmp_path, "attribution")
    mixed = results(tmp_path, "attribution", budget)
    assert mixed["verified"].dims == ("sample", "layer", "position_group", "component")
    verified = mixed["verified"].values.astype(bool)
    effect = mixed["effect"].values
    np.testing.assert_allclose(effect[verified], exact["effect"].values[verified], atol=1e-5)
    np.testing.assert_allclose(effect[~verified], estimate["effect"].values[~verified], atol=1e-5)
    free = estimate["verified"].values.astype(bool)
    if budget == 1.0:  # every cell's work fits: the whole map is exact
        assert verified.all()
    else:  # per sample, some cells beyond those that change nothing, not all
        assert (verified & ~free).any(axis=(1, 2, 3)).all()
        assert not verified.all(axis=(1, 2, 3)).any()
    # the noise floor's patches follow the same rule
    null = mixed["null_verified"].values.astype(bool)
    assert mixed["null_verified"].dims == ("sample", "partner", *mixed["verified"].dims[1:])
    assert null.all() if budget == 1.0 else (null.any() and not null.all())


def test_budgeted_cells_are_the_least_certain_per_unit_of_work(tmp_path: Path) -> None:
    """Recomputed with plain forward hooks: each cell's uncertainty Σ‖Δ‖² and the work of its
    resumed exact run ((layers from its own) × (positions from the first it changes)); the
    verified cells are those that change nothing plus a greedy fill by uncertainty over work."""
    budget = 0.25
    data = results(tmp_path, "attribution", budget)
    study = parse_study(with_method("attribution", budget))
    loaded = load_model(study.model)
    model, adapter = loaded.adapter.root, loaded.adapter
    sample = load_samples(study, loaded).load(0, 1)[0]
    layers, groups, components = (
        [str(v) if not isinstance(v, np.integer) else int(v) for v in data[dim].values]
        for dim in ("layer", "position_group", "component")
    )
    kept: dict = {}

    def keep(run: str, layer: int, component: str):
        def hook(module, args, output) -> None:
            value = output[0] if isinstance(output, tuple) else output
            kept[(run, layer, component)] = value[0].detach()

        return hook

    for run in ("clean", "conflict"):
        handles = [
            adapter.component(model, layer, component).register_forward_hook(
                keep(run, layer, component)
            )
            for layer in layers
            for component in components
        ]
        with torch.no_grad():
            model(**sample.runs[run])
        for handle in handles:
            handle.remove()
    masks = adapter.position_groups(sample.runs["conflict"]["input_ids"])
    seq_len, depth = int(masks["all"].numel()), adapter.num_layers
    cells, spread, work = [], [], []
    for index, layer in enumerate(layers):
        for group in groups:
            for component in components:
                change = kept[("clean", layer, component)] - kept[("conflict", layer, component)]
                changed = masks[group] & (change != 0).any(-1)
                start = int(changed.nonzero()[0]) if changed.any() else seq_len
                cells.append((index, groups.index(group), components.index(component)))
                spread.append(float((change[masks[group]].double() ** 2).sum()))
                work.append(0 if start == seq_len else (depth - layer) * (seq_len - start))
    order = sorted((i for i in range(len(cells)) if work[i]), key=lambda i: -spread[i] / work[i])
    chosen, spent = {i for i in range(len(cells)) if not work[i]}, 0
    for i in order:
        if spent + work[i] <= budget * sum(work):
            chosen.add(i)
            spent += work[i]
    expected = np.zeros(data["verified"].shape[1:], dtype=np.float32)
    for i in chosen:
        expected[cells[i]] = 1
    np.testing.assert_array_equal(data["verified"].values[0], expected)


def test_verify_checks_the_top_cells_and_stores_agreement(tmp_path: Path) -> None:
    exact = results(tmp_path, "exact")
    estimate = results(tmp_path, "attribution")
    verified = results(tmp_path, "attribution+verify")
    checked = verified["verified"].values.astype(bool)
    np.testing.assert_allclose(
        verified["effect"].values[checked], exact["effect"].values[checked], atol=1e-5
    )
    agreement = verified["agreement"]
    stats = ["spearman", "recall_among_verified", "top_k_lift"]
    assert list(agreement["agreement_stat"].values) == stats
    assert np.isfinite(agreement.values).all()
    # recomputed from the stores: the estimate's top 6 and 6 random others are checked; the
    # agreement compares the estimate with exact patching on them
    logit = list(verified["metric"].values).index("logit_diff")
    conflict = verified["baseline"].sel(run="conflict", metric="logit_diff").values
    free = estimate["verified"].values.astype(bool)
    for row in range(verified.sizes["sample"]):
        guess = np.abs(estimate["effect"].values[row, ..., logit] - conflict[row]).ravel()
        truth = np.abs(exact["effect"].values[row, ..., logit] - conflict[row]).ravel()
        top = np.argsort(-guess, kind="stable")[:6]
        assert checked[row].ravel()[top].all()
        extra = checked[row].ravel() & ~free[row].ravel()
        controls = np.setdiff1d(np.flatnonzero(extra), top)
        assert len(controls) <= 6
        exact_top = np.argsort(-truth[np.r_[top, controls]], kind="stable")[:6]
        # the share of the exact top 6 of the checked cells that the estimate ranked top 6
        assert agreement.values[row, 1] == pytest.approx(len(set(exact_top) & set(range(6))) / 6)


def test_a_batch_that_runs_out_of_memory_is_halved(tmp_path: Path, monkeypatch) -> None:
    """Samples travel as rows of one linearization; out of accelerator memory, the batch is
    halved until it fits, and the results are those of the whole batch (to float rounding)."""
    import patchwork.methods.activation_patching as module

    real, sizes = module.linearize_rows, []

    def tight(adapter, targets, *args, **kwargs):
        sizes.append(len(targets))
        if len(targets) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(adapter, targets, *args, **kwargs)

    monkeypatch.setattr(module, "linearize_rows", tight)
    halved = results(tmp_path / "halved", "attribution", 0.25)
    monkeypatch.undo()
    whole = results(tmp_path / "whole", "attribution", 0.25)
    assert sizes == [4, 2, 1, 1, 1, 1]  # one unit of 4 samples; the size that fitted is kept
    np.testing.assert_allclose(halved["effect"].values, whole["effect"].values, atol=1e-5)
    np.testing.assert_array_equal(halved["verified"].values, whole["verified"].values)
