"""Every read of a store file stops at what the file can hold: a chunk at what its array's
metadata allow (the chunk's items × their size, plus the worst case its codecs add), a
``zarr.json`` at :data:`~patchwork.store.metadata.METADATA_LIMIT`.

A file over its bound is damage (a sparse 3 GB file in place of a chunk, a chunk that never
ends): it is never read whole but raises :class:`~patchwork.store.metadata.OversizedFile`, one
of :data:`~patchwork.store.metadata.DAMAGE`, so the unit that holds it is named by ``verify`` and
``status`` and computed again by a run, as for any other damaged chunk. Every zarr group of the
store is opened through :func:`open_store_group` (or :func:`bounded_store` for xarray).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

from patchwork.files import read_at_most
from patchwork.store.metadata import METADATA_LIMIT, OversizedFile

#: Bytes a variable-length string of a stored label may take: its length prefix and up to 4,096
#: characters of UTF-8 (sample ids and answer words are at most 256 characters).
STRING_LIMIT = 4 + 4 * 4096


def _zstd(size: int) -> int:
    """``ZSTD_COMPRESSBOUND`` plus the largest frame header (18 bytes)."""
    small = (128 * 2**10 - size) >> 11 if size < 128 * 2**10 else 0
    return size + (size >> 8) + small + 18


def _gzip(size: int) -> int:
    """zlib's ``deflateBound`` for stored blocks, plus the gzip header and trailer."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13 + 18


#: The most each bytes-to-bytes codec of zarr v3 adds to its input (by the codec's ``name``).
_GROWTH = {
    "zstd": _zstd,
    "gzip": _gzip,
    "blosc": lambda size: size + 32,  # BLOSC2_MAX_OVERHEAD
    "crc32c": lambda size: size + 4,
    "transpose": lambda size: size,
}


def _unknown_codec(size: int) -> int:
    """A codec patchwork does not know: no compressor grows its input twofold."""
    return 2 * size + 2**16


def chunk_limit(metadata: dict[str, Any]) -> int | None:
    """The most bytes a chunk of the array that ``metadata`` (its parsed ``zarr.json``)
    describes can take on disk; None where the metadata do not say (not a regular grid, an
    array-to-bytes codec other than ``bytes`` or ``vlen-*``): such a chunk is read unbounded."""
    grid = metadata.get("chunk_grid")
    configuration = grid.get("configuration") if isinstance(grid, dict) else None
    shape = configuration.get("chunk_shape") if isinstance(configuration, dict) else None
    codecs = metadata.get("codecs")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return None
    if not isinstance(codecs, list) or not all(isinstance(codec, dict) for codec in codecs):
        return None
    items, size = math.prod(shape), None
    for codec in codecs:
        name = codec.get("name")
        if size is None:  # array-to-array codecs first, then the one array-to-bytes codec
            if name == "bytes":
                size = items * _item_size(metadata.get("data_type"))
            elif name in ("vlen-utf8", "vlen-bytes"):
                size = 4 + items * STRING_LIMIT
            elif name != "transpose":
                return None
        else:
            size = _GROWTH.get(str(name), _unknown_codec)(size)
    return size


def _item_size(data_type: object) -> int:
    """Bytes per item of a zarr v3 ``data_type`` (a numpy name, or a fixed-length one)."""
    if isinstance(data_type, dict):
        length = (data_type.get("configuration") or {}).get("length_bytes")
        if isinstance(length, int) and length > 0:
            return length
    try:
        return int(np.dtype(str(data_type)).itemsize)
    except TypeError:
        return 16  # a type numpy does not name: at most a complex128's size


class BoundedStore(LocalStore):
    """A local zarr store whose whole-file reads stop at each file's bound (module docstring)."""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._limits: dict[str, int | None] = {}

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """The file at ``key`` (a ``byte_range`` of it, as zarr reads it), read at most to its
        bound; over it: :class:`~patchwork.store.metadata.OversizedFile`."""
        path = self.root / key
        limit = self._limit(key) if byte_range is None and path.is_file() else None
        if limit is None:  # a range, a missing file, a folder: as zarr reads them
            return await super().get(key, prototype, byte_range)
        if not self._is_open:
            await self._open()
        try:
            data = await asyncio.to_thread(read_at_most, path, limit)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if len(data) > limit:
            raise OversizedFile(
                f"{path} is over {limit:,} bytes, the most "
                f"{'a metadata file' if key.endswith('zarr.json') else 'a chunk of its array'} "
                "can take: the file is damaged"
            )
        return (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    def _limit(self, key: str) -> int | None:
        """The bound of the file at ``key``: a metadata file's, or its array's chunk bound."""
        if key.rsplit("/", 1)[-1] == "zarr.json":
            return METADATA_LIMIT
        folder = key.rsplit("/", 1)[0] if "/" in key else ""
        while folder:  # the nearest folder above with array metadata: the chunk's array
            if folder not in self._limits:
                self._limits[folder] = self._array_limit(folder)
            if self._limits[folder] is not None or (self.root / folder / "zarr.json").exists():
                return self._limits[folder]
            folder = folder.rsplit("/", 1)[0] if "/" in folder else ""
        return None

    def _array_limit(self, folder: str) -> int | None:
        try:
            text = read_at_most(self.root / folder / "zarr.json", METADATA_LIMIT)
            metadata = json.loads(text)
        except (OSError, ValueError, RecursionError):
            return None  # no metadata here, or unreadable: zarr reads none of its chunks
        if not isinstance(metadata, dict) or metadata.get("node_type") != "array":
            return None
        return chunk_limit(metadata)


def bounded_store(path: Path, mode: str = "r") -> BoundedStore:
    """The store at ``path`` with bounded reads, read-only for ``mode="r"``."""
    return BoundedStore(path, read_only=mode == "r")


def open_store_group(path: Path, mode: str = "r") -> zarr.Group:
    """:func:`zarr.open_group` of a patchwork store (Zarr v3), every read bounded."""
    return zarr.open_group(bounded_store(path, mode), mode=mode, zarr_format=3)  # type: ignore[arg-type]
