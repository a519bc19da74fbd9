"""The other intervention methods run on every family's tiny checkpoint, with finite results.

Activation patching is checked for exactness elsewhere (test_end_to_end); here attention
knockout, attention share, logit lens and probes only have to run through each family's adapter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchwork import open_results, parse_study, run_study

from . import builders

VISUAL = {"qwen2_5_omni": "video", "qwen3_omni": "video", "gemma3n": "image", "generic": "audio"}
#: Methods that read the residual stream (through adapter.merge_streams: Gemma 3n has 4 streams).
STREAM_READERS = """\
  - kind: logit_lens
    position_groups: [audio, answer]
  - kind: probes
"""


@pytest.mark.parametrize("family", sorted(VISUAL))
def test_knockout_share_lens_and_probes_run(
    tmp_path: Path, family_root: Path, checkpoint, family: str
) -> None:
    builders.write_manifest(
        tmp_path / "samples.jsonl", builders.family_rows(family, family_root / "media")
    )
    extra = builders.GENERIC_BLOCK if family == "generic" else ""
    text = builders.study(
        tmp_path, family, checkpoint(family), builders.FAMILY_GROUPS[family], extra
    ).read_text()
    head, _, _ = text.partition("interventions:")
    methods = f"""\
interventions:
  - kind: attention_knockout
    rules: {{late: {{queries: [answer, text], keys: [{VISUAL[family]}], layers: [1]}}}}
  - kind: attention_share
"""
    methods += STREAM_READERS
    study = parse_study(head + methods + "execution: {unit_size: 2}\n", tmp_path / "s.yaml")
    results = open_results(run_study(study, store_root=tmp_path / "store").store).load()
    assert bool(results["done"].all())
    for name, variable in results.data_vars.items():
        if variable.dtype.kind == "f":
            assert np.isfinite(variable.values).all(), name
