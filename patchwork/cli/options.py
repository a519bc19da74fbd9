"""Checks of command-line options made before any work starts: a folder a command will write
into must be one it can create or write, so that a mistake costs one line, not a finished
training or sweep thrown away at the end."""

from __future__ import annotations

import os
from pathlib import Path

from patchwork.errors import PatchworkError

#: Largest seed an option takes; equal to :data:`patchwork.study.schema.MAX_SEED` (kept here so
#: that ``--help`` does not import the schema).
MAX_SEED = 2**63 - 1


def output_folder(path: Path, option: str) -> Path:
    """``path`` if it is a folder, or can be made one, that this process may write into.

    Raises:
        patchwork.errors.PatchworkError: ``option: …`` when ``path`` or a folder above it is a
            file (or a device such as ``/dev/null``), or the nearest existing folder above it
            cannot be written.
    """
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "a file, not a folder" if existing.is_file() else "not a folder"
        raise PatchworkError(f"{option} {path}: {existing} is {what}")
    if not existing.exists():  # a dangling link
        raise PatchworkError(f"{option} {path}: {existing} is a broken link")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PatchworkError(f"{option} {path}: cannot write in {existing}")
    return path
