"""One run per store at a time: an advisory lock beside the store, released when the run ends
(or its process dies — a killed run never leaves a stale lock).

:func:`check_unlocked` looks and writes nothing (a finished store is reported without the lock);
:func:`store_lock` takes the lock before the model loads and holds it to the end, so a second run
is refused in a second, and never the run that started first.
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
    """Hold ``<store root>/.<store name>.lock`` for the duration of a run, or refuse at once. A
    run that wrote no store (refused by its checks) removes the lock file again, while it still
    holds the lock; a run that opened the file just before finds it gone, and opens the new one."""
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # the file removed under us each time: another run's, removed again
        with _open(path, create=True) as handle:
            _lock_or_refuse(handle, store)
            if not _still_at(path, handle):
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                if not store.exists():
                    path.unlink(missing_ok=True)
                fcntl.flock(handle, fcntl.LOCK_UN)
            return
    raise StoreError(f"{path}: the store's lock file keeps being removed by other runs")


def _still_at(path: Path, handle: TextIO) -> bool:
    """Whether ``path`` still names the file ``handle`` locked (not removed meanwhile)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


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
