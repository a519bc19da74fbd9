"""Peak memory of a sweep does not grow with the number of samples (results stream to the store,
manifest rows are decoded one block at a time).

Runs the same tiny study with N and more samples, each in a fresh process, and prints their peak
resident set size, for two sources: the ``random`` generator, and a manifest of 10 s clips
(wav at 16 kHz and a 252×448 picture per run, as the counterfactual studies use). Last, the
hostile case of issue #28: the same manifest whose first clip is a sparse WAV of 4 KB on disk
whose header claims 200 M samples — refused from its header, its peak must stay within 1.1× of
the normal manifest's.
Usage: ``python benchmarks/memory.py [--samples N] [--rows 16 512]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from patchwork import PatchworkError, parse_study, run_study
text, root, source = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    seconds = run_study(parse_study(text, Path(source) if source else None), root).seconds
except PatchworkError as error:
    seconds, refused = 0.0, str(error)
else:
    refused = ""
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak_kb / 1024, "seconds": seconds, "refused": refused}))
"""

MODEL = "random_init: {{layers: 4, hidden_size: 64, heads: 4, kv_heads: 2}}"
GENERATED = f"""\
name: memory
model:
  {MODEL}
dataset: {{{{generator: random, samples: {{samples}}, seed: 0}}}}
interventions:
  - {{{{kind: activation_patching, layers: all, position_groups: [audio, video, text, answer]}}}}
execution: {{{{batch_size: 16, unit_size: 8}}}}
"""
MANIFEST = f"""\
name: memory
model:
  {MODEL}
dataset: {{{{manifest: samples.jsonl}}}}
interventions:
  - {{{{kind: activation_patching, layers: [0, 3], position_groups: [audio, answer],
      components: [residual], noise_floor: none}}}}
execution: {{{{batch_size: 16, unit_size: 8}}}}
"""


def write_manifest(folder: Path, rows: int) -> Path:
    """``rows`` rows over two 10 s clips and two pictures (every row decodes its own files)."""
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        soundfile.write(folder / f"{name}.wav", 0.1 * rng.standard_normal(160_000), 16_000)
        picture = rng.integers(0, 255, (252, 448, 3), dtype=np.uint8)
        Image.fromarray(picture).save(folder / f"{name}.png")
    lines = []
    for index in range(rows):
        own, other = ("a", "b") if index % 2 else ("b", "a")
        runs = {
            "clean": {"audio": f"{own}.wav", "frames": [f"{own}.png"]},
            "conflict": {"audio": f"{own}.wav", "frames": [f"{other}.png"]},
        }
        row = {"id": f"r{index}", "audio_answer": "x", "visual_answer": "y", "runs": runs}
        lines.append(json.dumps(row))
    path = folder / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def sparse_wav(path: Path, claimed_samples: int = 200_000_000) -> Path:
    """A PCM-16 mono 16 kHz WAV, 4 KB on disk, whose header claims ``claimed_samples``."""
    import struct

    data_bytes = claimed_samples * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with path.open("wb") as handle:
        handle.write(header + bytes(4096 - len(header)))
        handle.truncate(len(header) + data_bytes)
    return path


def measure(samples: int, manifest: bool, sparse: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        source = ""
        if manifest:
            write_manifest(Path(root), samples)
            if sparse:
                sparse_wav(Path(root) / "a.wav")
            text, source = MANIFEST.format(), str(Path(root) / "study.yaml")
        else:
            text = GENERATED.format(samples=samples)
        output = subprocess.run(
            [sys.executable, "-c", CHILD, text, str(Path(root) / "store"), source],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=32, help="generator: N and 8·N samples")
    parser.add_argument("--rows", type=int, nargs=2, default=(16, 512), help="manifest rows")
    args = parser.parse_args()
    print(
        f"{'source':>10} {'samples':>8} {'peak RSS (MB)':>14} {'vs smallest':>12} {'wall (s)':>9}"
    )
    for source, counts in (
        ("generator", (args.samples, 8 * args.samples)),
        ("manifest", args.rows),
    ):
        rows = [(n, measure(n, source == "manifest")) for n in counts]
        base = rows[0][1]["peak_mb"]
        for samples, row in rows:
            print(
                f"{source:>10} {samples:>8} {row['peak_mb']:>14.1f} "
                f"{row['peak_mb'] / base:>11.3f}x {row['seconds']:>9.1f}"
            )
    normal = measure(args.rows[0], manifest=True)
    hostile = measure(args.rows[0], manifest=True, sparse=True)
    ratio = hostile["peak_mb"] / normal["peak_mb"]
    print(
        f"{'sparse wav':>10} {args.rows[0]:>8} {hostile['peak_mb']:>14.1f} {ratio:>11.3f}x "
        "(vs the same manifest intact)"
    )
    print(f"the sparse wav was refused: {hostile['refused']}")


if __name__ == "__main__":
    main()
