"""A store's metadata files (``zarr.json``) and its folders, checked before anything is read or
written: lost, garbled or altered metadata is named (and written again from the study's template,
byte for byte as it was), and a store that holds a symbolic link is never written through.

A model group records what its template wrote (:data:`RECORDS`): the CRC-32 of every array's
``zarr.json`` (:data:`METADATA_SUMS`: an array whose metadata no longer match, or whose folder is
gone, is damaged, whatever the file still parses as), of every coordinate's values
(:data:`COORDINATE_SUMS`), and the root's attributes (:data:`ROOT_RECORD`: a lost root
``zarr.json``, or one that no longer agrees with the record, is written again from it). A group
that may hold finished units without these records (edited away, or written before they existed)
is damaged metadata like an unreadable one: readers refuse it, a run writes the group and its
arrays' metadata again from the study's template.

Chunks are never touched here: a restored array's chunks are kept, and their checksums then say
whether each finished unit is whole.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
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
#: Attribute of a model group: CRC-32 of each coordinate array as written (coordinates have no
#: unit checksum of their own; a lost chunk would read as blank labels).
COORDINATE_SUMS = "coordinate_checksums"
#: What a model group records of its template, besides :data:`TEMPLATE_MARK` and its
#: ``model_name``; each is a mapping.
RECORDS = (COORDINATE_SUMS, METADATA_SUMS, ROOT_RECORD)
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


def _json_object(path: Path, node_type: str | None = None) -> dict[str, Any] | None:
    """The JSON object ``path`` holds (what every ``zarr.json`` is), of ``node_type`` ("group",
    "array") where given, read once and bounded; None otherwise. A FIFO or a device there is
    never opened."""
    try:
        metadata = json.loads(read_bounded(path, METADATA_LIMIT))
    except (Unreadable, ValueError, RecursionError):
        return None
    if isinstance(metadata, dict) and node_type in (None, metadata.get("node_type")):
        return metadata
    return None


def readable_json(path: Path, node_type: str | None = None) -> bool:
    """Whether ``path`` holds a JSON object, of ``node_type`` where given (:func:`_json_object`)."""
    return _json_object(path, node_type) is not None


def _attributes(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``zarr.json`` object's attributes ({} when it has none), None for no object."""
    if metadata is None:
        return None
    attributes = metadata.get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def unreadable_metadata(path: Path, model: str) -> list[str]:
    """The nodes of ``model``'s group whose ``zarr.json`` is missing, unreadable or not what the
    template wrote (:data:`METADATA_SUMS`): ``model`` for the group itself (also when it may hold
    finished units without its :data:`RECORDS`), else the array's name (a folder without
    metadata, an array the group records without its folder, or one it does not record, is
    lost)."""
    directory = path / model
    if not directory.is_dir():
        return []
    attributes = _attributes(_json_object(directory / "zarr.json", "group"))
    lost = [model] if attributes is None or _records_lost(directory, attributes) else []
    folders = {entry.name for entry in directory.iterdir() if entry.is_dir()}
    recorded = None if lost or attributes is None else attributes.get(METADATA_SUMS)
    expected = set(recorded) if isinstance(recorded, dict) else set()
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
            for name in folders
            if _array_folder(directory / name)
            and _metadata_sum(directory / name) != recorded.get(name)
        }
    return lost + sorted(damaged | (expected - folders))


def _records_lost(directory: Path, attributes: dict[str, Any]) -> bool:
    """Whether a model group of a store a study run wrote (its root names the study's
    configuration hash; a store other tools wrote keeps no records) that may hold finished units
    (:func:`may_hold_units`) lacks its template's mark, its model's name or any of its
    :data:`RECORDS` (or records no metadata of its marks), or holds attributes its template did
    not write."""
    whole = (
        set(attributes) == {"model_name", *RECORDS, TEMPLATE_MARK}
        and attributes[TEMPLATE_MARK] is True
        and attributes["model_name"] == directory.name
        and all(isinstance(attributes[record], dict) for record in RECORDS)
        and set(MARKS) <= set(attributes[METADATA_SUMS])  # every template has its marks
    )
    root = _attributes(_json_object(directory.parent / "zarr.json"))
    return not whole and may_hold_units(directory) and root is not None and "config_sha256" in root


def may_hold_units(directory: Path) -> bool:
    """Whether any unit of a model group may have finished: a unit writes its checksums, then its
    done mark, so without a chunk of either (a template cut short while written) none did."""
    return any(entry.is_file() for mark in MARKS for entry in (directory / mark / "c").rglob("*"))


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
    return next((record for _, record in _root_records(path)), None)


def _root_records(path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Each model group of the store that records the root's attributes, with its record."""
    if not path.is_dir():
        return
    for entry in sorted(path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            record = (_attributes(_json_object(entry / "zarr.json")) or {}).get(ROOT_RECORD)
            if isinstance(record, dict):
                yield entry, record


def root_readable(path: Path) -> bool:
    """Whether the store root's ``zarr.json`` opens as a Zarr group."""
    return _root_object(path) is not None


def _root_object(path: Path) -> dict[str, Any] | None:
    """The store root's ``zarr.json`` object when it opens as a Zarr group; None otherwise."""
    try:
        zarr.open_group(path, mode="r", zarr_format=3)
    except DAMAGE:
        return None
    return _json_object(path / "zarr.json")


def root_line(path: Path) -> str:
    """One line for a lost root ``zarr.json`` that a model group recorded: what to do."""
    return (
        f"{path}: the store's root metadata (zarr.json) is lost, unreadable or not what its "
        "model group recorded; finished units are kept — run the study again (patchwork run "
        "STUDY) to write it again from that record, then read or verify the store"
    )


def restore_root(path: Path, running: Mapping[str, object]) -> str | None:
    """Make the store root's attributes and the record its model groups keep (:data:`ROOT_RECORD`)
    agree again, byte for byte, when one of them is lost or altered: the side that agrees better
    with the root the running study would write (``running``; :func:`_agreement`) is written
    over the other, the record on a tie. The root is written over the record only when it agrees
    wholly (else both are damaged and neither can be trusted: :class:`StoreError`). A record of
    another study's configuration is left as it is (the caller refuses the store). Returns a line
    for what was written, or None."""
    record = recorded_root(path)
    if record is None:
        return None
    metadata = path / "zarr.json"
    stored = _attributes(_root_object(path))
    if stored == record:
        return None
    if stored is not None and _agreement(stored, running) > _agreement(record, running):
        if not all(_agreement(stored, running)):
            raise StoreError(
                f"{path}: the root's attributes and the copy its model group keeps "
                f"({ROOT_RECORD}) disagree, and neither is what this study writes; patchwork "
                "cannot tell which is right — check them (or run with --fresh to start over)"
            )
        for group, kept in _root_records(path):
            if kept != stored:
                zarr.open_group(group, mode="r+", zarr_format=3).attrs[ROOT_RECORD] = stored
        return "the root's attributes that the model group records were altered: written again"
    if record.get("config_sha256") != running.get("config_sha256"):
        return None
    _remove_metadata(metadata)
    zarr.open_group(path, mode="a", zarr_format=3, attributes=record)
    return "root metadata was lost or damaged: written again"


#: Root attributes a resumed run may differ on without the store being another's: when it was
#: created, and with which code and libraries.
_PER_RUN = ("created", "git_commit", "versions")


def _agreement(
    attributes: Mapping[str, object], running: Mapping[str, object]
) -> tuple[bool, bool, bool]:
    """How far a store's root attributes agree with those the running study would write
    (``running``): its configuration hash, then its text and overrides, then every other
    attribute but :data:`_PER_RUN`, with no attribute more or less."""
    return (
        attributes.get("config_sha256") == running.get("config_sha256"),
        all(attributes.get(key) == running.get(key) for key in ("study", "overrides")),
        set(attributes) == set(running)
        and all(attributes[key] == running[key] for key in running if key not in _PER_RUN),
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
        metadata = _json_object(directory / name / "zarr.json")
        if metadata is None:
            continue
        dims = metadata.get("dimension_names")
        if isinstance(dims, list):
            named.update(str(dim) for dim in dims if dim)
        named.update(str((_attributes(metadata) or {}).get("coordinates", "")).split())
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
    where whole, is kept byte for byte (writing arrays into a group rewrites its attributes
    otherwise), its :data:`METADATA_SUMS` brought up to date; a lost one is written again, with
    every array's metadata (nothing recorded vouches for them), and ``records()`` (the
    attributes the template records, :data:`RECORDS`). Returns the names restored (``model`` for
    the group)."""
    directory = path / model
    if not directory.is_dir():
        return []
    names = {str(name) for name in empty.variables}
    lost = unreadable_metadata(path, model)
    group_lost = model in lost
    # removed whole, or a folder left without metadata (an array of fill values has no chunks)
    absent = {
        name
        for name in names
        if group_lost
        or name in lost
        or not readable_json(directory / name / "zarr.json")
        or _disagrees(directory / name / "zarr.json", empty[name])
    }
    restored = sorted(absent | ({model} if group_lost else set()))
    arrays = [name for name in restored if name != model]
    for name in restored:  # unreadable metadata is no metadata
        _remove_metadata((directory if name == model else directory / name) / "zarr.json")
    if group_lost:
        if not may_hold_units(directory):
            return []  # nothing can have finished: the template is rewritten whole
        zarr.open_group(directory, mode="a", zarr_format=3)  # a group before its arrays
    group_metadata = directory / "zarr.json"
    kept = None if group_lost else group_metadata.read_bytes()
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
    group = zarr.open_group(directory, mode="r+", zarr_format=3)
    if kept is None:  # the attributes in the order the template wrote them
        group.attrs.update({**empty.attrs, "model_name": model, **records(), TEMPLATE_MARK: True})
    elif group.attrs.get(METADATA_SUMS) != (sums := metadata_sums(directory)):
        group.attrs[METADATA_SUMS] = sums  # a record altered, or an array it did not name
        restored = sorted({*restored, model})
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
