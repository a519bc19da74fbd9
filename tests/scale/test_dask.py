"""Scale-out on Dask distributed: a 2-worker run equals the serial run bit for bit, even when a
worker is killed mid-run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from patchwork import open_results, parse_study, run_study
from patchwork.engine.distributed import dask_executor

from ..core.helpers import study_text

TEXT = study_text(layers=2, samples=8, unit_size=2)
VARIABLES = ("effect", "null_effect", "baseline", "done", "checksum")


def test_two_workers_equal_serial_even_when_one_is_killed(tmp_path: Path) -> None:
    serial = open_results(run_study(parse_study(TEXT), tmp_path / "serial").store).load()
    with dask_executor(workers=2) as executor:
        parallel = run_study(parse_study(TEXT), tmp_path / "dask", executor=executor)
        assert parallel.units_run == 4
        first = open_results(parallel.store).load()

        client = executor._client  # type: ignore[attr-defined]
        victim = next(iter(client.run(os.getpid).values()))
        killed: list[int] = []

        def kill_once(count: int) -> None:
            if not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(count)

        again = run_study(
            parse_study(TEXT), tmp_path / "dask-killed", executor=executor, on_unit=kill_once
        )
        assert killed and again.units_run == 4
        second = open_results(again.store).load()
    for name in VARIABLES:
        np.testing.assert_array_equal(first[name].values, serial[name].values, err_msg=name)
        np.testing.assert_array_equal(second[name].values, serial[name].values, err_msg=name)


def test_a_run_with_no_worker_left_ends_in_one_line_and_resumes(
    tmp_path: Path, monkeypatch
) -> None:
    """No worker left (the cluster scaled to none, as after workers and their nannies died): the
    run ends with one line after the grace period instead of waiting forever, and a later run
    completes the store to the serial run's."""
    import time

    import pytest

    from patchwork import PatchworkError
    from patchwork.engine import runner

    monkeypatch.setattr(runner, "WORKERLESS_SECONDS", 2.0)
    serial = open_results(run_study(parse_study(TEXT), tmp_path / "serial").store).load()
    with dask_executor(workers=1) as executor:
        cluster = executor._client.cluster  # type: ignore[attr-defined]
        cluster.scale(0)
        while cluster.scheduler_info["workers"]:
            time.sleep(0.1)
        with pytest.raises(PatchworkError, match=r"no Dask worker left for 2 s \(0/4 units done\)"):
            run_study(parse_study(TEXT), tmp_path / "dask", executor=executor)
    resumed = run_study(parse_study(TEXT), tmp_path / "dask")
    assert resumed.units_run == 4
    again = open_results(resumed.store).load()
    for name in VARIABLES:
        np.testing.assert_array_equal(again[name].values, serial[name].values, err_msg=name)


def test_a_scheduler_address_where_another_service_answers_is_one_line() -> None:
    """A web server at the address answers HTTP, which Dask reads as a frame length of exabytes
    (before: a numpy MemoryError traceback)."""
    import socket
    import threading

    import pytest

    from patchwork.errors import PatchworkError

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_http() -> None:
        with server:
            for _ in range(3):  # Dask may try again
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=answer_http, daemon=True).start()
    with pytest.raises(PatchworkError, match="is not a Dask scheduler"):
        with dask_executor(scheduler=f"tcp://127.0.0.1:{port}"):
            pass


def test_a_scheduler_address_that_accepts_and_never_answers_is_one_line(monkeypatch) -> None:
    """A service that accepts the connection and then says nothing: Dask's connect timeout does
    not cover it, so without a bound of its own the run would wait for ever. (The wait is the
    bound itself, whatever the machine's speed: nothing ever answers.)"""
    import socket

    import pytest

    from patchwork.engine import distributed
    from patchwork.errors import PatchworkError

    monkeypatch.setattr(distributed, "ANSWER_SECONDS", 1.0)
    with socket.create_server(("127.0.0.1", 0)) as server:  # the kernel accepts; no one answers
        port = server.getsockname()[1]
        with pytest.raises(PatchworkError, match="nothing answered within 1 s"):
            with dask_executor(scheduler=f"tcp://127.0.0.1:{port}"):
                pass
