"""Every family, the whole study path on a tiny random-init checkpoint: load it from its directory,
decode media files into inputs, sweep, store — and the stored effects equal plain torch hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchwork import load_study, open_results, run_study
from patchwork.engine.runner import load_samples
from patchwork.loading.model import load_model

from . import builders, reference


@pytest.mark.parametrize(
    ("family", "audio_in_video"),
    [
        ("qwen2_5_omni", True),
        ("qwen3_omni", False),
        ("qwen3_omni", True),
        ("gemma3n", None),
        ("generic", None),
    ],
)
def test_stored_effects_equal_plain_torch(
    tmp_path: Path, family_root: Path, checkpoint, family: str, audio_in_video: bool | None
) -> None:
    path = builders.family_study(
        tmp_path, family, checkpoint(family), family_root / "media", audio_in_video
    )
    study = load_study(path)
    summary = run_study(study, store_root=tmp_path / "store")
    results = open_results(summary.store).load()
    assert bool(results["done"].all())
    assert np.isfinite(results["effect"].values).all()

    loaded = load_model(study.model)
    samples = load_samples(study, loaded).load(0, 2)
    # the reference passes the interleaving flag itself; it does not ask the adapter
    extra = {"use_audio_in_video": True} if audio_in_video else None
    checked = reference.check_store(results, loaded, samples, family, extra)
    groups = len(builders.FAMILY_GROUPS[family].split(","))
    assert checked == 2 * loaded.adapter.num_layers * groups * 3
