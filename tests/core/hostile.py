"""Shared by the hostile-input tests: the ``patchwork`` command run in this process as installed
(``patchwork.cli.main``: one line and exit 2 for a user's mistake, a bug's exception passes
through), a tiny testbed-format checkpoint folder, and a study on it."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

#: The files a testbed-format folder holds (as ``patchwork testbed train --out DIR`` writes it).
TESTBED_FILES = ("config.json", "model.safetensors", "patchwork_testbed.json", "tokenizer.json")


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def line(self) -> str:
        """The one line a refusal prints (the test fails when there are more, or none)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, self.stderr
        return lines[0]


_registered = False


def patchwork_main(*arguments: object) -> Outcome:
    """``patchwork ARGUMENTS`` through :func:`patchwork.cli.main`, in this process. Any exception
    other than the command's own exit propagates: a traceback is a failure."""
    global _registered
    from patchwork import cli

    if not _registered:
        cli._register_subcommands()
        _registered = True
    stdout, stderr = io.StringIO(), io.StringIO()
    code: object = 0
    with (
        mock.patch.object(sys, "argv", ["patchwork", *map(str, arguments)]),
        mock.patch.object(cli, "_register_subcommands", lambda: None),  # registered once above
        redirect_stdout(stdout),
        redirect_stderr(stderr),
    ):
        try:
            cli.main()
        except SystemExit as exit_:
            code = exit_.code
    assert isinstance(code, int), code
    return Outcome(code, stdout.getvalue(), stderr.getvalue())


def refused(outcome: Outcome, *expected: str) -> str:
    """Assert a refusal: exit 2, one line ``error: …`` holding each of ``expected``."""
    assert outcome.code == 2, (outcome.code, outcome.stderr, outcome.stdout)
    line = outcome.line
    assert line.startswith("error: "), line
    assert "Traceback" not in outcome.stderr + outcome.stdout
    for text in expected:
        assert text in line, line
    return line


def tiny_testbed(folder: Path, seed: int = 0) -> Path:
    """A testbed-format checkpoint folder of a tiny thinker (2 layers, hidden 32; the testbed's
    tokenizer, token layout and media sizes), written by the testbed's own ``save``."""
    from patchwork.models.qwen2_5_omni import seeded_thinker
    from patchwork.testbed import model as testbed_model

    tokenizer = testbed_model.build_tokenizer()
    specials = testbed_model.special_ids(tokenizer)
    model = seeded_thinker(
        seed,
        audio=dict(
            num_mel_bins=testbed_model.N_MELS,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            d_model=16,
            output_dim=32,
            n_window=50,
            max_source_positions=1500,
        ),
        vision=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            in_channels=3,
            patch_size=testbed_model.PATCH,
            spatial_merge_size=testbed_model.MERGE,
            temporal_patch_size=testbed_model.TEMPORAL_PATCH,
            window_size=32,
            out_hidden_size=32,
            fullatt_block_indexes=[0],
        ),
        text=dict(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
        ),
        specials=specials,
        user_token_id=specials["pad"],
        pad_token_id=specials["pad"],
    )
    windows = {
        "video_access_layers": [1, 1],
        "audio_access_layers": None,
        "video_access_heads": None,
    }
    return testbed_model.save(model, tokenizer, folder, {"stage": 2, "windows": windows})


def study_on(folder: Path, checkpoint: Path, name: str = "hostile") -> Path:
    """A one-unit study of activation patching on ``checkpoint`` (testbed clips, 2 samples)."""
    path = folder / f"{name}.yaml"
    path.write_text(
        f"""\
name: {name}
model:
  family: qwen2_5_omni
  checkpoint: {json.dumps(str(checkpoint))}
dataset: {{generator: testbed, samples: 2, seed: 0}}
interventions:
  - kind: activation_patching
    components: [residual]
    layers: '0-1'
    position_groups: [answer]
    noise_floor: none
execution: {{batch_size: 8, unit_size: 2, seed: 0}}
"""
    )
    return path
