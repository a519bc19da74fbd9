"""Checks of command-line options made before any work starts: a folder a command will write
into must be one it can create or write, so that a mistake costs one line, not a finished
training or sweep thrown away at the end; and no file written there may be a symbolic link, which
would carry the write to wherever it points."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import typer

from patchwork.errors import PatchworkError
from patchwork.files import not_regular

#: Largest seed an option takes; equal to :data:`patchwork.study.schema.MAX_SEED` (kept here so
#: that ``--help`` does not import the schema).
MAX_SEED = 2**63 - 1


def given_path(value: str | Path) -> Path:
    """A path option or argument as typed, as a :class:`~pathlib.Path` (the ``parser`` of every
    one): an empty one is refused, since ``Path("")`` is the current folder, which ``--out ''``
    (an unset shell variable, say) never meant."""
    if str(value) == "":
        raise typer.BadParameter("an empty path; give a file or folder name")
    return Path(value)


def output_folder(path: Path, option: str, store: bool = False) -> Path:
    """``path`` if it is a folder, or can be made one, that this process may write into, outside
    every Zarr store (``store``: ``path`` is a results store itself; only the folders above it
    must not be one).

    Raises:
        patchwork.errors.PatchworkError: ``option: …`` when ``path`` or a folder above it is a
            file (or a device such as ``/dev/null``) or part of a Zarr store, or the nearest
            existing folder above it cannot be written.
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
    _name_lengths(path, existing, option)
    absolute = Path(os.path.abspath(path))
    nodes = [
        folder
        for folder in (absolute.parents if store else (absolute, *absolute.parents))
        if os.path.isfile(folder / "zarr.json")  # False for a path too long to look up
    ]
    if nodes:  # named by its outermost folder, the store's root
        raise PatchworkError(
            f"{option} {path}: inside the Zarr store {nodes[-1]}, which holds results only; "
            "choose a folder outside it"
        )
    return path


def _name_lengths(path: Path, existing: Path, option: str) -> None:
    """Refuse a path the file system would refuse only once the first file is written there: a
    name longer than its folder allows (255 bytes on most), or a whole path over the limit."""
    shown = f"{str(path)[:60]}…" if len(str(path)) > 60 else str(path)
    longest_name = os.pathconf(existing, "PC_NAME_MAX")
    longest_path = os.pathconf(existing, "PC_PATH_MAX")
    for name in path.parts:
        if len(os.fsencode(name)) > longest_name:
            raise PatchworkError(
                f"{option} {shown}: a name of {len(os.fsencode(name))} bytes, over the "
                f"{longest_name} this file system allows"
            )
    whole = len(os.fsencode(os.path.abspath(path)))
    if whole > longest_path:
        raise PatchworkError(
            f"{option} {shown}: a path of {whole} bytes, over the {longest_path} allowed"
        )


def no_links(folder: Path, option: str, names: Iterable[str] | None = None) -> Path:
    """``folder`` when none of ``names`` in it (every entry below it when None) is a symbolic
    link: a file patchwork writes into an output folder is never written through a link; nor is
    any of ``names`` already there other than as a regular file (a folder, a FIFO, a device).

    Raises:
        patchwork.errors.PatchworkError: ``option: PATH is a symbolic link (to TARGET) …``, or
            ``option: PATH is a directory, not a file …``.
    """
    if names is None:
        found: Iterable[Path] = (
            Path(root) / entry
            for root, folders, files in os.walk(folder)  # links are listed, never followed
            for entry in (*folders, *files)
        )
    else:
        found = (folder / name for name in names)
    for path in found:
        if path.is_symlink():
            raise PatchworkError(
                f"{option}: {path} is a symbolic link (to {os.readlink(path)}); "
                "patchwork writes nothing through a link: remove it or choose another folder"
            )
        problem = None if names is None or not path.exists() else not_regular(path)
        if problem is not None:  # a folder or a FIFO where a named file is to be written
            raise PatchworkError(f"{option}: {path} {problem}; remove it or choose another folder")
    return folder
