"""Study texts with every method on a tiny random-init thinker."""

from __future__ import annotations

METHODS = """\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      video_block: {queries: [answer, text], keys: [video], layers: 1-2}
      audio_sweep: {queries: [answer], keys: [audio], window: 2}
  - kind: logit_lens
    run: conflict
    position_groups: [audio, answer]
    final_norm: true
    top_k: 3
  - kind: attention_share
    run: conflict
  - kind: probes
    run: conflict
    position_groups: [audio, answer]
  - kind: base_comparison
    base: {random_init: {layers: 3, hidden_size: 32, heads: 2, kv_heads: 1, seed: 7}}
    runs: [clean, conflict]
    position_groups: [all, answer]
"""


def study_text(attention: str = "sdpa", samples: int = 3, methods: str = METHODS) -> str:
    """A small study on a random-init thinker running every method of issue 6."""
    return f"""\
name: methods-tiny
model:
  family: qwen2_5_omni
  random_init: {{layers: 3, hidden_size: 32, heads: 2, kv_heads: 1, seed: 1}}
  attention: {attention}
dataset:
  generator: random
  samples: {samples}
  seed: 3
interventions:
{methods}execution: {{batch_size: 4, unit_size: 2, seed: 0}}
"""
