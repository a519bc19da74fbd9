"""One run per store at a time: an advisory lock beside the store, released when the run ends
(or its process dies — a killed run never leaves a stale lock).

:func:`check_unlocked` looks before the model loads and writes nothing, so a second run is refused
in a second, not after loading; :func:`store_lock` takes the lock for the writing itself.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from patchwork.errors import StoreError


def lock_path(store: Path) -> Path:
    """``<store root>/.<store name>.lock``."""
    return store.parent / f".{store.name}.lock"


def check_unlocked(store: Path) -> None:
    """Refuse at once if another run holds ``store``'s lock; create nothing."""
    try:
        handle = _open(lock_path(store), create=False)
    except FileNotFoundError:
        return
    with handle:
        _lock_or_refuse(handle, store)
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold ``<store root>/.<store name>.lock`` for the duration of a run, or refuse at once."""
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, create=True) as handle:
        _lock_or_refuse(handle, store)
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


def _open(path: Path, create: bool) -> TextIO:
    """The lock file, never through a link (a link could make the run truncate another file)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        descriptor = os.open(path, flags, 0o644)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise StoreError(
            f"{path}: cannot use as the store's lock file ({error.strerror})"
        ) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise StoreError(f"{path}: the store's lock file is not a regular file")
    return os.fdopen(descriptor, "r+")


def _lock_or_refuse(handle: TextIO, store: Path) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise StoreError(
            f"{store} is being written by another run ({holder}); wait for it to finish — "
            "re-running afterwards resumes where it stopped"
        ) from None
