"""``patchwork`` and ``python -m patchwork``: the command line.

This module imports nothing but the standard library before :mod:`patchwork.cli`, so that Ctrl-C
while the command starts gives the same one line and exit code 130 as Ctrl-C later. Once the
command is over, a Ctrl-C (the second of an impatient user, during the interpreter's shutdown)
ends the process at once with exit code 130, not with a traceback from an exit callback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType


def main() -> None:
    """Entry point of the ``patchwork`` command."""
    try:
        os.getcwd()
    except FileNotFoundError:  # removed under the shell; torch would fail to load
        sys.stderr.write("error: the current folder no longer exists; cd to one that does\n")
        raise SystemExit(2) from None
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show "—" or "→" gets "\u2014"
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        try:
            from patchwork.cli import main as cli_main

            cli_main()
        finally:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
                signal.signal(signal.SIGINT, _leave_now)
    except KeyboardInterrupt:  # while the command starts, or a second while it reports the first
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


def _leave_now(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C after the command ended: what is written is flushed, nothing else runs."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe, or a write the signal interrupted
            stream.flush()
    os._exit(130)


if __name__ == "__main__":
    main()
