"""The shipped study files run as written, pointed at a tiny checkpoint and a tiny manifest."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from patchwork import open_results, parse_study, run_study

from . import builders

STUDIES = Path(__file__).resolve().parents[2] / "studies"
CHAT_TEMPLATE = STUDIES.parent / "tests/fixtures/published_configs/qwen2_5_omni_chat_template.jinja"
SHIPPED = {
    "qwen2_5_omni_counterfactual.yaml": ("qwen2_5_omni", True),
    "qwen3_omni_counterfactual.yaml": ("qwen3_omni", True),
    "gemma3n_counterfactual.yaml": ("gemma3n", None),
    "generic_qwen2_audio.yaml": ("generic", None),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_study_runs_on_a_tiny_checkpoint(
    tmp_path: Path, family_root: Path, checkpoint, name: str
) -> None:
    family, audio_in_video = SHIPPED[name]
    model = checkpoint(family)
    if "template: checkpoint" in (STUDIES / name).read_text():
        # the tiny checkpoints ship no chat template: give them the published Qwen2.5-Omni one
        model = tmp_path / "checkpoint"
        shutil.copytree(checkpoint(family), model)
        shutil.copy(CHAT_TEMPLATE, model / "chat_template.jinja")
    rows = builders.family_rows(family, family_root / "media", audio_in_video)
    builders.write_manifest(tmp_path / "samples.jsonl", rows)
    text = (STUDIES / name).read_text()
    # only what ties the study to real hardware, weights and data changes; layers: one, for time
    for pattern, replacement in (
        (r"checkpoint: .*", f"checkpoint: {model}"),
        (r"system: .*", "system: what do you hear"),  # words of the tiny tokenizer
        (r"manifest: .*", "manifest: samples.jsonl"),
        (r"dtype: bfloat16", "dtype: float32"),
        (r"device: cuda", "device: cpu"),
        (r"layers: all", "layers: [1]"),
        (r"audio: \[151646\]", "audio: [1]"),
    ):
        text = re.sub(pattern, replacement, text)
    study = parse_study(text, tmp_path / name)
    assert study.model.family == family
    summary = run_study(study, store_root=tmp_path / "store")
    results = open_results(summary.store).load()
    assert bool(results["done"].all())
    assert np.isfinite(results["effect"].values).all()
    assert np.isfinite(results["null_effect"].values).all()
