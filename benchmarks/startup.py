"""How long until the command line answers? ``--help``, ``status`` and ``import patchwork``, against
the interpreter's own start and against importing torch (what every command paid before imports
became lazy).

Each row is the median wall time of fresh processes. Usage:
``python benchmarks/startup.py [--repeats R]`` (builds a small store first, with a random-init
study).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = """\
name: startup
model: {family: qwen2_5_omni, random_init: {layers: 2, hidden_size: 32, heads: 2, kv_heads: 1}}
dataset: {generator: random, samples: 2}
interventions:
  - {kind: activation_patching, from: clean, into: conflict, layers: all}
"""


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = [sys.executable]
    with tempfile.TemporaryDirectory() as root:
        study = Path(root) / "startup.yaml"
        study.write_text(STUDY)
        subprocess.run(
            [*python, "-m", "patchwork", "run", str(study), "--store", root],
            check=True,
            capture_output=True,
        )
        store = str(Path(root) / "startup.zarr")
        rows = {
            "python -c pass (interpreter)": [*python, "-c", "pass"],
            "python -c 'import torch' (old floor)": [*python, "-c", "import torch"],
            "import patchwork": [*python, "-c", "import patchwork"],
            "patchwork --help": [*python, "-m", "patchwork", "--help"],
            "patchwork status STORE": [*python, "-m", "patchwork", "status", store],
        }
        print(f"{'command':<40} median of {args.repeats}")
        for label, command in rows.items():
            print(f"{label:<40} {median_seconds(command, args.repeats):6.2f} s", flush=True)


if __name__ == "__main__":
    main()
