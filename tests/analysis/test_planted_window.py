"""On the default model with planted video-access windows, ``locate`` finds the planted window.

The ``testbed-windowed`` checkpoint lets text and answer positions read video tokens only in
decoder layers 4-5. Patching the answer position's residual stream from the clean run into the
conflict run then restores the audio answer only from there on, so the located window of
(answer, residual) must lie inside layers 4-5, with its largest step there too.
"""

from __future__ import annotations

from pathlib import Path

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
