"""What every file patchwork reads is checked for first: that it is a regular file, and that a
whole-file read stops at a bound.

A folder, a FIFO or a device such as ``/dev/zero`` named where a file is expected would make a
reader fail deep inside a third-party library, wait forever for a writer (a FIFO) or read without
end (``/dev/zero``); :func:`not_regular` says what such a path is, from ``stat`` alone, so that
the caller's message can name it. Imports nothing of patchwork: any room may use it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

#: What a path that is not a regular file is, by the type bits of its ``stat``.
_KINDS = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def not_regular(path: Path) -> str | None:
    """None when ``path`` is a regular file (links followed); else what it is, in words:
    ``"not found"``, ``"is a directory, not a file"``, ``"is a FIFO (named pipe), not a regular
    file"`` … Never opens the path, so a FIFO cannot make it wait."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken link" if os.path.islink(path) else "not found"
    except (OSError, ValueError) as error:  # a loop of links, a name too long, a NUL byte
        return f"cannot be read ({getattr(error, 'strerror', None) or error})"
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "is not a regular file"


def read_at_most(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, but no more than ``limit + 1`` of them: a result
    longer than ``limit`` means the file is over it (and the rest was never read).

    Raises:
        OSError: ``path`` cannot be opened or read, or is not a regular file (checked on the
            open descriptor, which is opened without waiting for a FIFO's writer).
    """
    with open_regular(path) as handle:
        return handle.read(limit + 1)


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading in binary, without waiting for a FIFO's writer.

    Raises:
        OSError: ``path`` cannot be opened, or is not a regular file (checked on the open
            descriptor, so a path swapped after a :func:`not_regular` check is caught too).
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    handle = os.fdopen(descriptor, "rb")
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        handle.close()
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return handle


class Unreadable(Exception):
    """What :func:`read_bounded` found: ``str()`` says it in words that follow the path
    (``"is a FIFO (named pipe), not a regular file"``, ``"is over 1,000,000 bytes"``); the caller
    raises its own error, naming the file and what it should have been."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Raises:
        Unreadable: ``path`` is not a regular file, cannot be read, or is over ``limit`` (found
            while reading: a file that never ends is read no further).
    """
    problem = not_regular(path)
    if problem is not None:
        raise Unreadable(problem)
    try:
        data = read_at_most(path, limit)
    except OSError as error:
        raise Unreadable(f"cannot be read ({error.strerror or error})") from None
    if len(data) > limit:
        raise Unreadable(f"is over {limit:,} bytes")
    return data
