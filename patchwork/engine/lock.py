"""One run per store at a time: an advisory lock beside the store, released when the run ends
(or its process dies — a killed run never leaves a stale lock)."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from patchwork.errors import StoreError


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold ``<store root>/.<store name>.lock`` for the duration of a run, or refuse at once."""
    lock_path = store.parent / f".{store.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(
                f"{store} is being written by another run ({holder}); wait for it to finish — "
                "re-running afterwards resumes where it stopped"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
