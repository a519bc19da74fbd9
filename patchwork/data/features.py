"""Precomputed features (``.npy``, ``.safetensors``) read header first.

A feature file's header says how large its payload is. It is read and checked against the
file's own size before anything is allocated, so a small file that claims a huge array (an
``.npy`` header saying 373 GiB) or a damaged safetensors header ends in one
:class:`~patchwork.errors.DataError` naming the file, never in an allocation or a traceback.
Features are floating point, shaped (images, tokens, hidden) or (tokens, hidden).
"""

from __future__ import annotations

import json
import math
import struct
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchwork.errors import DataError

#: Largest safetensors header (bytes) read; the format's own readers refuse larger ones too.
MAX_HEADER_BYTES = 100_000_000
#: What features may hold: the floating-point types a vision encoder writes.
_FLOATING = "expected float16, bfloat16, float32 or float64"
#: safetensors dtype → bytes per element.
_SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1,
}  # fmt: skip


def load_features(path: Path) -> torch.Tensor:
    """The one tensor of ``path`` (``.npy`` or ``.safetensors``) as float32, refused when it holds
    NaN or an infinity (as float32: a float64 beyond its range counts as infinite)."""
    if path.suffix == ".npy":
        tensor = _load_npy(path)
    elif path.suffix == ".safetensors":
        tensor = _load_safetensors(path)
    else:
        raise DataError(f"features must be .npy or .safetensors: {path}")
    finite = torch.isfinite(tensor)
    if not finite.all():
        bad = int((~finite).sum())
        raise DataError(
            f"features {path} hold {bad:,} NaN or infinite value(s) of {tensor.numel():,}"
        )
    return tensor


#: What numpy's header reader raises on a damaged header (it parses it as a Python literal).
_NPY_HEADER_ERRORS = (OSError, ValueError, SyntaxError, TypeError, EOFError, tokenize.TokenError)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, payload offset) of an ``.npy`` file from its header alone, refusing a
    header that claims more bytes than the file holds or an object array."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
    except _NPY_HEADER_ERRORS as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read features {path}: damaged .npy header ({message})") from None
    del fortran
    if dtype.kind != "f":  # booleans or integers would be cast to numbers nobody computed
        raise DataError(f"features {path}: dtype {dtype} is not floating point ({_FLOATING})")
    _check_shape(path, tuple(shape))
    elements = math.prod(shape)
    claimed = elements * dtype.itemsize
    if offset + claimed > size:
        raise DataError(
            f"features {path}: its header claims shape {tuple(shape)} ({claimed:,} bytes) but "
            f"the file holds {size - offset:,}; the file is truncated or damaged"
        )
    return tuple(shape), dtype, offset


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a shape that is not (images, tokens, hidden) or (tokens, hidden) with every side at
    least 1: a scalar, a flat vector or an empty array is not a vision tower's output."""
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise DataError(
            f"features {path}: shape {shape}; expected (images, tokens, hidden) or (tokens, "
            "hidden), every side at least 1"
        )


def _load_npy(path: Path) -> torch.Tensor:
    npy_header(path)
    try:
        array = np.load(path, allow_pickle=False)
    except _NPY_HEADER_ERRORS as error:
        raise DataError(f"cannot read features {path}: {error}") from None
    with np.errstate(over="ignore"):  # beyond float32 becomes infinite, refused by the caller
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name → {dtype, shape, data_offsets} of a safetensors file from its header, each
    entry checked against the format and the file's size."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise DataError(f"cannot read features {path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise DataError(
                f"cannot read features {path}: its header claims {length:,} bytes, the file "
                f"holds {size - 8:,}; damaged safetensors file"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise DataError(f"cannot read features {path}: damaged safetensors header") from None
    if not isinstance(header, dict):
        raise DataError(f"cannot read features {path}: damaged safetensors header")
    header.pop("__metadata__", None)
    payload = size - 8 - length
    for name, entry in header.items():
        _check_entry(path, name, entry, payload)
    return header


def _check_entry(path: Path, name: str, entry: Any, payload: int) -> None:
    damaged = f"cannot read features {path}: tensor {name!r} has a damaged header entry"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise DataError(damaged)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _SAFETENSORS_DTYPES:
        raise DataError(f"cannot read features {path}: tensor {name!r} has dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_count(v) for v in shape)):
        raise DataError(damaged)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(v) for v in offsets)):
        raise DataError(damaged)
    begin, end = offsets
    claimed = math.prod(shape) * _SAFETENSORS_DTYPES[dtype]
    if not begin <= end <= payload or end - begin != claimed:
        raise DataError(
            f"cannot read features {path}: tensor {name!r} claims shape {shape} ({claimed:,} "
            f"bytes at {begin}-{end}) but the file holds {payload:,}; damaged or truncated"
        )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _load_safetensors(path: Path) -> torch.Tensor:
    header = safetensors_header(path)
    if len(header) != 1:
        raise DataError(f"{path} must hold exactly one tensor, holds {sorted(header)}")
    (entry,) = header.values()
    if entry["dtype"] not in ("F64", "F32", "F16", "BF16"):
        raise DataError(
            f"features {path}: dtype {entry['dtype']} is not floating point ({_FLOATING})"
        )
    _check_shape(path, tuple(entry["shape"]))
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as error:
        raise DataError(f"cannot read features {path}: {error}") from None
    return next(iter(tensors.values())).to(torch.float32)
