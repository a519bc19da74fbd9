"""Attribution patching on every family: gradients are taken where patching reads and writes (after
DeepStack's additions, on every AltUp stream), and the AtP* corrections run where the adapter
allows them and are refused with the study line where it does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork import load_study, open_results, run_study
from patchwork.engine.runner import load_samples
from patchwork.errors import StudyError
from patchwork.loading.model import load_model
from patchwork.patching.attribution import condition_changes, linearize, site_changes
from patchwork.patching.metrics import answer_metrics
from patchwork.patching.patcher import Patcher, sweep_conditions

from . import builders

#: The group whose content differs between the clean and the conflict run.
CHANGED = {"qwen2_5_omni": "video", "qwen3_omni": "video", "gemma3n": "image", "generic": "audio"}


@pytest.mark.parametrize("family", sorted(CHANGED))
@pytest.mark.parametrize("component", ["residual", "attention"])
def test_estimates_are_the_derivative_of_patchworks_exact_patching(
    tmp_path: Path, family_root: Path, checkpoint, family: str, component: str
) -> None:
    study = load_study(
        builders.family_study(tmp_path, family, checkpoint(family), family_root / "media")
    )
    loaded = load_model(study.model)
    adapter = loaded.adapter
    sample = load_samples(study, loaded).load(0, 1)[0]
    clean, conflict = sample.runs["clean"], sample.runs["conflict"]
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    masks = adapter.position_groups(conflict["input_ids"])
    (condition,) = sweep_conditions([0], 1, adapter.num_layers, [CHANGED[family]], [component])
    site = (0, component)
    patcher = Patcher(adapter)
    _, source = patcher.record(clean, [site])
    _, target = patcher.record(conflict, [site])

    linearization = linearize(adapter, conflict, [site], *ids)
    torch.testing.assert_close(linearization.activations[site], target[site], atol=1e-5, rtol=1e-5)

    epsilon = 1e-3
    blend = {site: target[site] + epsilon * (source[site] - target[site])}
    logits = patcher.patched(conflict, blend, [condition], masks)
    patched = float(answer_metrics(logits, *ids)["logit_diff"][0])
    slope = (patched - linearization.metrics["logit_diff"]) / epsilon
    delta = {site: source[site] - target[site]}
    cells = site_changes(delta, linearization.gradients["logit_diff"], masks, [CHANGED[family]])
    (estimate,) = condition_changes([condition], cells)
    assert abs(slope) > 1e-4  # the patch moves the metric
    assert estimate == pytest.approx(slope, rel=0.05, abs=1e-4)


def attribution_study(tmp_path: Path, family_root: Path, checkpoint, family: str, corrections):
    path = builders.family_study(tmp_path, family, checkpoint(family), family_root / "media")
    text = path.read_text().replace(
        "    noise_floor: none",
        f"    noise_floor: none\n    method: attribution+verify\n    verify_top_k: 3\n"
        f"    corrections: {corrections}",
    )
    path.write_text(text)
    return load_study(path)


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_every_correction_runs_on_the_qwen_families(
    tmp_path: Path, family_root: Path, checkpoint, family: str
) -> None:
    study = attribution_study(tmp_path, family_root, checkpoint, family, "[qk, readout, graddrop]")
    results = open_results(run_study(study, tmp_path / "store").store).load()
    assert np.isfinite(results["effect"].values).all()
    graddrop = results["graddrop"]
    assert graddrop.dims == ("sample", "layer", "position_group", "component")
    assert bool((graddrop >= 0).all()) and bool((graddrop > 0).any())
    assert np.isfinite(results["agreement"].values).all()


@pytest.mark.parametrize("family", ["gemma3n", "generic"])
def test_corrections_an_adapter_cannot_make_are_refused(
    tmp_path: Path, family_root: Path, checkpoint, family: str
) -> None:
    study = attribution_study(tmp_path, family_root, checkpoint, family, "[qk, graddrop]")
    with pytest.raises(StudyError, match=r"\.yaml:\d+: interventions\[0\]\.corrections: the "):
        run_study(study, tmp_path / "store")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


@pytest.mark.parametrize("family", sorted(CHANGED))
def test_a_full_budget_reports_exact_patching_on_every_family(
    tmp_path: Path, family_root: Path, checkpoint, family: str
) -> None:
    """verify_budget: 1 patches every cell exactly, by the resumed path (Qwen2.5-Omni) or full
    traces (the others, Gemma 3n's streams included): the reported map equals method: exact, and
    with a budget of 0 only patches that change nothing are flagged, and they are exact too."""
    path = builders.family_study(tmp_path, family, checkpoint(family), family_root / "media")
    text = path.read_text()
    maps = {}
    for name, options in (
        ("exact", "method: exact"),
        ("full", "method: attribution\n    verify_budget: 1.0"),
        ("none", "method: attribution\n    verify_budget: 0.0"),
    ):
        path.write_text(text.replace("noise_floor: none", f"noise_floor: none\n    {options}"))
        maps[name] = open_results(run_study(load_study(path), tmp_path / name).store).load()
    assert bool((maps["full"]["verified"] == 1).all())
    np.testing.assert_allclose(
        maps["full"]["effect"].values, maps["exact"]["effect"].values, atol=1e-5
    )
    unchanged = maps["none"]["verified"].values.astype(bool)  # none, where every group changes
    assert not unchanged.all()
    np.testing.assert_allclose(
        maps["none"]["effect"].values[unchanged],
        maps["exact"]["effect"].values[unchanged],
        atol=1e-5,
    )
