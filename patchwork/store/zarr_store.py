"""The result store: one Zarr v3 group per study, one subgroup per model.

Layout (``store/<study>.zarr``)::

    /            attrs: schema_version, study_name, study (YAML text), config_sha256, git_commit,
                        versions, created
    /<model>/    attrs: model_name
      <arrays of each method>  (sample, …)  e.g. activation patching's
                 effect, null_effect (sample, layer, position_group, component, metric) and
                 baseline (sample, run, metric); float32, NaN = not computed
      checksum   (sample,)  int64, CRC-32 of a sample's data, written with them
      done       (sample,)  bool, set after the unit's data

The template (metadata and coordinates, no data) is written once before any unit runs. A unit
writes whole chunks along ``sample`` (chunk = ``unit_size`` samples) and only then its ``done``
mark, so an interrupted run never leaves a unit marked done with missing data.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from patchwork.errors import StoreError

SCHEMA_VERSION = 1
#: Per-sample marks written by every unit after its data.
MARKS = ("checksum", "done")

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: its dimensions (``sample`` first), the coordinates of the others, and
    what it is (``long_name`` and ``units`` attributes, as xarray's plots and the CF conventions
    read them; ``"1"`` for dimensionless numbers)."""

    dims: tuple[str, ...]
    coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    dtype: str = "float32"
    long_name: str = ""
    units: str = ""

    def shape(self, samples: int) -> tuple[int, ...]:
        return (samples, *(len(self.coords[dim]) for dim in self.dims[1:]))


@dataclass(frozen=True)
class SampleCoords:
    """The per-sample coordinates: ids and the two answer words."""

    samples: Sequence[str]
    audio_answers: Sequence[str]
    visual_answers: Sequence[str]


def resolve_store_path(root: Path, relative: Path) -> Path:
    """``root / relative``, refusing any path that would land outside ``root``."""
    root = root.resolve()
    target = (root / relative).resolve()
    if relative.is_absolute() or not target.is_relative_to(root) or target == root:
        raise StoreError(f"store path {relative} lies outside the store root {root}")
    return target


def template(samples: SampleCoords, arrays: Mapping[str, ArraySpec], unit_size: int) -> xr.Dataset:
    """The empty (lazy, NaN-filled) dataset whose metadata the store is created from.

    Every array is chunked by whole units along ``sample`` and whole along its other dimensions.
    Coordinates of dimensions shared by several arrays must agree.
    """
    n = len(samples.samples)
    chunk = min(unit_size, n)
    coords: dict[str, Any] = {
        "sample": np.array(samples.samples, dtype=object),
        "audio_answer": ("sample", np.array(samples.audio_answers, dtype=object)),
        "visual_answer": ("sample", np.array(samples.visual_answers, dtype=object)),
    }
    variables: dict[str, Any] = {}
    for name, spec in arrays.items():
        if spec.dims[0] != "sample":
            raise ValueError(f"array {name!r} must have 'sample' as its first dimension")
        for dim in spec.dims[1:]:
            values = np.asarray(spec.coords[dim])
            values = values.astype(object) if values.dtype.kind in "US" else values
            if dim in coords and not np.array_equal(np.asarray(coords[dim]), values):
                raise ValueError(f"arrays disagree on the coordinates of {dim!r}")
            coords[dim] = values
        shape = spec.shape(n)
        fill = np.nan if np.dtype(spec.dtype).kind == "f" else 0
        attrs = {"long_name": spec.long_name, "units": spec.units}
        variables[name] = (
            spec.dims,
            da.full(shape, fill, dtype=spec.dtype, chunks=(chunk, *shape[1:])),
            {key: value for key, value in attrs.items() if value},
        )
    variables["checksum"] = (
        ("sample",),
        da.zeros(n, dtype=np.int64, chunks=chunk),
        {"long_name": "CRC-32 of the sample's stored values (checked by patchwork verify)"},
    )
    variables["done"] = (
        ("sample",),
        da.zeros(n, dtype=bool, chunks=chunk),
        {"long_name": "the sample's results are complete"},
    )
    return xr.Dataset(variables, coords=coords)


#: Attribute of a model group set once its whole template (every array and coordinate) is written.
TEMPLATE_MARK = "template_complete"
#: Attribute of a model group: CRC-32 of each coordinate array as written (coordinates have no
#: unit checksum of their own; a lost chunk would read as blank labels).
COORDINATE_SUMS = "coordinate_checksums"
#: What reading a damaged chunk or metadata file raises (codec, JSON, shape errors).
DAMAGE = (RuntimeError, ValueError, TypeError, KeyError, OSError, zarr.errors.BaseZarrError)


def template_complete(group: zarr.Group) -> bool:
    """Whether a model group's template was written to the end: it carries :data:`TEMPLATE_MARK`
    (stores written before the mark existed count as complete once a unit is done — a crash
    while creating leaves none)."""
    if group.attrs.get(TEMPLATE_MARK):
        return True
    done = group.get("done")
    try:
        return isinstance(done, zarr.Array) and bool(np.asarray(done[:]).any())
    except Exception:  # noqa: BLE001 - an unreadable mark array is no proof of completeness
        return False


class ResultStore:
    """One model's results inside a study store: create, resume, write units, read marks."""

    def __init__(self, path: Path, model: str, mode: str = "r+") -> None:
        self.path = Path(path)
        self.model = model
        group = zarr.open_group(self.path, mode=mode, zarr_format=3)[model]  # type: ignore[arg-type]
        assert isinstance(group, zarr.Group)
        self._group = group
        #: What :meth:`repair` did when the store was reopened (one line each).
        self.repairs: list[str] = []

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
        describe: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> ResultStore:
        """Create the store from its template, or reopen it when it belongs to the same study.

        ``describe(stored_root_attributes)`` says what changed when the study hash differs.
        """
        if (path / "zarr.json").exists():
            existing = _root_attrs(path)
            if existing.get("config_sha256") != provenance["config_sha256"]:
                changes = describe(existing) if describe else ""
                raise StoreError(
                    f"{path} holds results of a different study configuration"
                    f"{' (' + changes + ')' if changes else ''}; run with --fresh to start over "
                    "(it removes the old results) or choose another store"
                )
            restored = _restore_metadata(path, model, empty)
            root = zarr.open_group(path, mode="r", zarr_format=3)
            group = root.get(model)
            if isinstance(group, zarr.Group) and template_complete(group):
                store = cls(path, model)
                store.check_layout(empty, unit_size)
                repairs = store.repair(empty, rewrite_coordinates=bool(restored))
                store.repairs = [
                    *(
                        f"metadata of {name!r} was lost or damaged: written again"
                        for name in restored
                    ),
                    *repairs,
                ]
                return store
            # No template, or one cut short by a crash: no unit can have run, so (re)write it.
        elif path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists but is not a patchwork store; not writing into it")
        else:
            # The root's metadata and attributes land in one atomic write.
            attributes: dict[str, Any] = {
                **provenance,
                "created": _now(),
                "schema_version": SCHEMA_VERSION,
            }
            zarr.open_group(path, mode="w", zarr_format=3, attributes=attributes)
        empty.attrs["model_name"] = model
        empty.to_zarr(path, group=model, mode="w", compute=False, zarr_format=3, consolidated=False)
        store = cls(path, model)
        store._group.attrs[COORDINATE_SUMS] = store._coordinate_sums()
        # written last: a template without the mark was cut short and is written again
        store._group.attrs[TEMPLATE_MARK] = True
        return store

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
        return int(self._array("done").chunks[0])

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
        return {name: np.asarray(self._array(name)[start:stop]) for name in self.data_variables()}

    def data_variables(self) -> list[str]:
        """Arrays that units write: everything along ``sample`` but the marks and the coordinates
        (dimension coordinates, and those xarray lists in a variable's ``coordinates``), so also
        one-dimensional variables such as ``probe_logit_diff (sample,)``."""
        arrays = dict(self._group.arrays())
        coordinates = {
            coordinate
            for array in arrays.values()
            for coordinate in str(array.attrs.get("coordinates", "")).split()
        }
        names = []
        for name, array in arrays.items():
            dims = _dimensions(array)
            if dims and dims[0] == "sample" and name not in {*MARKS, *coordinates, *dims}:
                names.append(name)
        return sorted(names)

    def checksums(self) -> np.ndarray:
        return np.asarray(self._array("checksum")[:], dtype=np.int64)

    def clear_done(self, start: int, stop: int) -> None:
        """Unmark a unit so that the next run computes it again."""
        self._array("done")[start:stop] = False

    def unit_intact(self, start: int, stop: int) -> bool:
        """Whether a done unit reads back whole: every chunk decodes, the checksums recorded when
        it was written match, and its effects and baselines are finite (``normalized_effect``
        and ``null_effect`` may be NaN by design)."""
        try:
            arrays = self.read_unit(start, stop)
            recorded = np.asarray(self._array("checksum")[start:stop], dtype=np.int64)
        except DAMAGE:
            return False
        if not np.array_equal(sample_checksums(arrays), recorded):
            return False
        return all(
            bool(np.isfinite(arrays[name][..., :2]).all())
            for name in ("effect", "baseline")
            if name in arrays
        )

    def damaged_units(self) -> list[tuple[int, int]]:
        """The done units that do not read back whole (:meth:`unit_intact`); none where the store
        keeps no checksums (written by other tools)."""
        if "checksum" not in self._group:
            return []
        try:
            done = self.done()
        except DAMAGE:
            return [(0, int(self._array("done").shape[0]))]
        size, total = self.unit_size, len(done)
        return [
            (start, min(start + size, total))
            for start in range(0, total, size)
            if done[start : start + size].any()
            and not (done[start : start + size].all() and self.unit_intact(start, start + size))
        ]

    def _coordinate_sums(self) -> dict[str, int]:
        sums = {}
        for name in self.coordinate_names():
            values = np.asarray(self._array(name)[:])
            data = "\x1f".join(map(str, values.ravel())).encode()
            sums[name] = zlib.crc32(data)
        return sums

    def coordinate_names(self) -> list[str]:
        """Dimension coordinates and those a variable names in its ``coordinates``."""
        arrays = dict(self._group.arrays())
        named = {
            coordinate
            for array in arrays.values()
            for coordinate in str(array.attrs.get("coordinates", "")).split()
        }
        dims = {dim for array in arrays.values() for dim in _dimensions(array)}
        return sorted(name for name in arrays if name in named | dims)

    def damaged_coordinates(self) -> list[str]:
        """Coordinates whose values no longer match the checksums written with the template
        (or cannot be read); none for stores written before the checksums existed."""
        recorded = self._group.attrs.get(COORDINATE_SUMS)
        if not isinstance(recorded, dict):
            return []
        try:
            found = self._coordinate_sums()
        except DAMAGE:
            return sorted(recorded)
        return sorted(name for name in recorded if found.get(name) != recorded[name])

    def repair(self, empty: xr.Dataset, rewrite_coordinates: bool = False) -> list[str]:
        """Rewrite damaged coordinates (all of them with ``rewrite_coordinates``) from the
        study's template and unmark damaged units (the next computation redoes them); returns
        one line per repair."""
        lines = []
        damaged = self.coordinate_names() if rewrite_coordinates else self.damaged_coordinates()
        for name in damaged:
            self._array(name)[:] = np.asarray(empty[name].values).astype(self._array(name).dtype)
            if not rewrite_coordinates:
                lines.append(f"coordinate {name!r} was damaged: rewritten from the study")
        if damaged:
            self._group.attrs[COORDINATE_SUMS] = self._coordinate_sums()
        for start, stop in self.damaged_units():
            self.clear_done(start, stop)
            lines.append(f"samples {start}-{stop - 1} were damaged: computed again")
        return lines


def _restore_metadata(path: Path, model: str, empty: xr.Dataset) -> list[str]:
    """Metadata files (``zarr.json``) of a finished template's group or arrays that are missing
    or unreadable, written again from the study's template; chunks are kept (their checksums
    then say whether they are whole). Returns the names restored (``model`` for the group)."""
    directory = path / model
    if not directory.is_dir():
        return []
    names = [str(name) for name in empty.variables]
    restored = [
        name
        for name, folder in [(model, directory), *((n, directory / n) for n in names)]
        if folder.is_dir() and not _readable_json(folder / "zarr.json")
    ]
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
    if arrays:
        with warnings.catch_warnings():  # zarr notes the folders it is about to describe
            warnings.filterwarnings("ignore", message=".*not recognized as a component")
            empty[arrays].to_zarr(
                path, group=model, mode="a", compute=False, zarr_format=3, consolidated=False
            )
    if model in restored:
        group = zarr.open_group(directory, mode="r+", zarr_format=3)
        group.attrs.update({**empty.attrs, "model_name": model, TEMPLATE_MARK: True})
    return restored


def _readable_json(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def _dimensions(array: zarr.Array) -> tuple[str, ...]:
    return tuple(getattr(array.metadata, "dimension_names", None) or ())


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


def open_results(
    path: str | Path,
    model: str | None = None,
    chunks: dict[str, int] | None = None,
    verify: bool = True,
) -> xr.Dataset:
    """Open a study store as an :class:`xarray.Dataset` (unfinished cells are NaN).

    ``model`` picks the model group when the store holds several. The study's provenance
    (study text, hash, overrides, versions) is merged into ``attrs``. Arrays are read when first
    used, as numpy (so results print as numbers); pass ``chunks={}`` for dask arrays chunked as
    stored, for stores larger than memory.

    With ``verify`` (default) every done unit is read back against its checksums and the
    coordinates against theirs first; damage raises :class:`StoreError` naming it (``patchwork
    verify`` unmarks damaged units, a run recomputes them). ``verify=False`` reads as stored.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no patchwork store here")
    try:
        return _open(path, model, chunks, verify)
    except DAMAGE as error:
        raise StoreError(
            f"{path}: the store is damaged ({type(error).__name__}: {error}); run patchwork "
            "verify, then run the study again"
        ) from None


def _open(path: Path, model: str | None, chunks: dict[str, int] | None, verify: bool) -> xr.Dataset:
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
    if not isinstance(group, zarr.Group) or not template_complete(group):
        raise StoreError(
            f"{path}/{model}: the store's template is incomplete (a run was cut short while "
            "creating it); run the study again to rewrite it"
        )
    if verify:
        _check_whole(path, model)
    dataset = xr.open_zarr(path, group=model, consolidated=False, zarr_format=3, chunks=chunks)
    dataset.attrs = {**dict(root.attrs), **dataset.attrs}
    return dataset


def _check_whole(path: Path, model: str) -> None:
    store = ResultStore(path, model, mode="r")
    coordinates = store.damaged_coordinates()
    units = store.damaged_units()
    if coordinates or units:
        parts = [f"coordinates {coordinates}"] if coordinates else []
        if units:
            first, stop = units[0]
            parts.append(f"{len(units)} finished unit(s) (samples {first}-{stop - 1}…)")
        raise StoreError(
            f"{path}/{model}: damaged {' and '.join(parts)}: they fail their checksums; run "
            "patchwork verify, then the study again to recompute them (or read anyway with "
            "verify=False / --no-verify)"
        )


def provenance(
    study_text: str, study_name: str, config_sha256: str, overrides: Sequence[str] = ()
) -> dict[str, object]:
    """Attributes recorded on the store's root: what ran (the study file's text and the ``--set``
    overrides applied to it), with which code and libraries."""
    import nnsight
    import torch
    import transformers

    from patchwork._version import __version__

    return {
        "study_name": study_name,
        "study": study_text,
        "overrides": list(overrides),
        "config_sha256": config_sha256,
        "git_commit": _git_commit(),
        "versions": {
            "patchwork": __version__,
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
    except DAMAGE as error:
        raise StoreError(
            f"{path}: its root metadata is unreadable ({error}), so patchwork cannot tell which "
            "study wrote it; run with --fresh to start over or choose another store"
        ) from None


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
