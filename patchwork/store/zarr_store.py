"""The result store: one Zarr v3 group per study, one subgroup per model.

Layout (``store/<study>.zarr``)::

    /            attrs: schema_version, study_name, study (YAML text), config_sha256, git_commit,
                        versions, created
    /<model>/    attrs: model_name
      effect      (sample, layer, position_group, component, metric) float32, NaN = not computed
      null_effect (same)  the same patches from a mismatched sample's source run (noise floor)
      baseline    (sample, run, metric)                           float32
      checksum    (sample,)                                       int64, CRC-32 of a sample's data
      done        (sample,)                                       bool, set after the unit's data

The template (metadata and coordinates, no data) is written once before any unit runs. A unit
writes whole chunks along ``sample`` (chunk = ``unit_size`` samples) and only then its ``done``
mark, so an interrupted run never leaves a unit marked done with missing data.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from patchwork.errors import StoreError

SCHEMA_VERSION = 1
EFFECT_DIMS = ("sample", "layer", "position_group", "component", "metric")
#: Arrays every complete template has (null_effect is optional).
REQUIRED_ARRAYS = ("effect", "baseline", "checksum", "done")

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")


@dataclass(frozen=True)
class StoreCoords:
    """The coordinates of one model's results."""

    samples: Sequence[str]
    audio_answers: Sequence[str]
    visual_answers: Sequence[str]
    layers: Sequence[int]
    position_groups: Sequence[str]
    components: Sequence[str]
    metrics: Sequence[str]
    runs: Sequence[str]


def resolve_store_path(root: Path, relative: Path) -> Path:
    """``root / relative``, refusing any path that would land outside ``root``."""
    root = root.resolve()
    target = (root / relative).resolve()
    if relative.is_absolute() or not target.is_relative_to(root) or target == root:
        raise StoreError(f"store path {relative} lies outside the store root {root}")
    return target


def template(coords: StoreCoords, unit_size: int, null_effect: bool) -> xr.Dataset:
    """The empty (lazy, NaN-filled) dataset whose metadata the store is created from."""
    n = len(coords.samples)
    chunk = min(unit_size, n)
    shape = (
        n,
        len(coords.layers),
        len(coords.position_groups),
        len(coords.components),
        len(coords.metrics),
    )

    def lazy_nan(*dims_shape: int) -> da.Array:
        return da.full(dims_shape, np.nan, dtype="float32", chunks=(chunk, *dims_shape[1:]))

    variables = {
        "effect": (EFFECT_DIMS, lazy_nan(*shape)),
        "baseline": (
            ("sample", "run", "metric"),
            lazy_nan(n, len(coords.runs), len(coords.metrics)),
        ),
        "checksum": (("sample",), da.zeros(n, dtype=np.int64, chunks=chunk)),
        "done": (("sample",), da.zeros(n, dtype=bool, chunks=chunk)),
    }
    if null_effect:
        variables["null_effect"] = (EFFECT_DIMS, lazy_nan(*shape))
    return xr.Dataset(
        variables,
        coords={
            "sample": np.array(coords.samples, dtype=object),
            "audio_answer": ("sample", np.array(coords.audio_answers, dtype=object)),
            "visual_answer": ("sample", np.array(coords.visual_answers, dtype=object)),
            "layer": np.asarray(coords.layers, dtype=np.int64),
            "position_group": np.array(coords.position_groups, dtype=object),
            "component": np.array(coords.components, dtype=object),
            "metric": np.array(coords.metrics, dtype=object),
            "run": np.array(coords.runs, dtype=object),
        },
    )


class ResultStore:
    """One model's results inside a study store: create, resume, write units, read marks."""

    def __init__(self, path: Path, model: str) -> None:
        self.path = Path(path)
        self.model = model
        group = zarr.open_group(self.path, mode="r+", zarr_format=3)[model]
        assert isinstance(group, zarr.Group)
        self._group = group

    def _array(self, name: str) -> zarr.Array:
        array = self._group[name]
        if not isinstance(array, zarr.Array):
            raise StoreError(f"{self.path}/{self.model}/{name} is not an array")
        return array

    @classmethod
    def create_or_resume(
        cls,
        path: Path,
        model: str,
        empty: xr.Dataset,
        unit_size: int,
        provenance: dict[str, object],
        describe: Callable[[str], str] | None = None,
    ) -> ResultStore:
        """Create the store from its template, or reopen it when it belongs to the same study.

        ``describe(stored_study_text)`` says what changed when the study hash differs.
        """
        if (path / "zarr.json").exists():
            existing = _root_attrs(path)
            if existing.get("config_sha256") != provenance["config_sha256"]:
                changes = describe(str(existing.get("study", ""))) if describe else ""
                raise StoreError(
                    f"{path} holds results of a different study configuration"
                    f"{' (' + changes + ')' if changes else ''}; run with --fresh to start over "
                    "(it removes the old results) or choose another store"
                )
            root = zarr.open_group(path, mode="r", zarr_format=3)
            group = root.get(model)
            if isinstance(group, zarr.Group) and all(name in group for name in empty.variables):
                store = cls(path, model)
                store.check_layout(empty, unit_size)
                return store
            # No template, or one cut short by a crash: no unit can have run, so (re)write it.
        elif path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists but is not a patchwork store; not writing into it")
        else:
            # The root's metadata and attributes land in one atomic write.
            attributes = {**provenance, "created": _now(), "schema_version": SCHEMA_VERSION}
            zarr.open_group(path, mode="w", zarr_format=3, attributes=attributes)
        empty.attrs["model_name"] = model
        empty.to_zarr(path, group=model, mode="w", compute=False, zarr_format=3, consolidated=False)
        return cls(path, model)

    def check_layout(self, empty: xr.Dataset, unit_size: int) -> None:
        chunks = self._array("effect").chunks
        if self._array("effect").shape != empty["effect"].shape or chunks[0] != min(
            unit_size, empty.sizes["sample"]
        ):
            raise StoreError(
                f"{self.path}/{self.model}: stored array layout differs from the study"
            )

    @property
    def unit_size(self) -> int:
        return int(self._array("effect").chunks[0])

    def done(self) -> np.ndarray:
        """Boolean mask (sample,) of samples whose unit finished."""
        return np.asarray(self._array("done")[:], dtype=bool)

    def write_unit(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one unit's arrays at ``sample = start …``, then its done mark.

        The region must be whole chunks (or run to the end): two units never share a chunk.
        """
        count = len(next(iter(arrays.values())))
        stop = start + count
        total = self._array("done").shape[0]
        if start % self.unit_size or (stop % self.unit_size and stop != total):
            raise StoreError(
                f"unit [{start}, {stop}) is not aligned to chunks of {self.unit_size} samples"
            )
        for name, values in arrays.items():
            self._array(name)[start:stop] = values.astype(self._array(name).dtype)
        self._array("checksum")[start:stop] = sample_checksums(arrays)
        self._array("done")[start:stop] = True

    def read_unit(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The data variables of samples ``start … stop-1`` as written (no marks)."""
        return {name: self._array(name)[start:stop] for name in self.data_variables()}

    def data_variables(self) -> list[str]:
        return sorted(name for name in ("effect", "null_effect", "baseline") if name in self._group)

    def checksums(self) -> np.ndarray:
        return np.asarray(self._array("checksum")[:], dtype=np.int64)

    def clear_done(self, start: int, stop: int) -> None:
        """Unmark a unit so that the next run computes it again."""
        self._array("done")[start:stop] = False


def sample_checksums(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """CRC-32 per sample (first axis) over the float32 bytes of every array, by name order."""
    count = len(next(iter(arrays.values())))
    sums = np.zeros(count, dtype=np.int64)
    for index in range(count):
        crc = 0
        for name in sorted(arrays):
            crc = zlib.crc32(np.ascontiguousarray(arrays[name][index], np.float32).tobytes(), crc)
        sums[index] = crc
    return sums


def open_results(path: str | Path, model: str | None = None) -> xr.Dataset:
    """Open a study store as an :class:`xarray.Dataset` (lazy; unfinished cells are NaN).

    ``model`` picks the model group when the store holds several. The study's provenance
    (study text, hash, versions) is merged into ``attrs``.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no patchwork store here")
    root = zarr.open_group(path, mode="r", zarr_format=3)
    models = sorted(name for name, _ in root.groups())
    if not models:
        raise StoreError(f"{path}: the store holds no results yet")
    if model is None:
        if len(models) > 1:
            raise StoreError(f"{path}: holds several models {models}; pass model=")
        model = models[0]
    if model not in models:
        raise StoreError(f"{path}: no model {model!r}; the store has {models}")
    group = root[model]
    if not all(name in group for name in REQUIRED_ARRAYS):
        raise StoreError(
            f"{path}/{model}: the store's template is incomplete (a run was cut short while "
            "creating it); run the study again to rewrite it"
        )
    dataset = xr.open_zarr(path, group=model, consolidated=False, zarr_format=3)
    dataset.attrs = {**dict(root.attrs), **dataset.attrs}
    return dataset


def provenance(study_text: str, study_name: str, config_sha256: str) -> dict[str, object]:
    """Attributes recorded on the store's root: what ran, with which code and libraries."""
    import nnsight
    import torch
    import transformers

    import patchwork

    return {
        "study_name": study_name,
        "study": study_text,
        "config_sha256": config_sha256,
        "git_commit": _git_commit(),
        "versions": {
            "patchwork": patchwork.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "nnsight": getattr(nnsight, "__version__", "unknown"),
            "zarr": zarr.__version__,
            "xarray": xr.__version__,
            "numpy": np.__version__,
        },
    }


def _root_attrs(path: Path) -> dict[str, object]:
    try:
        return dict(zarr.open_group(path, mode="r", zarr_format=3).attrs)
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError) as error:
        raise StoreError(f"{path} exists but is not a patchwork store ({error})") from None


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
