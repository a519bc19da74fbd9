"""The result store: one Zarr v3 group per study, one subgroup per model.

Layout (``store/<study>.zarr``)::

    /            attrs: schema_version, study_name, study (YAML text), config_sha256, git_commit,
                        versions, created
    /<model>/    attrs: model_name, coordinate_checksums, metadata_checksums (each array's
                        zarr.json), store_attributes (the root's, to rebuild it), template_complete
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
import itertools
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
from patchwork.store.bounded import bounded_store, open_store_group
from patchwork.store.metadata import (
    COORDINATE_SUMS,
    DAMAGE,
    MARKS,
    METADATA_SUMS,
    RECORDS,
    ROOT_RECORD,
    TEMPLATE_MARK,
    metadata_line,
    metadata_sums,
    recorded_root,
    refuse_links,
    refuse_special_files,
    remove_folder_in_place,
    restore_metadata,
    restore_root,
    root_line,
    unreadable_metadata,
)

SCHEMA_VERSION = 1

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")
warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")


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
    may_be_nan: bool | Mapping[str, Sequence[Any]] = True
    """Which values may be NaN in a finished unit: anywhere (True), nowhere (False), or only at
    the listed coordinates of some dimensions (``{"metric": ["normalized_effect"]}``). Stored as
    the array's ``may_be_nan`` attribute; a finished unit with a NaN elsewhere is damaged."""

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
        attrs: dict[str, Any] = {"long_name": spec.long_name, "units": spec.units}
        attrs = {key: value for key, value in attrs.items() if value}
        if spec.may_be_nan is not True:
            nan = spec.may_be_nan
            attrs[NAN_ATTRIBUTE] = nan if nan is False else {d: list(v) for d, v in nan.items()}
        variables[name] = (
            spec.dims,
            da.full(shape, fill, dtype=spec.dtype, chunks=(chunk, *shape[1:])),
            attrs,
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


#: An array's declaration of where a finished unit may hold NaN (:attr:`ArraySpec.may_be_nan`).
NAN_ATTRIBUTE = "may_be_nan"


def template_complete(group: zarr.Group) -> bool:
    """Whether a model group's template was written to the end: it carries :data:`TEMPLATE_MARK`
    (a store other tools wrote counts as complete once a unit is done; in a store a study run
    wrote, a group without the mark whose units may have finished is lost metadata,
    :func:`~patchwork.store.metadata.unreadable_metadata`)."""
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
        group = open_store_group(self.path, mode)[model]
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
        if (path / "zarr.json").exists() or recorded_root(path) is not None:
            refuse_special_files(path)  # before anything of the store is opened
        if (path / model).exists() and not (path / model).is_dir():
            raise StoreError(
                f"{path / model} is a file where the store keeps the results of model {model!r}; "
                "move it out of the store (or run with --fresh to start over)"
            )
        restored_root = restore_root(path, _root_attributes(provenance))
        if (path / "zarr.json").exists():
            existing = root_attributes(path)
            if existing.get("config_sha256") != provenance["config_sha256"]:
                changes = describe(existing) if describe else ""
                raise StoreError(
                    f"{path} holds results of a different study configuration"
                    f"{' (' + changes + ')' if changes else ''}; run with --fresh to start over "
                    "(it removes the old results) or choose another store"
                )
            _refuse_other_weights(path, existing, provenance)
            refuse_links(path)
            restored = restore_metadata(path, model, empty, lambda: _template_records(path, model))
            root = open_store_group(path)
            group = root.get(model)
            if isinstance(group, zarr.Group) and template_complete(group):
                store = cls(path, model)
                store.check_layout(empty, unit_size)
                repairs = store.repair(empty, rewrite_coordinates=bool(restored))
                store.repairs = [
                    *([restored_root] if restored_root else []),
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
            zarr.open_group(path, mode="w", zarr_format=3, attributes=_root_attributes(provenance))
        empty.attrs["model_name"] = model
        empty.to_zarr(path, group=model, mode="w", compute=False, zarr_format=3, consolidated=False)
        store = cls(path, model)
        store._group.attrs.update(_template_records(path, model))
        # written last: a template without the mark was cut short and is written again
        store._group.attrs[TEMPLATE_MARK] = True
        return store

    def check_layout(self, empty: xr.Dataset, unit_size: int) -> None:
        """Every array of the study's template is stored with its shape and unit chunks."""
        for name in (*empty.data_vars, *MARKS):
            stored = self._group.get(name)
            expected = empty[name]
            chunk = min(unit_size, empty.sizes["sample"])
            if (
                not isinstance(stored, zarr.Array)
                or stored.shape != expected.shape
                or stored.chunks[0] != chunk
            ):
                raise StoreError(
                    f"{self.path}/{self.model}: stored array {name!r} differs from the study's "
                    "layout; run with --fresh to start over"
                )

    @property
    def unit_size(self) -> int:
        return int(self._array("done").chunks[0])

    def units(self) -> list[tuple[int, int]]:
        """Every unit's sample range [start, stop)."""
        total, size = int(self._array("done").shape[0]), self.unit_size
        return [(start, min(start + size, total)) for start in range(0, total, size)]

    def marks(self) -> list[bool | None]:
        """Each unit's done mark as stored: True, False, or None where its chunk of ``done``
        cannot be read (torn or truncated)."""
        array, marks = self._array("done"), list[bool | None]()
        for start, stop in self.units():
            try:
                values = np.asarray(array[start:stop], dtype=bool)
            except DAMAGE:
                marks.append(None)
            else:
                marks.append(bool(values.all()) if values.any() else False)
        return marks

    def done(self) -> np.ndarray:
        """Boolean mask (sample,) of samples whose unit finished. A unit whose mark cannot be
        read, or whose mark is lost while its checksums were written, counts as finished when its
        own data read back whole against those checksums (:meth:`unit_intact`): a damaged mark
        never costs a finished unit."""
        done = np.zeros(int(self._array("done").shape[0]), dtype=bool)
        for (start, stop), mark in zip(self.units(), self.marks(), strict=True):
            if mark is None or (not mark and self._checksums_written(start, stop)):
                done[start:stop] = self.unit_intact(start, stop)
            else:
                done[start:stop] = mark
        return done

    def _checksums_written(self, start: int, stop: int) -> bool:
        """Whether a unit's checksums were written (a unit never written reads zeros)."""
        try:
            return bool(np.asarray(self._array("checksum")[start:stop]).all())
        except DAMAGE:
            return False

    def restore_marks(self) -> list[str]:
        """Write done marks again where :meth:`done` recovered a different state than the one
        stored (an unreadable mark, or a lost mark of a unit whose data are whole); one line
        each."""
        lines = []
        done = self.done()
        for (start, stop), mark in zip(self.units(), self.marks(), strict=True):
            if mark is None or mark != bool(done[start]):
                self._write("done", start, stop, done[start:stop])
                state = "finished: kept" if done[start] else "not finished: computed again"
                lost = "unreadable" if mark is None else "lost"
                lines.append(
                    f"samples {start}-{stop - 1}: done mark {lost}, recovered from the unit's "
                    f"data and checksums ({state})"
                )
        return lines

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
            self._write(name, start, stop, values.astype(self._array(name).dtype))
        self._write("checksum", start, stop, sample_checksums(arrays))
        self._write("done", start, stop, True)

    def _write(self, name: str, start: int, stop: int, values: Any) -> None:
        """``name[start:stop] = values``, once no folder stands where one of its chunks goes."""
        array = self._array(name)
        size = array.chunks[0]
        rows = range(start // size, -(-stop // size))
        for index in itertools.product(rows, *(range(count) for count in array.cdata_shape[1:])):
            # zarr can neither read nor replace a chunk where a folder stands: it read as damage
            chunk = self.path / self.model / name / array.metadata.encode_chunk_key(index)
            remove_folder_in_place(chunk, "a chunk of the store")
        array[start:stop] = values

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
        self._write("done", start, stop, False)

    def unit_intact(self, start: int, stop: int) -> bool:
        """Whether a done unit reads back whole: every chunk decodes, the checksums recorded when
        it was written match, and no array holds NaN where it declares none
        (:attr:`ArraySpec.may_be_nan`)."""
        try:
            arrays = self.read_unit(start, stop)
            recorded = np.asarray(self._array("checksum")[start:stop], dtype=np.int64)
            return np.array_equal(sample_checksums(arrays), recorded) and not self.nonfinite(arrays)
        except DAMAGE:
            return False

    def nonfinite(self, arrays: Mapping[str, np.ndarray]) -> list[tuple[str, int]]:
        """(array, sample index within ``arrays``) of each NaN or infinity where the array declares
        none (:attr:`ArraySpec.may_be_nan`): what a unit must not write."""
        found = []
        for name, values in arrays.items():
            values = np.asarray(values)
            if values.dtype.kind != "f":
                continue
            flat = values.reshape(len(values), -1)[:, self._must_be_finite(name).reshape(-1)]
            found += [(name, int(row)) for row in np.flatnonzero(~np.isfinite(flat).all(axis=1))]
        return found

    def _must_be_finite(self, name: str) -> np.ndarray:
        """Boolean mask over an array's non-sample dimensions: where its values must be finite."""
        array = self._array(name)
        declared = array.attrs.get(NAN_ATTRIBUTE, True)
        dims = _dimensions(array)[1:]
        mask = np.full(array.shape[1:], declared is False, dtype=bool)
        if isinstance(declared, dict):
            mask[...] = True
            for axis, dim in enumerate(dims):
                if dim in declared:
                    labels = [str(label) for label in np.asarray(self._array(dim)[:])]
                    allowed = np.isin(labels, [str(label) for label in declared[dim]])
                    shape = [1] * len(dims)
                    shape[axis] = len(labels)
                    mask &= ~allowed.reshape(shape)
        return mask

    def damaged_units(self) -> list[tuple[int, int]]:
        """The done units that do not read back whole (:meth:`unit_intact`); none where the store
        keeps no checksums (written by other tools)."""
        if "checksum" not in self._group:
            return []
        done = self.done()
        size, total = self.unit_size, len(done)
        return [
            (start, min(start + size, total))
            for start in range(0, total, size)
            if done[start : start + size].any()
            and not (done[start : start + size].all() and self.unit_intact(start, start + size))
        ]

    def _coordinate_sums(self) -> dict[str, int]:
        return {name: self._coordinate_sum(name) for name in self.coordinate_names()}

    def _coordinate_sum(self, name: str) -> int:
        values = np.asarray(self._array(name)[:])
        return zlib.crc32("\x1f".join(map(str, values.ravel())).encode())

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
        (or cannot be read), or that the checksums do not name; none for stores other tools
        wrote (no checksums)."""
        recorded = self._group.attrs.get(COORDINATE_SUMS)
        if not isinstance(recorded, dict):
            return []
        found: dict[str, int | None] = {}
        for name in self.coordinate_names():
            try:
                found[name] = self._coordinate_sum(name)
            except DAMAGE:
                found[name] = None
        return sorted(
            name
            for name in {*recorded, *found}
            if found.get(name) is None or found[name] != recorded.get(name)
        )

    def repair(self, empty: xr.Dataset, rewrite_coordinates: bool = False) -> list[str]:
        """Rewrite damaged coordinates (all of them with ``rewrite_coordinates``) from the
        study's template and unmark damaged units (the next computation redoes them); returns
        one line per repair. Unreadable done marks are then written again from the units' own
        data (:meth:`restore_marks`, which reads coordinates to tell where NaN is allowed)."""
        lines = []
        damaged = self.coordinate_names() if rewrite_coordinates else self.damaged_coordinates()
        for name in damaged:
            values = np.asarray(empty[name].values).astype(self._array(name).dtype)
            self._write(name, 0, len(values), values)
            if not rewrite_coordinates:
                lines.append(f"coordinate {name!r} was damaged: rewritten from the study")
        if damaged:
            self._group.attrs[COORDINATE_SUMS] = self._coordinate_sums()
        lines += self.restore_marks()
        for start, stop in self.damaged_units():
            self.clear_done(start, stop)
            lines.append(f"samples {start}-{stop - 1} were damaged: computed again")
        return lines


#: Root attribute: the fingerprint of the weights a store's results come from
#: (:func:`~patchwork.models.checkpoint.weights_fingerprint`), recorded at its creation.
WEIGHTS_FINGERPRINT = "weights_sha256"


def _refuse_other_weights(
    path: Path, existing: Mapping[str, Any], provenance: Mapping[str, object]
) -> None:
    """Refuse to resume a store with weights other than those its results come from (another
    checkpoint put in the same folder): one store would mix two models. Stores written before
    the fingerprint was recorded are not checked."""
    stored, running = existing.get(WEIGHTS_FINGERPRINT), provenance.get(WEIGHTS_FINGERPRINT)
    if stored is not None and running is not None and stored != running:
        raise StoreError(
            f"{path} holds results of other weights than the model's now (its checkpoint "
            "changed since the store was started); resuming would mix two models in one store: "
            "run with --fresh to start over (it removes the old results) or choose another store"
        )


def _root_attributes(provenance: Mapping[str, object]) -> dict[str, Any]:
    """The attributes a new store's root is written with."""
    return {**provenance, "created": _now(), "schema_version": SCHEMA_VERSION}


def _template_records(path: Path, model: str) -> dict[str, Any]:
    """What a model group records of its template once written: its coordinates' checksums,
    its arrays' metadata checksums and the store root's attributes."""
    store = ResultStore(path, model)
    return {
        COORDINATE_SUMS: store._coordinate_sums(),
        METADATA_SUMS: metadata_sums(path / model),
        ROOT_RECORD: root_attributes(path),
    }


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
    root_attributes(path)  # a store, whose root metadata read
    try:
        return _open(path, model, chunks, verify)
    except DAMAGE as error:
        raise damaged_store(path, error) from None


def damaged_store(path: Path, error: BaseException) -> StoreError:
    """The one line for a store whose chunks or metadata failed to read (one of
    :data:`~patchwork.store.metadata.DAMAGE`): what failed, and what repairs it."""
    return StoreError(
        f"{path}: the store is damaged ({type(error).__name__}: {error}); run patchwork "
        "verify, then run the study again"
    )


def store_models(path: str | Path) -> list[str]:
    """The model groups of a store, by their folders (a group whose metadata is lost included,
    a user's folder such as figures not), once its root metadata reads; :class:`StoreError` in
    one line otherwise."""
    path = Path(path)
    root_attributes(path)
    return sorted(
        entry.name
        for entry in path.iterdir()
        if entry.is_dir() and ((entry / "zarr.json").exists() or (entry / "done").is_dir())
    )


def _open(path: Path, model: str | None, chunks: dict[str, int] | None, verify: bool) -> xr.Dataset:
    root = open_store_group(path)
    for name in store_models(path) if model is None else [model]:
        lost = unreadable_metadata(path, name)
        if lost:
            raise StoreError(metadata_line(path, name, lost))
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
    _check_marks(path, model)
    if verify:
        _check_whole(path, model)
    dataset = xr.open_zarr(
        bounded_store(path), group=model, consolidated=False, zarr_format=3, chunks=chunks
    )
    # by name, not in the order zarr happened to gather the group's members (concurrently)
    dataset = dataset[sorted(map(str, dataset.data_vars))]
    records = (*RECORDS, TEMPLATE_MARK)  # the store's own
    dataset.attrs = {
        key: value
        for key, value in {**dict(root.attrs), **dataset.attrs}.items()
        if key not in records
    }
    return dataset


def _check_marks(path: Path, model: str) -> None:
    """Every unit's done mark reads (a torn or garbled chunk of ``done`` does not): a reader,
    checking or not, counts finished samples by them."""
    store = ResultStore(path, model, mode="r")
    torn = [unit for unit, mark in zip(store.units(), store.marks(), strict=True) if mark is None]
    if torn:
        first, stop = torn[0]
        raise StoreError(
            f"{path}/{model}: the done marks of {len(torn)} unit(s) (samples {first}-{stop - 1}…) "
            "cannot be read (a damaged chunk); run patchwork verify, which writes them again "
            "from the units' own data (or run the study again)"
        )


def _check_whole(path: Path, model: str) -> None:
    store = ResultStore(path, model, mode="r")
    coordinates = store.damaged_coordinates()
    if coordinates:  # units are judged with them (where NaN is allowed), so not before
        raise StoreError(
            f"{path}/{model}: damaged coordinates {coordinates}: they fail their checksums; run "
            "the study again to rewrite them from the study, keeping every finished unit (or "
            "read anyway with verify=False / --no-verify)"
        )
    units = store.damaged_units()
    if units:
        first, stop = units[0]
        raise StoreError(
            f"{path}/{model}: damaged {len(units)} finished unit(s) (samples {first}-{stop - 1}…): "
            "they fail their checksums; run patchwork verify, then the study again to recompute "
            "them (or read anyway with verify=False / --no-verify)"
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


def root_attributes(path: Path) -> dict[str, object]:
    """The store root's attributes; :class:`StoreError` in one line when there is no store, or
    its root metadata cannot be read (saying whether a run can write it again)."""
    for store in (path.parent, path.parent.parent):  # a model group, or an array of one
        if store != path and recorded_root(store) is not None:
            raise StoreError(f"{path}: a part of the store {store}, not a store; give {store}")
    record = recorded_root(path)
    if not (path / "zarr.json").exists() and record is None:
        raise StoreError(f"{path}: no patchwork store here")
    refuse_special_files(path)  # a FIFO would block the read below
    try:
        attributes: dict[str, object] = dict(open_store_group(path).attrs)
    except DAMAGE as error:
        if record is not None:
            raise StoreError(root_line(path)) from None
        raise StoreError(
            f"{path}: its root metadata is unreadable ({error}), so patchwork cannot tell which "
            "study wrote it; run with --fresh to start over or choose another store"
        ) from None
    if record is not None and attributes != record:
        raise StoreError(root_line(path))
    return attributes


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
