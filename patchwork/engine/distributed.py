"""Scale-out on Dask distributed: a local cluster of worker processes, or an existing scheduler.

Dask is an existing engine: patchwork only hands it unit tasks through its
:class:`concurrent.futures.Executor` interface. A worker killed mid-task is retried by the
scheduler on another worker; units write whole chunks and then their mark, so a retry is harmless.
On SLURM, start a ``dask_jobqueue.SLURMCluster`` whose workers declare ``--resources GPU=1`` and
pass its scheduler address with ``--scheduler``; a study's ``execution.resources: {GPU: 1}``
then places one unit per GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from patchwork.errors import PatchworkError


def workers_alive(executor: Executor) -> int | None:
    """How many workers the Dask cluster behind ``executor`` has now (None for other
    executors, or when the scheduler cannot say)."""
    client = getattr(executor, "_client", None)
    if client is None:
        return None
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - a scheduler that does not answer says nothing
        return None


#: Seconds a scheduler has to answer a new client. Dask's own connect timeout does not cover a
#: service that accepts the connection and then never answers: it would wait for ever.
ANSWER_SECONDS = 30.0


def _connect(client_class: type, address: str) -> Any:
    """``client_class(address)``, given up after :data:`ANSWER_SECONDS` without an answer (the
    attempt is left in a daemon thread, which ends with the process)."""
    import threading

    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["client"] = client_class(address, timeout="10s")
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error

    attempt = threading.Thread(target=connect, name="patchwork-dask-connect", daemon=True)
    attempt.start()
    attempt.join(ANSWER_SECONDS)
    if isinstance(outcome.get("error"), BaseException):
        raise outcome["error"]
    if "client" not in outcome:
        raise PatchworkError(
            f"--scheduler {address}: nothing answered within {ANSWER_SECONDS:g} s (the address "
            "accepts connections but is not a Dask scheduler, or the scheduler is stuck)"
        )
    return outcome["client"]


def check_address(address: str) -> str:
    """A scheduler address as ``tcp://host:port`` (``host:port`` is read as tcp), or a
    :class:`PatchworkError` saying what is wrong with it."""
    from urllib.parse import urlsplit

    if not address.strip():
        raise PatchworkError(f"--scheduler {address!r}: an empty address; expected tcp://HOST:PORT")
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
    except ValueError as error:  # e.g. an unclosed IPv6 bracket
        raise PatchworkError(f"--scheduler {address}: expected tcp://HOST:PORT ({error})") from None
    if parts.scheme != "tcp":
        raise PatchworkError(
            f"--scheduler {address}: only tcp:// addresses are supported ({parts.scheme}:// needs "
            "security settings patchwork does not pass; connect your own Client for those)"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    try:
        host = parts.hostname
    except ValueError:
        host = None
    extra = parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc
    if not host or extra or port is None or not 0 < port < 65536:
        raise PatchworkError(
            f"--scheduler {address}: expected tcp://HOST:PORT with a port in 1-65535"
        )
    return text


@contextmanager
def dask_executor(
    workers: int | None = None,
    scheduler: str | None = None,
    resources: Mapping[str, float] | None = None,
    threads: int = 1,
) -> Iterator[Executor]:
    """An executor on ``workers`` local processes, or on the cluster at ``scheduler``.

    Local workers start with ``threads`` OpenMP/MKL threads; each task then sets torch's thread
    count from the study (``execution.threads``), on remote workers too."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise PatchworkError(
            "Dask distributed is not installed: pip install 'patchwork[dask]'"
        ) from None
    cluster = None
    try:
        if scheduler is not None:
            client = _connect(Client, check_address(scheduler))
        else:
            cluster = LocalCluster(
                n_workers=workers or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
            )
            client = Client(cluster)
    except OSError as error:
        raise PatchworkError(f"cannot reach the Dask scheduler {scheduler}: {error}") from None
    except (MemoryError, ValueError):  # a reply read as Dask's frames: a length of exabytes…
        raise PatchworkError(
            f"--scheduler {scheduler}: what answers there is not a Dask scheduler (its reply "
            "is not Dask's protocol); give the address the scheduler prints at its start"
        ) from None
    try:
        yield client.get_executor(resources=dict(resources)) if resources else client.get_executor()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
