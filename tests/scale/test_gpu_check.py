"""``benchmarks/gpu_check.py``: its reduced mode (the GPU check's code path on a tiny float32
thinker, on the CPU) gives sane figures, and the GPU mode describes what its docstring says."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch

from patchwork import parse_study
from patchwork.loading.generators import random_sample
from patchwork.loading.model import load_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PUBLISHED_3B = ROOT / "tests" / "fixtures" / "published_configs" / "qwen2_5_omni_3b.json"
SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)
POSITIVE = ("peak_mem_mb", "wall_s_per_sample", "study_s_per_sample", "study_samples_per_hour")


@functools.cache
def gpu_check() -> ModuleType:
    """The script as a module (registered first: its dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_reduced_check_agrees_with_naive_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "max |Δ logit diff|" in result.stdout and "extrapolated" in result.stdout
    rows = {row["method"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"naive", "exact"}
    exact = rows["exact"]
    assert exact["cells"] == 12 and exact["study_cells"] == 3 * 4 * 3
    # float32 through three layers: a few roundings at the logits' size; the absolute floor keeps
    # the bound meaningful for logit differences near 0
    tolerance = 1e-6 + 64 * exact["rounding_scale"]
    assert 0 < exact["rounding_scale"] < 1e-5
    assert exact["max_abs_diff"] <= tolerance
    # the patches move the metric far more than exact and naive differ
    assert exact["largest_effect"] > 1000 * tolerance
    for row in rows.values():
        assert (row["device"], row["dtype"], row["extrapolated"]) == ("cpu", "float32", True)
        for key in POSITIVE:
            assert math.isfinite(row[key]) and row[key] > 0, (row["method"], key)
    assert rows["naive"]["max_abs_diff"] == 0


def test_the_check_builds_patchworks_random_init_model_at_its_sizes() -> None:
    module = gpu_check()
    study = parse_study(module.study_text(module.SCALES["cpu"]))
    built = module.build_model(study, module.SCALES["cpu"]).model
    reference = load_model(study.model).model
    ours = {**dict(built.named_parameters()), **dict(built.named_buffers())}
    theirs = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype and torch.equal(tensor, theirs[name]), name


def test_the_gpu_scale_is_the_published_3b_thinkers_decoder_on_a_10_second_clips_layout() -> None:
    module = gpu_check()
    scale = replace(module.SCALES["gpu"], device="meta")  # shapes only, no memory
    study = parse_study(module.study_text(replace(scale, device="cpu")))  # studies compute
    loaded = module.build_model(study, scale)
    assert sum(p.numel() for p in loaded.model.parameters()) > 3e9
    ours = loaded.adapter.config.text_config
    published = json.loads(PUBLISHED_3B.read_text())["thinker_config"]["text_config"]
    for name in SIZES:
        assert getattr(ours, name) == published[name], name
    assert ours.rope_parameters["rope_theta"] == published["rope_theta"]
    assert ours.rope_parameters["mrope_section"] == published["rope_scaling"]["mrope_section"]
    assert loaded.model.lm_head.weight is not loaded.model.get_input_embeddings().weight
    sample = random_sample(
        0,
        0,
        study.runs,
        study.question,
        loaded,
        mel_frames=scale.mel_frames,
        frame_size=scale.frame_size,
    )
    masks = loaded.adapter.position_groups(sample.runs["conflict"]["input_ids"])
    assert int(masks["audio"].sum()) == 250  # 10 s at 25 audio tokens per second
    assert 1600 <= sample.runs["conflict"]["input_ids"].shape[1] <= 1800
