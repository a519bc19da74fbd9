"""What every command prints when something goes wrong, and its exit code.

Exit codes: 0 success; 2 a mistake the user can fix (a :class:`~patchwork.errors.PatchworkError`
or a bad argument), printed as one line; 130 interrupted (Ctrl-C), printed as one line saying what
was kept; 1 a bug in patchwork (with its traceback).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console

from patchwork.errors import PatchworkError, ctrl_c_behind

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: What a write fails with when the disk, not patchwork, is at fault: full, over quota or the
#: file size limit, read-only, or not ours to write.
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
#: How Rust libraries (safetensors, tokenizers) end the text of an OS error they raise as their
#: own exception type: ``… No space left on device (os error 28)``.
_RUST_OS_ERROR = re.compile(r"(?:I/O error: )?([^:]*) \(os error (\d+)\)$")

console = Console()
errors = Console(stderr=True)


class OutputFailed(Exception):
    """Writing the command's own output (stdout) failed: the disk behind a redirection is full,
    say."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror)
        self.error = error


class _GuardedOutput:
    """stdout, whose failed writes raise :class:`OutputFailed` (one line at the top, not an
    OSError traceback from wherever the command printed). A closed pipe (``| head -1``) is no
    failure: what is left to print goes nowhere and the command finishes its work (a run, its
    units)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            self._failed(error)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        if error.errno != errno.EPIPE:
            raise OutputFailed(error) from None
        _stdout_to_nowhere()  # also for what the stream still holds
        self._stream = open(os.devnull, "w")  # noqa: SIM115 - stdout's stand-in until the exit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_output() -> None:
    """Route this process's stdout through :class:`_GuardedOutput` (a closed one, ``>&-``, to
    nowhere, as a closed pipe)."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout's stand-in until the exit
    if not isinstance(sys.stdout, _GuardedOutput):
        sys.stdout = _GuardedOutput(sys.stdout)  # type: ignore[assignment]


def _stdout_to_nowhere() -> None:
    """Point file descriptor 1 at the null device: nothing more is written there, the
    interpreter's flush at exit included."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, 1)
    os.close(nowhere)


def output_failed(failed: OutputFailed) -> int:
    """One line for output that could not be written, nothing more written to stdout; exit 2."""
    _stdout_to_nowhere()
    return one_line(f"error: cannot write the output ({failed.error.strerror})", EXIT_USER_ERROR)


def one_line(message: str, code: int) -> int:
    """Print ``message`` on stderr as one line (whitespace folded); return ``code``."""
    errors.print(" ".join(message.split()), highlight=False, soft_wrap=True, markup=False)
    return code


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as one line on stderr; the exit to raise."""
    return typer.Exit(code=one_line(message, code))


@contextmanager
def written(path: Path, option: str) -> Iterator[None]:
    """Writing the output ``path`` of ``option``: a full or read-only disk becomes one line
    naming it (:class:`PatchworkError`); any other failure stays what it is (a bug)."""
    try:
        yield
    except Exception as error:
        reason = _disk_failure(error)
        if reason is None:
            raise
        target = getattr(error, "filename", None) or "there"
        raise PatchworkError(
            f"{option} {path}: cannot write {target} ({reason}); what was written is incomplete"
        ) from None


def _disk_failure(error: Exception) -> str | None:
    """Why the disk refused a write, in words; None when ``error`` is not such a refusal."""
    if isinstance(error, OSError):
        return error.strerror if error.errno in _DISK_ERRNOS else None
    found = _RUST_OS_ERROR.search(str(error))
    if found is None or int(found[2]) not in _DISK_ERRNOS:
        return None
    return found[1]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A :class:`PatchworkError` becomes one line and exit code 2; Ctrl-C one line and 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PatchworkError as error:
            raise fail(f"error: {error}", EXIT_USER_ERROR) from None
        except BaseException as error:
            interrupt = ctrl_c_behind(error)
            if interrupt is None:
                raise
            said = f"interrupted: {interrupt}" if str(interrupt) else "interrupted"
            raise fail(said, EXIT_INTERRUPTED) from None

    return wrapper
