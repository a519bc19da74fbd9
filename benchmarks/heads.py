"""How fast is a head-patching sweep? patchwork's exact paths against a naive per-head loop.

On the larger random-init Qwen2.5-Omni thinker of ``sweep.py`` (24 layers, hidden 512, 8 query
heads, 529 tokens), one sample, every head of 6 layers at the picture's and the answer's
positions (96 cells):

- ``naive``: one full forward per (layer, head, group), a plain pre-hook on ``o_proj`` writing the
  head's slice (TransformerLens-style);
- ``exact, resumed``: ``kind: head_patching`` (each batch starts at its layer and first changed
  position, reusing the target run's cache);
- ``exact, full forwards``: the same with ``execution.reuse: false`` (batched rows only).

Each runs in a fresh process, one thread. Prints wall time, ratio to naive and the largest
difference of the logit difference to naive.

Usage: ``python benchmarks/heads.py [--quick]`` (``--quick``: 2 layers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

LAYERS = {False: [0, 4, 8, 12, 16, 20], True: [0, 12]}
GROUPS = ["video", "answer"]


def study_text(layers: list[int], reuse: bool) -> str:
    return f"""\
name: heads-bench
model:
  random_init: {{layers: 24, hidden_size: 512, heads: 8, kv_heads: 4, seed: 0}}
dataset: {{generator: random, samples: 1}}
interventions:
  - kind: head_patching
    layers: {json.dumps(layers)}
    position_groups: {json.dumps(GROUPS)}
execution: {{batch_size: 32, unit_size: 1, reuse: {str(reuse).lower()}}}
"""


def child(mode: str, quick: bool, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    from patchwork.loading.generators import random_sample
    from patchwork.loading.model import load_model
    from patchwork.methods.head_patching import HeadPatchingMethod
    from patchwork.patching.heads import output_projection, record_heads
    from patchwork.patching.metrics import answer_metrics
    from patchwork.patching.patcher import Patcher
    from patchwork.study import parse_study

    study = parse_study(study_text(LAYERS[quick], mode != "full"))
    loaded = load_model(study.model)
    method = HeadPatchingMethod(study.interventions[0], 0, study, loaded)
    sample = random_sample(0, 0, study.runs, study.question, loaded, mel_frames=1600, frame_size=88)
    adapter = loaded.adapter
    ids = (sample.audio_answer_id, sample.visual_answer_id)
    started = time.perf_counter()
    if mode == "naive":
        _, clean = record_heads(adapter, sample.runs["clean"], method.layers)
        target = sample.runs["conflict"]
        masks = adapter.position_groups(target["input_ids"])
        width = clean[method.layers[0]].shape[-1]
        values = []
        for condition in method.conditions:
            positions = masks[condition.position_group]
            columns = slice(condition.head * width, (condition.head + 1) * width)

            def write(module, args, positions=positions, columns=columns, layer=condition.layer):
                hidden = args[0].clone()
                hidden[0, positions, columns] = clean[layer].flatten(-2)[positions, columns]
                return (hidden, *args[1:])

            projection = output_projection(adapter, condition.layer)
            handle = projection.register_forward_pre_hook(write)
            with torch.no_grad():
                logits = adapter.answer_logits(adapter.root(**target).logits)
            handle.remove()
            values.append(float(answer_metrics(logits, *ids)["logit_diff"][0]))
    else:
        arrays = method.compute([sample], Patcher(adapter))
        effect = arrays["head_effect"][0, ..., 0]  # logit_diff
        values = [
            float(
                effect[
                    method.layers.index(c.layer),
                    method.heads.index(c.head),
                    GROUPS.index(c.position_group),
                ]
            )
            for c in method.conditions
        ]
    wall = time.perf_counter() - started
    np.save(out, np.array(values))
    tokens = sample.runs["conflict"]["input_ids"].shape[1]
    print(json.dumps({"wall_s": wall, "cells": len(method.conditions), "tokens": tokens}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.quick, args.child[1])
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for mode in ("naive", "resumed", "full"):
            out = f"{scratch}/{mode}.npy"
            command = [sys.executable, __file__, "--child", mode, out]
            result = subprocess.run(
                command + (["--quick"] if args.quick else []),
                capture_output=True,
                text=True,
                check=True,
            )
            info = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append((mode, info, np.load(out)))
    naive_wall, naive_values = rows[0][1]["wall_s"], rows[0][2]
    print(f"{'method':24}{'wall_s':>10}{'x naive':>10}{'max |diff|':>14}  detail")
    labels = {"naive": "naive per-head loop", "resumed": "exact, resumed", "full": "exact, full"}
    for mode, info, values in rows:
        difference = float(np.abs(values - naive_values).max())
        print(
            f"{labels[mode]:24}{info['wall_s']:>10.2f}{info['wall_s'] / naive_wall:>10.3f}"
            f"{difference:>14.2e}  {info['cells']} cells, {info['tokens']} tokens"
        )


if __name__ == "__main__":
    main()
