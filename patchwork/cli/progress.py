"""How ``patchwork run`` shows its progress, and the other libraries' bars it silences.

On a terminal (or in Jupyter) a live bar: the time spent loading while the model loads, then
samples done of those to compute, the rate and the time left. Anywhere else (output redirected to
a file, ``nohup``, a SLURM log) a live bar would print nothing until the end, so plain lines are
printed instead: one when loading starts, one when computing starts, then one at least every tenth
of the samples (after every unit when a unit is larger than that) and one at the end, each with
samples done/to compute, rate and time left. Rate and time left count from the first sample
computed, not from the start of loading.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.text import Text

Clock = Callable[[], float]


def quiet_library_bars() -> None:
    """Silence transformers' and huggingface_hub's own progress bars ("Loading weights …"), in
    this process and in the worker processes it starts: patchwork's commands show their own.
    Imports nothing heavy (torch-free commands stay fast)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    if "transformers" in sys.modules:  # already imported: the variable was read before
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def clock_text(seconds: float) -> str:
    """``83.4`` → ``"0:01:23"``."""
    return str(timedelta(seconds=int(max(0.0, seconds))))


class RunProgress:
    """Progress of one run of study ``name``, on ``console``: a context manager whose
    :meth:`start`, :meth:`unit` and :meth:`note` are :func:`~patchwork.engine.runner.run_study`'s
    ``on_start``, ``on_unit`` and ``on_note``. ``live`` (default: whether the console is a
    terminal or Jupyter) chooses the bar over plain lines; ``clock`` is in seconds."""

    def __init__(
        self, name: str, console: Console, live: bool | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.console = console
        self.live = (console.is_terminal or console.is_jupyter) if live is None else live
        self.clock = clock
        self.bar: Any = None  # rich.progress.Progress, when live
        self._task: Any = None
        self._loading_since = 0.0
        self._computing_since: float | None = None
        self._to_compute = 0
        self._done = 0
        self._printed = 0

    def __enter__(self) -> RunProgress:
        self._loading_since = self.clock()
        if not self.live:
            self._line(f"{self.name}: loading the model")
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("samples"),
            TextColumn("{task.fields[rate]}"),
            _TimeColumn(),
            console=self.console,
            get_time=self.clock,
        )
        self.bar.__enter__()
        self._task = self.bar.add_task(f"{self.name}: loading", total=None, rate="", eta=None)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, error, traceback)

    def start(self, total: int, pending: int) -> None:
        """The model is loaded: ``pending`` of the study's ``total`` samples are to compute."""
        self._computing_since = self.clock()
        self._to_compute = pending
        before = f" ({total - pending}/{total} done before)" if pending < total else ""
        if self.bar is not None:  # the clock restarts: time left counts from here
            self.bar.reset(self._task, total=pending, description=f"{self.name}{before}")
            self.bar.update(self._task)  # nothing to compute: finished
            return
        loaded = clock_text(self._computing_since - self._loading_since)
        if pending == 0:
            self._line(f"{self.name}: nothing to compute{before}; model loaded in {loaded}")
        else:
            self._line(f"{self.name}: 0/{pending} samples (0%){before}; model loaded in {loaded}")

    def unit(self, count: int) -> None:
        """A unit of ``count`` samples is done."""
        self._done += count
        rate, left = self._rate_and_time_left()
        if self.bar is not None:
            eta = None if left is None else self.clock() + left
            self.bar.update(self._task, advance=count, rate=f"{rate:.2f}/s", eta=eta)
            return
        # print now unless the next unit, as large as this one, still ends within a tenth
        if self._done < self._to_compute and self._done + count - self._printed <= (
            self._to_compute / 10
        ):
            return
        self._printed = self._done
        percent = 100 * self._done // max(1, self._to_compute)
        if self._done >= self._to_compute:
            since = self._loading_since if self._computing_since is None else self._computing_since
            time_text = f"took {clock_text(self.clock() - since)}"
        else:
            time_text = f"eta {clock_text(left) if left is not None else '-:--:--'}"
        self._line(
            f"{self.name}: {self._done}/{self._to_compute} samples ({percent}%) · "
            f"{rate:.2f} samples/s · {time_text}"
        )

    def note(self, text: str) -> None:
        """Something the user should know that is not an error, in yellow."""
        (self.bar.console if self.bar is not None else self.console).print(f"[yellow]{text}[/]")

    def _rate_and_time_left(self) -> tuple[float, float | None]:
        """Samples per second since computing started, and seconds left at that rate."""
        since = self._computing_since if self._computing_since is not None else self.clock()
        seconds = self.clock() - since
        if seconds <= 0:
            return 0.0, None
        rate = self._done / seconds
        return rate, (self._to_compute - self._done) / rate if rate else None

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


class _TimeColumn(ProgressColumn):
    """The time spent while the model loads (the total is not known yet); then the time left at
    the rate so far, counting down between units; the time taken once finished."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"loading {clock_text(task.elapsed or 0.0)}", style="progress.elapsed")
        if task.finished:
            return Text(f"took {clock_text(task.finished_time or 0.0)}", style="progress.elapsed")
        finish_at = task.fields.get("eta")
        if finish_at is None:
            return Text("eta -:--:--", style="progress.remaining")
        left = clock_text(finish_at - task.get_time())
        return Text(f"eta {left}", style="progress.remaining")
