"""Does exact patching hold at scale? Exact vs naive on a 3B-sized thinker in bfloat16 on CUDA.

One process, one model, one table: patchwork's ``exact`` method (through its public pieces, the
activation-patching method and its :class:`~patchwork.patching.patcher.Patcher`, as
``benchmarks/sweep.py`` runs it) against ``naive``, one full forward per condition with plain
torch forward hooks (``sweep.naive_effects``, imported), on the same cells of the same samples.

The model (``--cpu`` aside) is a random-init Qwen2.5-Omni thinker built the way patchwork builds
``random_init`` models (:func:`patchwork.loading.model.random_thinker`: its seeded config, its
special tokens and towers), with the text decoder resized to Qwen2.5-Omni-3B's thinker and
created directly on the device in the dtype, as ``from_pretrained(dtype=…)`` creates it (rotary
frequencies stay float32; at ``RandomInit``'s own sizes the build equals ``load_model``'s, which
the test checks). ``RandomInit`` fixes the MLP at twice the hidden size, hence the direct build.

Realistic: the text decoder — 36 layers, hidden 2048, MLP 11008, 16 query / 2 key-value heads
(head dim 128, mrope sections 16/24/24, rope theta 1e6), vocabulary 151936, untied unembedding:
3.40 B parameters, 6.8 GB in bfloat16; sdpa attention; bfloat16 weights; the token layout of a
10 s counterfactual clip, ~1.7 k tokens: 250 audio tokens (1000 mel frames, 25 tokens per
second) + 1444 video tokens + the question. A real 10 s clip at 2 frames per second and 252×448
gives 10 temporal grids × 144 = 1440 video tokens; patchwork's ``random`` generator makes one
temporal grid, so here one 304×304 frame of 76×76 patches merged 2×2 (same count, same cost;
other mrope positions).

Not realistic: the weights are random (normal, std 0.02), so activations, logits and attention
patterns are not a trained model's (no saturated attention; logit magnitudes differ); the audio
and vision towers are random_init's tiny ones (one layer, width 32, 32 mel bins, 4-pixel
patches) instead of the 32-layer Whisper-sized audio encoder and the 32-layer vision encoder
(together ~1.3 B parameters; the real thinker is ~4.7 B): tower memory and time are missing —
naive re-runs the towers on every condition and exact twice per sample, so naive's real cost is
higher still. Samples are the ``random`` generator's, one study sample = clean and conflict runs
differing in the picture.

Measured: residual patches in three layers (first, middle, last) × the four position groups
(audio, video, text, answer), ``noise_floor: none``, ``batch_size: 16``. Columns:
max |difference| of the logit difference (audio − visual answer) between exact and naive over
those cells; the rounding scale to read it against (the dtype's machine epsilon × the largest
|logit| of the answer row of the unpatched conflict run; bfloat16's epsilon is 2⁻⁷); the largest
change a patch makes to the logit difference (the signal the difference is small against); peak
memory (CUDA: ``torch.cuda.max_memory_allocated``, reset before each method; CPU: the process's
peak RSS so far, not separable by method); wall time per sample (CUDA synchronised). The study
figures are EXTRAPOLATED, not measured: seconds and samples per hour per sample of the
counterfactual study's layout (``studies/qwen2_5_omni_counterfactual.yaml``: every layer × 4
groups × 3 components, mismatched noise floor, i.e. two patched passes per sample). Naive: one
forward per measured condition plus the source run, so per forward = wall / (cells + 1), and the
study needs 1 + 2 × cells forwards. Exact: a fixed part of two full forwards (the source record
and the target's cached run) plus the rest of the measured wall time shared equally over the
measured cells; the measured layers' mean remaining depth (first, middle, last) is the full
sweep's within a few per cent. Linear in cells, so it ignores that a full sweep fills the
batches better (exact's real figure should be lower).

Usage: ``python benchmarks/gpu_check.py [--cpu] [--json PATH]``. ``--cpu``: the same code path
reduced to a 3-layer hidden-64 thinker, ~30 tokens, float32 on the CPU (seconds; run by
``tests/scale/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

GROUPS = ["audio", "video", "text", "answer"]
#: The counterfactual study's cells per layer (4 groups × 3 components) and patched passes per
#: sample (effect and the mismatched noise floor).
STUDY_CELLS_PER_LAYER = 4 * 3
STUDY_PASSES = 2


@dataclass(frozen=True)
class Scale:
    """Model sizes, token layout and where it runs."""

    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    rope_theta: float
    measured_layers: tuple[int, ...]
    mel_frames: int  # 4 mel frames per audio token
    frame_size: int  # square frame side in pixels: (frame_size / 8)² video tokens
    samples: int
    dtype: str
    device: str


SCALES = {
    # Qwen2.5-Omni-3B's thinker text decoder, a 10 s clip's token count
    "gpu": Scale(
        layers=36,
        hidden_size=2048,
        heads=16,
        kv_heads=2,
        intermediate_size=11008,
        vocab_size=151936,
        max_positions=32768,
        rope_theta=1e6,
        measured_layers=(0, 18, 35),
        mel_frames=1000,
        frame_size=304,
        samples=2,
        dtype="bfloat16",
        device="cuda",
    ),
    # patchwork's own random_init at these sizes (MLP 2 × hidden, 2048 positions, theta 1e4)
    "cpu": Scale(
        layers=3,
        hidden_size=64,
        heads=4,
        kv_heads=2,
        intermediate_size=128,
        vocab_size=256,
        max_positions=2048,
        rope_theta=10000.0,
        measured_layers=(0, 1, 2),
        mel_frames=40,
        frame_size=16,
        samples=2,
        dtype="float32",
        device="cpu",
    ),
}


def study_text(scale: Scale) -> str:
    """The measured study: residual patches in ``measured_layers`` × the four groups."""
    return f"""\
name: gpu_check
model:
  random_init: {{layers: {scale.layers}, hidden_size: {scale.hidden_size}, heads: {scale.heads}, \
kv_heads: {scale.kv_heads}, vocab_size: {scale.vocab_size}, seed: 0}}
  dtype: {scale.dtype}
  device: {scale.device}
dataset: {{generator: random, samples: {scale.samples}}}
interventions:
  - kind: activation_patching
    layers: {json.dumps(list(scale.measured_layers))}
    position_groups: {json.dumps(GROUPS)}
    components: [residual]
    method: exact
    noise_floor: none
execution: {{batch_size: 16, unit_size: 8}}
"""


def build_model(study: Any, scale: Scale) -> Any:
    """The study's random_init thinker with ``scale``'s text decoder, built on the scale's device
    (``meta`` for shapes alone) in the study's dtype under its seed (a
    :class:`~patchwork.loading.model.LoadedModel`)."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from patchwork.loading.model import LoadedModel, adapter_class, random_thinker

    spec = study.model
    with torch.device("meta"):  # patchwork's random_init config, no weights
        config = random_thinker(spec.random_init, spec.attention).config
    text = config.text_config
    text.intermediate_size = scale.intermediate_size
    text.max_position_embeddings = scale.max_positions
    text.rope_parameters = {**text.rope_parameters, "rope_theta": scale.rope_theta}
    with torch.random.fork_rng(devices=[]), torch.device(scale.device):  # caller's CPU state kept
        torch.manual_seed(spec.random_init.seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
            config, dtype=getattr(torch, spec.dtype)
        )
    model.eval()
    return LoadedModel(model, adapter_class(spec)(model, None), "random_init")


def measure(scale: Scale) -> list[dict[str, Any]]:
    """Run naive then exact on the measured cells; one row per method."""
    import torch

    from patchwork import parse_study
    from patchwork.loading.generators import random_sample
    from patchwork.methods.activation_patching import ActivationPatchingMethod
    from patchwork.patching.patcher import Patcher

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    naive_effects = importlib.import_module("sweep").naive_effects

    device = torch.device(scale.device)
    on_cuda = device.type == "cuda"

    def synchronize() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    def peak_mb() -> float:
        if on_cuda:
            return torch.cuda.max_memory_allocated(device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    study = parse_study(study_text(scale))
    loaded = build_model(study, scale)
    synchronize()
    model_mb = torch.cuda.memory_allocated(device) / 2**20 if on_cuda else None
    parameters = sum(p.numel() for p in loaded.model.parameters())
    method = ActivationPatchingMethod(study.patching, 0, study, loaded)
    samples = [
        random_sample(
            index,
            0,
            study.runs,
            study.question,
            loaded,
            mel_frames=scale.mel_frames,
            frame_size=scale.frame_size,
        )
        for index in range(scale.samples)
    ]
    on_device = [
        replace(
            sample,
            runs={
                name: {key: value.to(device) for key, value in run.items()}
                for name, run in sample.runs.items()
            },
        )
        for sample in samples
    ]
    target = method.spec.target
    # unpatched target runs: the rounding scale, the baseline of each effect, and a warm-up
    conflict_logit_diff, logit_scale = [], 0.0
    with torch.no_grad():
        for sample in on_device:
            logits = loaded.model(**sample.runs[target]).logits[0, -1].float()
            conflict_logit_diff.append(
                float(logits[sample.audio_answer_id] - logits[sample.visual_answer_id])
            )
            logit_scale = max(logit_scale, float(logits.abs().max()))
    synchronize()

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    naive = naive_effects(method, on_device)
    synchronize()
    naive_s = time.perf_counter() - started
    naive_mb = peak_mb()

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    arrays = method.compute(samples, Patcher(loaded.adapter))
    synchronize()
    exact_s = time.perf_counter() - started
    exact_mb = peak_mb()
    effect = arrays["effect"][..., 0]  # logit_diff
    exact = np.array(
        [[effect[(row, *method.cell[c])] for c in method.conditions] for row in range(len(samples))]
    )

    cells = len(method.conditions)
    study_cells = scale.layers * STUDY_CELLS_PER_LAYER
    forward_s = naive_s / scale.samples / (cells + 1)
    exact_fixed_s = 2 * forward_s
    exact_cell_s = max(exact_s / scale.samples - exact_fixed_s, 0.0) / cells
    study_s = {
        "naive": forward_s * (1 + STUDY_PASSES * study_cells),
        "exact": exact_fixed_s + STUDY_PASSES * study_cells * exact_cell_s,
    }
    common = {
        "device": str(device),
        "dtype": scale.dtype,
        "parameters": parameters,
        "layers": scale.layers,
        "hidden_size": scale.hidden_size,
        "tokens": int(samples[0].runs[target]["input_ids"].shape[1]),
        "samples": scale.samples,
        "cells": cells,
        "logit_scale": logit_scale,
        "rounding_scale": float(torch.finfo(getattr(torch, scale.dtype)).eps) * logit_scale,
        "largest_effect": float(np.abs(naive - np.array(conflict_logit_diff)[:, None]).max()),
        "memory": "cuda max_memory_allocated" if on_cuda else "process peak RSS so far",
        "model_mem_mb": model_mb,
        "study_cells": study_cells,
        "study_passes": STUDY_PASSES,
        "extrapolated": True,
    }
    rows = []
    for name, values, wall, memory in (
        ("naive", naive, naive_s, naive_mb),
        ("exact", exact, exact_s, exact_mb),
    ):
        rows.append(
            {
                "method": name,
                **common,
                "max_abs_diff": float(np.abs(values - naive).max()),
                "peak_mem_mb": memory,
                "wall_s_per_sample": wall / scale.samples,
                "study_s_per_sample": study_s[name],
                "study_samples_per_hour": 3600 / study_s[name],
            }
        )
    return rows


COLUMNS = [
    ("method", "method", "{}"),
    ("max_abs_diff", "max |Δ logit diff|", "{:.3g}"),
    ("rounding_scale", "eps × |logit|", "{:.3g}"),
    ("largest_effect", "largest effect", "{:.3g}"),
    ("peak_mem_mb", "peak mem (MiB)", "{:.0f}"),
    ("wall_s_per_sample", "s / sample", "{:.3g}"),
    ("study_s_per_sample", "study s / sample*", "{:.3g}"),
    ("study_samples_per_hour", "study samples / h*", "{:.3g}"),
]


def print_table(rows: list[dict[str, Any]]) -> None:
    first = rows[0]
    print(
        f"random-init Qwen2.5-Omni thinker: {first['parameters'] / 1e6:,.1f} M parameters, "
        f"{first['layers']} layers, hidden {first['hidden_size']}, {first['dtype']} on "
        f"{first['device']}; {first['tokens']} tokens; {first['samples']} samples × "
        f"{first['cells']} cells (residual, {first['cells'] // len(GROUPS)} layers × "
        f"{len(GROUPS)} groups)"
        + (
            f"; weights {first['model_mem_mb']:.0f} MiB"
            if first["model_mem_mb"] is not None
            else ""
        )
    )
    widths = [max(len(title), 9) for _, title, _ in COLUMNS]
    print("  ".join(title.ljust(w) for (_, title, _), w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        cells = [form.format(row[key]) for key, _, form in COLUMNS]
        print("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)))
    print(
        f"memory: {first['memory']}. * extrapolated from the measured cells, not measured: the "
        f"counterfactual study layout, {first['layers']} layers × 4 groups × 3 components = "
        f"{first['study_cells']} cells, {first['study_passes']} patched passes per sample "
        "(mismatched noise floor)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu", action="store_true", help="reduced check: tiny model, float32, on the CPU"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    import torch

    scale = SCALES["cpu" if args.cpu else "gpu"]
    if args.cpu:
        torch.set_num_threads(1)  # patchwork's default (execution.threads)
    elif not torch.cuda.is_available():
        parser.exit(2, "gpu_check: no CUDA device here; --cpu runs the reduced check\n")
    rows = measure(scale)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
