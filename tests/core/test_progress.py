"""What ``patchwork run`` shows while it works: plain lines at least every tenth of the samples
when its output is not a terminal, the time spent loading (not a time left) while the model loads,
and no other library's loading bars."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from patchwork.cli.progress import RunProgress

from .helpers import study_text

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LINE = re.compile(r"^tiny: (\d+)/(\d+) samples \((\d+)%\)")


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain(clock: FakeClock | None = None) -> tuple[RunProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=40)  # narrow: lines must not wrap
    assert not console.is_terminal
    return RunProgress("tiny", console, clock=clock or FakeClock()), out


def counts(text: str) -> list[tuple[int, int]]:
    """(done, to compute) of every progress line."""
    found = (LINE.match(line) for line in text.splitlines())
    return [(int(match[1]), int(match[2])) for match in found if match]


def test_a_redirected_run_prints_a_line_at_least_every_tenth_of_the_samples(
    tmp_path: Path,
) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        study_text(layers=2, samples=20, unit_size=1, components="[residual]", groups="[answer]")
    )
    log = tmp_path / "run.log"
    with log.open("w") as stdout:  # as nohup or SLURM would
        result = subprocess.run(
            [sys.executable, "-m", "patchwork", "run", str(study), "--store", str(tmp_path)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env=ENV,
        )
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert text.startswith("tiny: loading the model\n")
    done = [d for d, total in counts(text)]
    assert {total for _, total in counts(text)} == {20}
    assert done[0] == 0 and done[-1] == 20
    assert all(0 < later - earlier <= 2 for earlier, later in zip(done, done[1:], strict=False))
    for line in text.splitlines():
        if LINE.match(line) and not line.startswith("tiny: 0/"):
            assert re.search(r" · \d+\.\d\d samples/s · (eta|took) \d+:\d\d:\d\d$", line), line
    assert "Loading weights" not in result.stderr + text


def test_lines_give_rate_and_time_left_from_the_first_sample_computed() -> None:
    clock = FakeClock()
    progress, out = plain(clock)
    with progress:
        clock.now += 30  # loading: not part of the rate
        progress.start(24, 20)
        for _ in range(20):
            clock.now += 0.5
            progress.unit(1)
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "tiny: loading the model",
        "tiny: 0/20 samples (0%) (4/24 done before); model loaded in 0:00:30",
        "tiny: 2/20 samples (10%) · 2.00 samples/s · eta 0:00:09",
    ]
    assert lines[-1] == "tiny: 20/20 samples (100%) · 2.00 samples/s · took 0:00:10"
    assert len(lines) == 12  # loading, start, every 2 samples


def test_nothing_left_to_compute_says_so() -> None:
    progress, out = plain()
    with progress:
        progress.start(8, 0)
    assert out.getvalue().splitlines()[-1] == (
        "tiny: nothing to compute (8/8 done before); model loaded in 0:00:00"
    )


@settings(max_examples=100, deadline=None)
@given(total=st.integers(1, 500), unit_size=st.integers(1, 60))
def test_printed_lines_are_never_more_than_a_tenth_or_one_unit_apart(
    total: int, unit_size: int
) -> None:
    progress, out = plain()
    with progress:
        progress.start(total, total)
        for start in range(0, total, unit_size):
            progress.unit(min(unit_size, total - start))
    done = [d for d, _ in counts(out.getvalue())]
    assert done[0] == 0 and done[-1] == total
    allowed = max(total / 10, unit_size)
    assert all(
        0 < later - earlier <= allowed for earlier, later in zip(done, done[1:], strict=False)
    )
    assert len(done) <= 2 + 2 * 10  # a line per unit only while units are a tenth or more


def render(progress: RunProgress) -> str:
    screen = Console(file=io.StringIO(), width=160, record=True, force_terminal=True)
    screen.print(progress.bar.get_renderable())
    return " ".join(screen.export_text().split())


def test_the_bar_shows_time_spent_while_loading_and_time_left_once_computing() -> None:
    clock = FakeClock()
    terminal = Console(file=io.StringIO(), force_terminal=True, width=160)
    with RunProgress("tiny", terminal, clock=clock) as progress:
        assert progress.live
        clock.now += 5
        loading = render(progress)
        assert "tiny: loading" in loading and "loading 0:00:05" in loading
        assert "eta" not in loading
        progress.start(20, 20)
        clock.now += 2
        progress.unit(4)  # 2 samples/s: 8 s left
        assert "4/20 samples 2.00/s eta 0:00:08" in render(progress)
        clock.now += 3  # counts down between units
        assert "eta 0:00:05" in render(progress)
        clock.now += 5
        progress.unit(16)
        assert "20/20 samples" in render(progress) and "took 0:00:10" in render(progress)


def test_library_loading_bars_are_silenced(monkeypatch) -> None:
    from transformers.utils import logging as transformers_logging

    from patchwork.cli.progress import quiet_library_bars

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "")  # restored afterwards
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    try:
        quiet_library_bars()
        assert not transformers_logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # and in the workers it starts
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def test_testbed_commands_show_no_loading_bars() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "patchwork", "testbed", "eval", "testbed", "--samples", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert "behaviour of" in result.stdout
    assert "Loading weights" not in result.stderr + result.stdout
