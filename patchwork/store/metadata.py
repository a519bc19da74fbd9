"""A store's metadata files (``zarr.json``) and its folders, checked before anything is read or
written: lost or garbled metadata is named (and written again from the study's template, byte
for byte as it was), and a store that holds a symbolic link is never written through.

Chunks are never touched here: a restored array's chunks are kept, and their checksums then say
whether each finished unit is whole.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import xarray as xr
import zarr

from patchwork.errors import StoreError

#: Set on a model group once its template is written to the end.
TEMPLATE_MARK = "template_complete"
#: Per-sample marks written by every unit after its data (checksums, then done).
MARKS = ("checksum", "done")


def readable_json(path: Path) -> bool:
    """Whether ``path`` is a file holding a JSON object (what every ``zarr.json`` is)."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError, RecursionError):
        return False


def _attributes(path: Path) -> dict[str, object]:
    attributes = json.loads(path.read_text(encoding="utf-8")).get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def unreadable_metadata(path: Path, model: str) -> list[str]:
    """The nodes of ``model``'s group whose ``zarr.json`` is missing or unreadable: ``model``
    for the group itself, else the array's name (a folder without metadata is a lost array)."""
    directory = path / model
    if not directory.is_dir():
        return []
    lost = [model] if not readable_json(directory / "zarr.json") else []
    folders = {entry.name for entry in directory.iterdir() if entry.is_dir()}
    # a template patchwork wrote has both marks; a store other tools wrote may lack them
    written = not lost and _attributes(directory / "zarr.json").get(TEMPLATE_MARK) is True
    missing = [mark for mark in MARKS if mark not in folders] if written else []
    named = _named_by_arrays(directory, folders)
    return lost + sorted(
        [
            name
            for name in folders
            if (name in named or _array_folder(directory / name))
            and not readable_json(directory / name / "zarr.json")
        ]
        + missing
    )


def _array_folder(folder: Path) -> bool:
    """A folder zarr wrote for an array: its metadata file, or its chunks (``c/``), are there;
    any other folder (a user's figures) is none of the store's business."""
    return (folder / "zarr.json").exists() or (folder / "c").is_dir()


def _named_by_arrays(directory: Path, folders: set[str]) -> set[str]:
    """The dimensions and coordinates the group's readable arrays name: an array whose chunks
    all hold the fill value has no ``c/`` folder, so its lost metadata leaves a bare folder that
    only these names tell from a user's."""
    named: set[str] = set()
    for name in folders:
        metadata = directory / name / "zarr.json"
        if not readable_json(metadata):
            continue
        dims = json.loads(metadata.read_text(encoding="utf-8")).get("dimension_names")
        if isinstance(dims, list):
            named.update(str(dim) for dim in dims if dim)
        named.update(str(_attributes(metadata).get("coordinates", "")).split())
    return named


def metadata_line(path: Path, model: str, lost: list[str]) -> str:
    """One line for lost metadata: what is lost, that finished units are kept, what to do."""
    names = ", ".join(repr(name) for name in lost)
    return (
        f"{path}/{model}: the metadata (zarr.json) of {names} is lost or unreadable; finished "
        "units are kept — run the study again (patchwork run STUDY) to write it again from the "
        "study, then read or verify the store"
    )


def refuse_links(path: Path) -> None:
    """Raise :class:`StoreError` when anything inside the store is a symbolic link: a write
    through it would land outside the store."""
    for folder, directories, files in os.walk(path, followlinks=False):
        for name in (*directories, *files):
            entry = Path(folder) / name
            if entry.is_symlink():
                raise StoreError(
                    f"{entry} is a symbolic link; patchwork never writes through links, which "
                    "could lead outside the store — replace it with the folder or file itself, "
                    "or start over with --fresh"
                )


def restore_metadata(path: Path, model: str, empty: xr.Dataset) -> list[str]:
    """Write missing or unreadable ``zarr.json`` files of a finished template's group or arrays
    again from the study's template, and arrays removed whole (empty: a lost data array's units,
    and every unit of a lost checksum array, fail their checksums and are computed again; a lost
    done array is recovered from the checksums); chunks are kept. A group's own metadata, where
    readable, is kept byte for byte (writing arrays into a group rewrites its attributes
    otherwise). Returns the names restored (``model`` for the group)."""
    directory = path / model
    if not directory.is_dir():
        return []
    names = {str(name) for name in empty.variables}
    # removed whole, or a folder left without metadata (an array of fill values has no chunks)
    absent = {name for name in names if not readable_json(directory / name / "zarr.json")}
    group_lost = not readable_json(directory / "zarr.json")
    restored = sorted(absent | ({model} if group_lost else set()))
    arrays = [name for name in restored if name != model]
    for name in restored:  # unreadable metadata is no metadata
        (directory if name == model else directory / name).joinpath("zarr.json").unlink(
            missing_ok=True
        )
    if model in restored:
        # a group written before its arrays: its arrays' data say whether any unit finished
        done = directory / "done" / "c"
        if not done.is_dir() or not any(done.rglob("*")):
            return []  # nothing can have finished: the template is rewritten whole
        zarr.open_group(directory, mode="a", zarr_format=3)
    group_metadata = directory / "zarr.json"
    kept = group_metadata.read_bytes() if model not in restored else None
    if arrays:
        with warnings.catch_warnings():  # zarr notes the folders it is about to describe
            warnings.filterwarnings("ignore", message=".*not recognized as a component")
            empty[arrays].to_zarr(
                path, group=model, mode="a", compute=False, zarr_format=3, consolidated=False
            )
    if kept is not None:
        partial = group_metadata.with_name("zarr.json.partial")  # verify removes a leftover
        partial.write_bytes(kept)
        os.replace(partial, group_metadata)
    else:
        group = zarr.open_group(directory, mode="r+", zarr_format=3)
        group.attrs.update({**empty.attrs, "model_name": model, TEMPLATE_MARK: True})
    return restored
