"""On the default model with planted video-access windows, ``locate`` finds the planted window.

The ``testbed-windowed`` checkpoint lets text and answer positions read video tokens only in
decoder layers 4-5. Patching the answer position's residual stream from the clean run into the
conflict run then restores the audio answer only from there on, so the located window of
(answer, residual) must lie inside layers 4-5, with its largest step there too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import patchwork
from patchwork.analysis import locate

PLANTED_VIDEO_LAYERS = (4, 5)

STUDY = """
name: planted
description: Answer-position residual patching on the testbed with planted access windows.
model:
  family: qwen2_5_omni
  checkpoint: testbed-windowed
  dtype: float32
  device: cpu
  attention: sdpa
dataset:
  generator: testbed
  samples: 32
  seed: 0
runs:
  clean: {audio: own, picture: blank}
  conflict: {audio: own, picture: other_category}
question: what do you hear
interventions:
  - kind: activation_patching
    from: clean
    into: conflict
    components: [residual]
    layers: all
    window: 1
    position_groups: [answer]
    noise_floor: mismatched
metrics: [logit_diff, audio_probability, normalized_effect]
execution: {batch_size: 16, unit_size: 16, seed: 0}
"""


def test_locate_returns_the_planted_video_window(tmp_path: Path) -> None:
    study_file = tmp_path / "planted.yaml"
    study_file.write_text(STUDY)
    summary = patchwork.run_study(patchwork.load_study(study_file), store_root=tmp_path / "store")
    results = patchwork.open_results(summary.store)
    found = locate(results, n_resamples=500).sel(position_group="answer", component="residual")
    assert str(found["status"].values) == "located", found
    assert str(found["direction"].values) == "rise"
    start, end = int(found["start_layer"]), int(found["end_layer"])
    first, last = PLANTED_VIDEO_LAYERS
    assert first <= start <= end <= last, (start, end)
    assert first <= int(found["peak_layer"]) <= last


ALL_CELLS = STUDY.replace(
    "components: [residual]", "components: [residual, attention, mlp]"
).replace("position_groups: [answer]", "position_groups: [audio, video, text, answer]")


def clips_ranking_planted_top(tmp_path: Path, method: str, top: int) -> tuple[int, int]:
    """(clips whose ``top`` largest changes of the logit difference include both planted
    answer-residual cells, clips) for every cell of the quickstart grid (8 layers × 4 groups ×
    3 components)."""
    study_file = tmp_path / f"{method}.yaml"
    study_file.write_text(
        ALL_CELLS.replace("noise_floor: mismatched", f"noise_floor: none\n    method: {method}")
    )
    summary = patchwork.run_study(patchwork.load_study(study_file), store_root=tmp_path / method)
    results = patchwork.open_results(summary.store).load()
    logit = results["effect"].sel(metric="logit_diff")
    conflict = results["baseline"].sel(run="conflict", metric="logit_diff")
    change = abs(logit - conflict).transpose("sample", "layer", "position_group", "component")
    cells = change.stack(cell=("layer", "position_group", "component"))
    names = [(int(layer), str(group), str(c)) for layer, group, c in cells["cell"].values]
    planted = {names.index((layer, "answer", "residual")) for layer in PLANTED_VIDEO_LAYERS}
    found = sum(planted <= set(np.argsort(-values, kind="stable")[:top]) for values in cells.values)
    return found, cells.sizes["sample"]


def test_default_attribution_ranks_the_planted_answer_cells_top(tmp_path: Path) -> None:
    """The planted window's answer-residual cells are among a clip's 16 largest changes (one
    sixth of the 96 cells) for at least 90% of clips, by the default ``method: attribution``
    as by exact patching. (Not the top few: the answer residual after the window and the video
    residual before it restore the clean answer as fully, so those cells tie with the window's.)"""
    exact, clips = clips_ranking_planted_top(tmp_path, "exact", 16)
    estimated, _ = clips_ranking_planted_top(tmp_path, "attribution", 16)
    assert exact >= 0.9 * clips, (exact, clips)
    assert estimated >= 0.9 * clips, (estimated, clips)
