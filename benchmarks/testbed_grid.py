"""Does the testbed recipe make an organism for any planted window? A grid of windows × seeds.

Each cell trains ``patchwork testbed train`` with its video and audio access windows and the
default recipe (stage 1: 150 steps; stage 2: 300 steps of mostly audio-only clips, then the usual
mix with 10% of conflicting clips labelled with the picture's sound, stopping at the first
validation check that meets the targets + 0.03, capped at 3000 steps and 600 s for the whole
run), one thread, in a process of its own, then
measures the written checkpoint on held-out clips (``testbed eval``'s behaviour table, 200
samples, evaluation seed 20000: media the validation split never saw). Prints one row per cell:
stage-2 steps run, training seconds (wall, one thread), held-out congruent / audio-only accuracy
and the conflicts' picture share, and whether all three meet the targets (0.95, 0.90, 0.60).

Usage: ``python benchmarks/testbed_grid.py [--jobs 2] [--seeds 0 1 2] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

#: (name, video access, audio access): early, middle and late windows of widths 1-3.
WINDOWS = [
    ("early, width 1", (1, 1), (0, 0)),
    ("early, width 2", (2, 3), (0, 1)),
    ("middle, width 1", (4, 4), (0, 2)),
    ("middle, width 3", (3, 5), (0, 2)),
    ("late, width 2", (5, 6), (0, 3)),
    ("late, width 3", (5, 7), (0, 3)),
]
TARGETS = {"congruent_hear": 0.95, "audio_only_hear": 0.90, "conflict_picture_share": 0.60}


def cell(name: str, video: tuple, audio: tuple, seed: int, out: str) -> dict:
    import torch

    from patchwork.errors import TrainingError
    from patchwork.testbed import evaluate, load
    from patchwork.testbed.train import TrainConfig, train

    torch.set_num_threads(1)
    config = TrainConfig(
        seed=seed,
        stage2_steps=3000,
        video_access_layers=video,
        audio_access_layers=audio,
        picture_supervision=0.1,
        audio_first_steps=300,
        stop_at_targets=True,
    )
    directory = Path(out) / f"v{video[0]}-{video[1]}_a{audio[0]}-{audio[1]}_s{seed}"
    started = time.time()
    row = {"window": name, "video": f"{video[0]}:{video[1]}", "audio": f"{audio[0]}:{audio[1]}"}
    row["seed"] = seed
    try:
        train(directory, config, log=lambda line: None)
    except TrainingError as error:
        return {**row, "seconds": time.time() - started, "steps": None, "error": str(error)}
    seconds = time.time() - started
    import json

    meta = json.loads((directory / "patchwork_testbed.json").read_text())
    model, _ = load(directory)
    with tempfile.TemporaryDirectory() as media:
        table = evaluate.behaviour_table(
            model, directory, n=200, media_dir=Path(media), questions=("what do you hear",)
        )
    numbers = evaluate.summary(table)
    met = all(round(numbers[key], 6) >= target for key, target in TARGETS.items())  # k / 200
    return {
        **row,
        "seconds": seconds,
        "steps": meta["stage2_steps_run"],
        **{key: numbers[key] for key in TARGETS},
        "met": met,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="keep the checkpoints here")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="testbed-grid-")
    jobs = [(name, v, a, seed, out) for name, v, a in WINDOWS for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(cell, *zip(*jobs, strict=True)))
    print(
        "| window | video | audio | seed | stage-2 steps | seconds | congruent | audio-only "
        "| picture share | targets |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["steps"] is None:
            print(
                f"| {row['window']} | {row['video']} | {row['audio']} | {row['seed']} | — | "
                f"{row['seconds']:.0f} | failed: {row['error']} | | | no |"
            )
            continue
        print(
            f"| {row['window']} | {row['video']} | {row['audio']} | {row['seed']} | "
            f"{row['steps']} | {row['seconds']:.0f} | {row['congruent_hear']:.3f} | "
            f"{row['audio_only_hear']:.3f} | {row['conflict_picture_share']:.3f} | "
            f"{'met' if row['met'] else 'missed'} |"
        )
    met = sum(bool(row.get("met")) for row in rows)
    slowest = max(row["seconds"] for row in rows)
    print(f"\n{met} of {len(rows)} cells meet the targets held out; slowest {slowest:.0f} s")


if __name__ == "__main__":
    main()
