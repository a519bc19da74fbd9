"""Peak memory of a sweep does not grow with the number of samples (results stream to the store).

Runs the same tiny study with N and 8·N samples, each in a fresh process, and prints their peak
resident set size. Usage: ``python benchmarks/memory.py [--samples N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from patchwork import parse_study, run_study
text, root = sys.argv[1], sys.argv[2]
summary = run_study(parse_study(text), root)
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak_kb / 1024, "seconds": summary.seconds}))
"""

STUDY = """\
name: memory
model:
  random_init: {{layers: 4, hidden_size: 64, heads: 4, kv_heads: 2}}
dataset: {{generator: random, samples: {samples}, seed: 0}}
interventions:
  - {{kind: activation_patching, layers: all, position_groups: [audio, video, text, answer]}}
execution: {{batch_size: 16, unit_size: 8}}
"""


def measure(samples: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        output = subprocess.run(
            [sys.executable, "-c", CHILD, STUDY.format(samples=samples), root],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    rows = [(n, measure(n)) for n in (args.samples, 8 * args.samples)]
    base = rows[0][1]["peak_mb"]
    print(f"{'samples':>8} {'peak RSS (MB)':>14} {'vs smallest':>12} {'wall (s)':>9}")
    for samples, row in rows:
        print(
            f"{samples:>8} {row['peak_mb']:>14.1f} {row['peak_mb'] / base:>11.3f}x "
            f"{row['seconds']:>9.1f}"
        )


if __name__ == "__main__":
    main()
