"""What every command prints when something goes wrong, and its exit code.

Exit codes: 0 success; 2 a mistake the user can fix (a :class:`~patchwork.errors.PatchworkError`
or a bad argument), printed as one line; 130 interrupted (Ctrl-C), printed as one line saying what
was kept; 1 a bug in patchwork (with its traceback).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from patchwork.errors import PatchworkError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

console = Console()
errors = Console(stderr=True)


def one_line(message: str, code: int) -> int:
    """Print ``message`` on stderr as one line (whitespace folded); return ``code``."""
    errors.print(" ".join(message.split()), highlight=False, soft_wrap=True, markup=False)
    return code


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as one line on stderr; the exit to raise."""
    return typer.Exit(code=one_line(message, code))


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A :class:`PatchworkError` becomes one line and exit code 2; Ctrl-C one line and 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PatchworkError as error:
            raise fail(f"error: {error}", EXIT_USER_ERROR) from None
        except KeyboardInterrupt as error:
            raise fail(
                f"interrupted: {error}" if str(error) else "interrupted", EXIT_INTERRUPTED
            ) from None

    return wrapper
