"""``patchwork plan`` on the published configurations of the real checkpoints (config values in
``tests/fixtures/published_configs``; no weights): module paths resolve, weights are the
parameters in the study's dtype, the exact path is cheaper than a naive sweep, and the table
prints with one line per quantity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from patchwork.cli import app
from patchwork.engine.cost import plan_study
from patchwork.study import load_study

from . import builders

CONFIGS = Path(__file__).parents[1] / "fixtures/published_configs"
#: fixture → family.
PUBLISHED = {
    "qwen2_5_omni_3b": "qwen2_5_omni",
    "qwen2_5_omni_7b": "qwen2_5_omni",
    "qwen3_omni_30b_a3b": "qwen3_omni",
    "gemma3n_e4b": "gemma3n",
}


#: Published parameter counts of what patchwork loads (the thinker; sources in SOURCES.md).
THINKER_PARAMETERS = {"qwen2_5_omni_7b": 8_931_813_888, "qwen3_omni_30b_a3b": 31_719_205_488}


def _checkpoint(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / f"{name}.json", folder / "config.json")
    return folder


def _gemma_rows(media: Path, config: dict, folder: Path) -> list[dict]:
    tokens = config["vision_soft_tokens_per_image"]
    width = config["vision_config"]["hidden_size"]
    rows = builders.family_rows("gemma3n", media)
    for index, row in enumerate(rows):
        path = folder / f"features{index}.npy"
        np.save(path, np.zeros((1, tokens, width), dtype=np.float32))
        for run in row["runs"].values():
            run["image_features"] = str(path)
    return rows


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_plan_on_a_published_configuration(name: str, family_root: Path, tmp_path: Path) -> None:
    family = PUBLISHED[name]
    checkpoint = _checkpoint(tmp_path / name, name)
    config = json.loads((checkpoint / "config.json").read_text())
    rows = (
        _gemma_rows(family_root / "media", config, tmp_path)
        if family == "gemma3n"
        else builders.family_rows(family, family_root / "media")
    )
    builders.write_manifest(tmp_path / "samples.jsonl", rows)
    path = builders.study(tmp_path, family, checkpoint, builders.FAMILY_GROUPS[family])
    path.write_text(path.read_text().replace("model:\n", "model:\n  dtype: bfloat16\n"))
    estimate = plan_study(load_study(path))

    # weights: every parameter in bfloat16 (buffers in their own dtype: a fraction of a percent)
    assert abs(estimate.weight_bytes - 2 * estimate.parameters) <= 0.05 * 2 * estimate.parameters
    if name in THINKER_PARAMETERS:
        published = THINKER_PARAMETERS[name]
        assert abs(estimate.weight_bytes - 2 * published) <= 0.05 * 2 * published
    text = config.get("thinker_config", config).get("text_config", {})
    assert estimate.layers == text["num_hidden_layers"]
    assert estimate.cells == estimate.layers * 4 * 3
    assert estimate.forwards_naive == 2 * (2 + estimate.cells)
    assert 2 * 2 < estimate.forwards_exact < estimate.forwards_naive
    assert 0 < estimate.flops_exact < estimate.flops_naive
    assert estimate.peak_bytes > estimate.weight_bytes
    assert estimate.tokens["audio"][0] > 0 and estimate.tokens["answer"] == (1, 1)

    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    for quantity in ("parameters", "positions per sample", "forwards", "peak accelerator"):
        assert quantity in result.output


def test_plan_refuses_what_validate_refuses(family_root: Path, tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "qwen", "qwen2_5_omni_3b")
    builders.write_manifest(
        tmp_path / "samples.jsonl", builders.family_rows("qwen2_5_omni", family_root / "media")
    )
    path = builders.study(tmp_path, "qwen2_5_omni", checkpoint, "[audio]")
    path.write_text(path.read_text().replace("layers: all", "layers: [40]"))
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert "layers" in result.output and "Traceback" not in result.output
