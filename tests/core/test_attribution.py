"""Attribution patching: gradients checked by finite differences, estimates against exact
patching, and the verify mode's stored exact cells and agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import open_results, parse_study, run_study
from patchwork.loading.generators import random_sample
from patchwork.loading.model import load_model
from patchwork.patching.attribution import (
    condition_changes,
    linearize,
    site_changes,
    spearman,
)
from patchwork.patching.patcher import Patcher, sweep_conditions
from patchwork.study.schema import ModelSpec, RandomInit, RunSpec

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


def with_method(method: str) -> str:
    text = study_text(layers=3, samples=4, unit_size=4)
    return text.replace(
        "    noise_floor:", f"    method: {method}\n    verify_top_k: 6\n    noise_floor:"
    )


def test_attribution_ranks_cells_like_exact_patching(tmp_path: Path) -> None:
    exact = open_results(run_study(parse_study(with_method("exact")), tmp_path / "e").store).load()
    estimated = open_results(
        run_study(parse_study(with_method("attribution")), tmp_path / "a").store
    ).load()
    a = estimated["effect"].sel(metric="normalized_effect").values.ravel()
    b = exact["effect"].sel(metric="normalized_effect").values.ravel()
    assert spearman(a, b) >= 0.9
    np.testing.assert_array_equal(estimated["baseline"].values, exact["baseline"].values)


def test_verify_stores_exact_cells_and_agreement(tmp_path: Path) -> None:
    exact = open_results(run_study(parse_study(with_method("exact")), tmp_path / "e").store).load()
    study = parse_study(with_method("attribution+verify"))
    verified = open_results(run_study(study, tmp_path / "v").store).load()
    cells = verified["exact_effect"].values
    checked = ~np.isnan(cells)
    assert (checked.sum(axis=(1, 2, 3, 4)) == 12 * 3).all()  # 2 × top-k cells × 3 metrics
    np.testing.assert_allclose(cells[checked], exact["effect"].values[checked], atol=1e-5)
    agreement = verified["agreement"]
    stats = ["spearman", "recall_among_verified", "top_k_lift"]
    assert list(agreement["agreement_stat"].values) == stats
    assert np.isfinite(agreement.values).all()
    # recomputed from the stores: the verified cells are the estimate's top 6 and 6 random others
    logit = list(verified["metric"].values).index("logit_diff")
    conflict = verified["baseline"].sel(run="conflict", metric="logit_diff").values
    for row in range(verified.sizes["sample"]):
        mask = checked[row, ..., logit]
        estimate = np.abs(verified["effect"].values[row, ..., logit][mask] - conflict[row])
        truth = np.abs(exact["effect"].values[row, ..., logit][mask] - conflict[row])
        top = np.argsort(-estimate, kind="stable")[:6]
        controls = np.setdiff1d(np.arange(12), top)
        exact_top = np.argsort(-truth, kind="stable")[:6]
        expected = [
            len(set(top) & set(exact_top)) / 6,
            truth[top].mean() / truth[controls].mean(),
        ]
        np.testing.assert_allclose(agreement.values[row, 1:], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        torch.as_tensor(verified["baseline"].values), torch.as_tensor(exact["baseline"].values)
    )
