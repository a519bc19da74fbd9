"""``patchwork`` and ``python -m patchwork``: the command line.

This module imports nothing but the standard library before :mod:`patchwork.cli`, so that Ctrl-C
while the command starts gives the same one line and exit code 130 as Ctrl-C later.
"""

from __future__ import annotations

import os
import sys


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
        from patchwork.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
