"""A store's metadata files (``zarr.json``) and its folders, checked before anything is read or
written: lost, garbled or altered metadata is named (and written again from the study's template,
byte for byte as it was), and a store that holds a symbolic link is never written through.

A model group records what its template wrote: the CRC-32 of every array's ``zarr.json``
(:data:`METADATA_SUMS`: an array whose metadata no longer match, or whose folder is gone, is
damaged, whatever the file still parses as) and the root's attributes (:data:`ROOT_RECORD`: a lost
root ``zarr.json`` is written again from them). Stores written before these records are read as
before.

Chunks are never touched here: a restored array's chunks are kept, and their checksums then say
whether each finished unit is whole.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from patchwork.errors import StoreError
from patchwork.files import Unreadable, not_regular, read_bounded

#: Set on a model group once its template is written to the end.
TEMPLATE_MARK = "template_complete"
#: Per-sample marks written by every unit after its data (checksums, then done).
MARKS = ("checksum", "done")
#: Attribute of a model group: CRC-32 of each array's ``zarr.json`` as the template wrote it.
METADATA_SUMS = "metadata_checksums"
#: Attribute of a model group: the store root's attributes, from which a lost root is rebuilt.
ROOT_RECORD = "store_attributes"
#: The largest ``zarr.json`` read (a group's records the study's text, which is far smaller);
#: a larger one is unreadable metadata, never read whole.
METADATA_LIMIT = 64 * 2**20


class OversizedFile(StoreError):
    """A store file over the most its metadata allow (:mod:`patchwork.store.bounded`): damage,
    found without reading the file whole."""


#: What reading a damaged chunk or metadata file raises (codec, JSON, shape errors; a garbled
#: variable-length string chunk can claim billions of items, and numpy refuses to allocate them;
#: a file over its bound).
DAMAGE = (
    OversizedFile,
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    OSError,
    MemoryError,
    zarr.errors.BaseZarrError,
)


def readable_json(path: Path, node_type: str | None = None) -> bool:
    """Whether ``path`` is a file holding a JSON object (what every ``zarr.json`` is), of
    ``node_type`` ("group", "array") where given; a FIFO or a device there is never opened."""
    try:
        metadata = json.loads(read_bounded(path, METADATA_LIMIT))
    except (Unreadable, ValueError, RecursionError):
        return False
    return isinstance(metadata, dict) and node_type in (None, metadata.get("node_type"))


def _attributes(path: Path) -> dict[str, object]:
    attributes = json.loads(path.read_text(encoding="utf-8")).get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def unreadable_metadata(path: Path, model: str) -> list[str]:
    """The nodes of ``model``'s group whose ``zarr.json`` is missing, unreadable or not what the
    template wrote (:data:`METADATA_SUMS`): ``model`` for the group itself, else the array's name
    (a folder without metadata, or an array the group records without its folder, is lost)."""
    directory = path / model
    if not directory.is_dir():
        return []
    lost = [model] if not readable_json(directory / "zarr.json", "group") else []
    folders = {entry.name for entry in directory.iterdir() if entry.is_dir()}
    attributes = {} if lost else _attributes(directory / "zarr.json")
    # a template patchwork wrote has both marks; a store other tools wrote may lack them
    written = attributes.get(TEMPLATE_MARK) is True
    recorded = attributes.get(METADATA_SUMS) if written else None
    expected = set(recorded) if isinstance(recorded, dict) else set(MARKS) if written else set()
    named = _named_by_arrays(directory, folders)
    damaged = {
        name
        for name in folders
        if (name in named or name in expected or _array_folder(directory / name))
        and not readable_json(directory / name / "zarr.json")
    }
    if isinstance(recorded, dict):
        damaged |= {
            name
            for name, checksum in recorded.items()
            if name in folders and _metadata_sum(directory / name) != checksum
        }
    return lost + sorted(damaged | (expected - folders))


def _metadata_sum(array: Path) -> int | None:
    """CRC-32 of an array's ``zarr.json`` bytes (None when it cannot be read)."""
    try:
        return zlib.crc32(read_bounded(array / "zarr.json", METADATA_LIMIT))
    except Unreadable:
        return None


def metadata_sums(directory: Path) -> dict[str, int]:
    """:data:`METADATA_SUMS` of a model group: every array folder's ``zarr.json`` CRC-32."""
    return {
        entry.name: checksum
        for entry in sorted(directory.iterdir())
        if entry.is_dir() and (checksum := _metadata_sum(entry)) is not None
    }


def recorded_root(path: Path) -> dict[str, Any] | None:
    """The root attributes a model group of the store recorded (:data:`ROOT_RECORD`), if any."""
    if not path.is_dir():
        return None
    for entry in sorted(path.iterdir()):
        metadata = entry / "zarr.json"
        if entry.is_dir() and not entry.is_symlink() and readable_json(metadata):
            record = _attributes(metadata).get(ROOT_RECORD)
            if isinstance(record, dict):
                return record
    return None


def root_readable(path: Path) -> bool:
    """Whether the store root's ``zarr.json`` opens as a Zarr group."""
    try:
        zarr.open_group(path, mode="r", zarr_format=3)
    except DAMAGE:
        return False
    return readable_json(path / "zarr.json")


def root_line(path: Path) -> str:
    """One line for a lost root ``zarr.json`` that a model group recorded: what to do."""
    return (
        f"{path}: the store's root metadata (zarr.json) is lost or unreadable; finished units "
        "are kept — run the study again (patchwork run STUDY) to write it again from the record "
        "its model group keeps, then read or verify the store"
    )


def restore_root(path: Path, config_sha256: object) -> bool:
    """Write the root's ``zarr.json`` again, byte for byte, from the attributes a model group
    recorded (:data:`ROOT_RECORD`) when it is lost or unreadable, or when it names another
    study configuration than the one both the record and the running study name (a damaged
    hash: a changed study changes neither record nor root). Returns whether it was written."""
    record = recorded_root(path)
    if record is None:
        return False
    metadata = path / "zarr.json"
    if root_readable(path):
        stored = _attributes(metadata).get("config_sha256")
        if stored == config_sha256 or record.get("config_sha256") != config_sha256:
            return False
    _remove_metadata(metadata)
    zarr.open_group(path, mode="a", zarr_format=3, attributes=record)
    return True


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
    """One line for lost metadata or arrays: what is lost, what a run keeps, what to do."""
    missing = [name for name in lost if name != model and not (path / model / name).exists()]
    damaged = [name for name in lost if name not in missing]
    parts = []
    if damaged:
        names = ", ".join(repr(name) for name in damaged)
        parts.append(
            f"the metadata (zarr.json) of {names} is lost, unreadable or not what the store's "
            "template wrote; finished units are kept"
        )
    if missing:
        names = ", ".join(repr(name) for name in missing)
        parts.append(
            f"the array {names} is missing (removed from the store); the units whose data it "
            "held are computed again"
        )
    return (
        f"{path}/{model}: {'; '.join(parts)} — run the study again (patchwork run STUDY) to "
        "write it again from the study, then read or verify the store"
    )


def refuse_links(path: Path) -> None:
    """Raise :class:`StoreError` when anything inside the store is a symbolic link (a write
    through it would land outside the store) or a FIFO, a device or a socket
    (:func:`refuse_special_files`)."""
    _refuse_entries(path, links=True)


def refuse_special_files(path: Path) -> None:
    """Raise :class:`StoreError`, naming it, when a file inside the store (a chunk, a
    ``zarr.json``) is a FIFO, a device or a socket, or a link to one: reading it would wait
    forever (a FIFO) or never end (``/dev/zero``). Nothing is opened; one walk of the store's
    folders, by the types their listings carry."""
    _refuse_entries(path, links=False)


def _refuse_entries(path: Path, links: bool) -> None:
    if not path.is_dir():
        return
    folders = [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if links and entry.is_symlink():
                    raise StoreError(
                        f"{entry.path} is a symbolic link; patchwork never writes through links, "
                        "which could lead outside the store — replace it with the folder or file "
                        "itself, or start over with --fresh"
                    )
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif not entry.is_file():  # a FIFO, a device, a socket, or a link to none of them
                    problem = not_regular(Path(entry.path))
                    if problem is not None and problem.endswith("not a regular file"):
                        raise StoreError(
                            f"{entry.path} {problem}, where the store keeps a file; patchwork "
                            "does not open it — remove it, then run the study again "
                            "(patchwork run STUDY) to rebuild what it held"
                        )


def restore_metadata(
    path: Path, model: str, empty: xr.Dataset, records: Callable[[], dict[str, Any]]
) -> list[str]:
    """Write missing, unreadable or altered ``zarr.json`` files of a finished template's group or
    arrays again from the study's template (altered: not what the group recorded, or a shape or
    chunk shape other than the template's), and arrays removed whole (empty: a lost data array's
    units, and every unit of a lost checksum array, fail their checksums and are computed again;
    a lost done array is recovered from the checksums); chunks are kept. A group's own metadata,
    where readable, is kept byte for byte (writing arrays into a group rewrites its attributes
    otherwise); a lost one is written again with ``records()`` (the attributes the template
    records, :data:`METADATA_SUMS` among them). Returns the names restored (``model`` for the
    group)."""
    directory = path / model
    if not directory.is_dir():
        return []
    names = {str(name) for name in empty.variables}
    # removed whole, or a folder left without metadata (an array of fill values has no chunks)
    absent = {
        name
        for name in names
        if not readable_json(directory / name / "zarr.json")
        or _disagrees(directory / name / "zarr.json", empty[name])
    }
    absent |= names & set(unreadable_metadata(path, model))
    group_lost = not readable_json(directory / "zarr.json", "group")
    restored = sorted(absent | ({model} if group_lost else set()))
    arrays = [name for name in restored if name != model]
    for name in restored:  # unreadable metadata is no metadata
        _remove_metadata((directory if name == model else directory / name) / "zarr.json")
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
    else:  # the attributes in the order the template wrote them
        group = zarr.open_group(directory, mode="r+", zarr_format=3)
        group.attrs.update({**empty.attrs, "model_name": model, **records(), TEMPLATE_MARK: True})
    return restored


def remove_folder_in_place(path: Path, what: str) -> bool:
    """Remove an empty folder standing where the store keeps a file (``what``: "a chunk of the
    store", "the store's metadata file"); one holding files is refused, as they are not the
    store's to remove. Returns whether there was a folder."""
    if not path.is_dir() or path.is_symlink():
        return False
    try:
        path.rmdir()
    except OSError:
        raise StoreError(
            f"{path} is a folder where {what} belongs, and it holds files; move it out of the store"
        ) from None
    return True


def _remove_metadata(metadata: Path) -> None:
    """Remove an unreadable ``zarr.json``, or an empty folder in its place."""
    if not remove_folder_in_place(metadata, "the store's metadata file"):
        metadata.unlink(missing_ok=True)


def _disagrees(metadata: Path, expected: xr.DataArray) -> bool:
    """Whether an array's stored shape, or chunk shape where the template chunks it, differs
    from the template's (what stores without :data:`METADATA_SUMS` can still check)."""
    stored = json.loads(metadata.read_text(encoding="utf-8"))
    grid = stored.get("chunk_grid")
    configuration = grid.get("configuration") if isinstance(grid, dict) else None
    chunks = configuration.get("chunk_shape") if isinstance(configuration, dict) else None
    wanted = getattr(expected.data, "chunksize", None)
    return stored.get("shape") != list(expected.shape) or (
        wanted is not None and chunks != list(wanted)
    )
