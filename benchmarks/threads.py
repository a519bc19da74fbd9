"""How many torch threads should a run use? The quickstart at each count, idle and under load.

Each row runs ``patchwork run studies/quickstart.yaml --threads N`` in a fresh process and store,
from start to exit (model loading included), either on an idle machine or while a competing job
runs: another quickstart at every core's thread count, restarted until the row is done (what
"other jobs on a shared machine" look like). The last thread count is the machine's core count,
torch's own default before patchwork set one.

Usage: ``python benchmarks/threads.py [--samples N] [--repeats R] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def quickstart(store: Path, threads: int, samples: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "patchwork",
        "run",
        str(QUICKSTART),
        "--store",
        str(store),
        "--threads",
        str(threads),
        "--samples",
        str(samples),
    ]


def timed_run(threads: int, samples: int) -> float:
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        subprocess.run(
            quickstart(Path(store), threads, samples), check=True, capture_output=True, cwd=ROOT
        )
        return time.perf_counter() - started


class CompetingLoad:
    """Another quickstart at every core's thread count, restarted until stopped."""

    def __init__(self, threads: int, samples: int) -> None:
        self.command = lambda store: quickstart(store, threads, samples)
        self.store = tempfile.TemporaryDirectory()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CompetingLoad:
        self.keep_running()
        time.sleep(3.0)  # past its start-up: the load is computing
        return self

    def keep_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            store = Path(self.store.name) / str(time.monotonic_ns())
            self.process = subprocess.Popen(
                self.command(store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
            )

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.store.cleanup()


def under_load(threads: int, samples: int, cores: int) -> float:
    with CompetingLoad(cores, samples) as load, tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        child = subprocess.Popen(
            quickstart(Path(store), threads, samples),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        while child.poll() is None:
            load.keep_running()
            time.sleep(0.2)
        if child.returncode:
            raise RuntimeError(child.stderr.read().decode() if child.stderr else "failed")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    rows = []
    for condition in ("idle", "under load"):
        for threads in counts:
            times = [
                timed_run(threads, args.samples)
                if condition == "idle"
                else under_load(threads, args.samples, cores)
                for _ in range(args.repeats)
            ]
            rows.append({"condition": condition, "threads": threads, "seconds": times})
            print(
                f"{condition:>10} | threads {threads:>2} | "
                f"median {statistics.median(times):6.1f} s | runs "
                + ", ".join(f"{t:.1f}" for t in times),
                flush=True,
            )
    baseline = {
        row["condition"]: statistics.median(row["seconds"]) for row in rows if row["threads"] == 1
    }
    print(f"\nquickstart, {args.samples} samples, {cores} cores; ratio to 1 thread:")
    for row in rows:
        ratio = statistics.median(row["seconds"]) / baseline[row["condition"]]
        print(f"  {row['condition']:>10}, {row['threads']} threads: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
