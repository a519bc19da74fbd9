"""On the testbed model trained with planted access windows (text reads video only in layers
4-5, audio only in 0-2), knockout and attention share find the windows. Skipped when that
checkpoint is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from patchwork import open_results, parse_study, run_study

STUDY = """\
name: windowed-check
model: {checkpoint: testbed-windowed, attention: sdpa}
dataset: {generator: testbed, samples: 12, seed: 5}
interventions:
  - kind: attention_knockout
    rules:
      inside: {queries: [answer, text], keys: [video], layers: 4-5}
      outside: {queries: [answer, text], keys: [video], layers: [0-3, 6-7]}
  - kind: attention_share
    queries: [answer]
    keys: [audio, video, text, answer]
execution: {batch_size: 4, unit_size: 12}
"""


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    summary = run_study(parse_study(STUDY), store_root=tmp_path_factory.mktemp("windowed"))
    return open_results(summary.store).load()


def test_blocking_video_inside_the_window_recovers_the_audio_answer(windowed) -> None:
    base = windowed["knockout_baseline"].sel(metric="logit_diff")
    conflicting = (base.sel(knockout_run="conflict") < 0).values
    assert conflicting.sum() >= 6
    effect = windowed["knockout_effect"].sel(metric="normalized_effect")[conflicting]
    assert float(effect.sel(knockout="inside@4-5").mean()) >= 0.5
    assert abs(float(effect.sel(knockout="outside@0-3,6-7").mean())) < 0.05


def test_answer_attention_to_audio_lives_in_the_audio_window(windowed) -> None:
    share = windowed["share_mean"].sel(share_query="answer", share_key="audio").mean("sample")
    inside = share.sel(share_layer=[0, 1, 2]).values
    outside = share.sel(share_layer=[3, 4, 5, 6, 7]).values
    assert inside.min() > 0.01
    assert np.all(outside < 1e-6)
