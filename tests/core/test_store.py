"""The store: round trip, chunk alignment, resume, refusal of foreign stores and paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from patchwork import StoreError, open_results, parse_study, run_study
from patchwork.errors import DataError
from patchwork.store.zarr_store import (
    ArraySpec,
    ResultStore,
    SampleCoords,
    resolve_store_path,
    template,
)

from .helpers import study_text

METRICS = ("logit_diff", "audio_probability", "normalized_effect")


def layout(samples: int, layers: int, unit_size: int, null_effect: bool = False):
    effect = ArraySpec(
        ("sample", "layer", "position_group", "component", "metric"),
        {
            "layer": list(range(layers)),
            "position_group": ["audio", "answer"],
            "component": ["residual"],
            "metric": list(METRICS),
        },
    )
    arrays = {
        "effect": effect,
        "baseline": ArraySpec(
            ("sample", "run", "metric"), {"run": ["clean", "conflict"], "metric": list(METRICS)}
        ),
    }
    if null_effect:
        arrays["null_effect"] = effect
    ids = SampleCoords(
        [f"s{i}" for i in range(samples)],
        [f"a{i}" for i in range(samples)],
        [f"v{i}" for i in range(samples)],
    )
    return template(ids, arrays, unit_size)


PROVENANCE = {"config_sha256": "abc", "study": "name: x", "study_name": "x"}


@settings(max_examples=50, deadline=None)
@given(
    samples=st.integers(1, 9),
    unit_size=st.integers(1, 4),
    data=st.data(),
)
def test_written_units_read_back_equal(tmp_path_factory, samples, unit_size, data) -> None:
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    store = ResultStore.create_or_resume(
        path, "m", layout(samples, 2, unit_size, True), unit_size, PROVENANCE
    )
    finite = st.floats(-1e6, 1e6, width=32, allow_nan=False)
    effect = data.draw(hnp.arrays(np.float32, (samples, 2, 2, 1, 3), elements=finite))
    null = data.draw(hnp.arrays(np.float32, (samples, 2, 2, 1, 3), elements=finite))
    baseline = data.draw(hnp.arrays(np.float32, (samples, 2, 3), elements=finite))
    for start in range(0, samples, unit_size):
        stop = min(start + unit_size, samples)
        store.write_unit(
            start,
            {
                "effect": effect[start:stop],
                "null_effect": null[start:stop],
                "baseline": baseline[start:stop],
            },
        )
    results = open_results(path).load()
    np.testing.assert_array_equal(results["effect"].values, effect)
    np.testing.assert_array_equal(results["null_effect"].values, null)
    np.testing.assert_array_equal(results["baseline"].values, baseline)
    assert results["done"].values.all()
    assert list(results["audio_answer"].values) == [f"a{i}" for i in range(samples)]
    assert results["effect"].dims == ("sample", "layer", "position_group", "component", "metric")
    assert results.attrs["config_sha256"] == "abc"


def test_misaligned_unit_is_refused(tmp_path: Path) -> None:
    store = ResultStore.create_or_resume(tmp_path / "s.zarr", "m", layout(8, 1, 4), 4, PROVENANCE)
    block = np.zeros((4, 1, 2, 1, 3), np.float32)
    with pytest.raises(StoreError, match="not aligned"):
        store.write_unit(2, {"effect": block, "baseline": np.zeros((4, 2, 3), np.float32)})
    assert not store.done().any()


def test_unfinished_cells_read_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = ResultStore.create_or_resume(path, "m", layout(6, 1, 3), 3, PROVENANCE)
    store.write_unit(
        0,
        {
            "effect": np.ones((3, 1, 2, 1, 3), np.float32),
            "baseline": np.ones((3, 2, 3), np.float32),
        },
    )
    results = open_results(path)
    assert results["done"].values.tolist() == [True] * 3 + [False] * 3
    assert np.isnan(results["effect"].isel(sample=slice(3, None)).values).all()
    assert (results["effect"].isel(sample=slice(0, 3)).values == 1).all()


def test_store_path_must_stay_under_the_root(tmp_path: Path) -> None:
    assert resolve_store_path(tmp_path, Path("a.zarr")) == (tmp_path / "a.zarr").resolve()
    for escape in ("../a.zarr", "/tmp/a.zarr", "x/../../a.zarr", "."):
        with pytest.raises(StoreError, match="outside the store root"):
            resolve_store_path(tmp_path, Path(escape))


def test_rerun_skips_finished_units_and_refuses_another_study(tmp_path: Path) -> None:
    study = parse_study(study_text(samples=4, unit_size=2))
    first = run_study(study, store_root=tmp_path)
    assert (first.units_run, first.units_skipped) == (2, 0)
    before = open_results(first.store).load()
    second = run_study(study, store_root=tmp_path)
    assert (second.units_run, second.units_skipped) == (0, 2)
    after = open_results(second.store).load()
    np.testing.assert_array_equal(before["effect"].values, after["effect"].values)

    other = parse_study(study_text(samples=5, unit_size=2))
    with pytest.raises(StoreError, match="different study configuration"):
        run_study(other, store_root=tmp_path)


def test_open_results_on_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no patchwork store"):
        open_results(tmp_path / "missing.zarr")


CUT_SHORT = (
    "sample", "layer", "position_group", "component", "metric", "run", "partner",
    "audio_answer", "visual_answer", "done", "effect", "null_effect", "baseline",
)  # fmt: skip


@pytest.mark.parametrize("missing", CUT_SHORT)
def test_a_store_cut_short_while_created_is_never_half_labelled(
    tmp_path: Path, missing: str
) -> None:
    """A crash while the template is written (simulated: one variable's data never written, the
    completion mark not yet set, whatever order xarray chose): reads refuse the store instead of
    showing blank labels, and the next run rewrites it to the uninterrupted run's results."""
    import shutil

    import zarr

    study = parse_study(study_text(layers=2, samples=4))
    whole = open_results(run_study(study, tmp_path / "whole").store).load()
    store = run_study(study, tmp_path / "cut").store
    group = zarr.open_group(store, mode="r+", zarr_format=3)[whole.attrs["model_name"]]
    del group.attrs["template_complete"]
    for mark in ("done", "checksum"):  # nothing had run yet
        shutil.rmtree(store / whole.attrs["model_name"] / mark / "c", ignore_errors=True)
    shutil.rmtree(store / whole.attrs["model_name"] / missing / "c", ignore_errors=True)
    with pytest.raises(StoreError, match="template is incomplete"):
        open_results(store)
    summary = run_study(study, tmp_path / "cut")
    assert summary.units_skipped == 0 and summary.units_run > 0
    again = open_results(store).load()
    for name in whole.variables:
        np.testing.assert_array_equal(again[name].values, whole[name].values, err_msg=name)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncate", "empty", "flip", "delete"])
@pytest.mark.parametrize("target", ["effect", "baseline", "position_group", "checksum"])
def test_a_damaged_finished_store_is_refused_by_reads_and_recomputed_by_a_run(
    tmp_path: Path, how: str, target: str
) -> None:
    """One damaged chunk of a finished store (data, marks or a coordinate): reads refuse it in
    one line instead of showing wrong numbers or blank labels, and the next run repairs it to
    the uninterrupted run's store, bit for bit."""
    study = parse_study(study_text(layers=2, samples=4))
    whole = open_results(run_study(study, tmp_path / "whole").store).load()
    store = run_study(study, tmp_path / "hurt").store
    chunks = sorted((store / whole.attrs["model_name"] / target / "c").rglob("*"))
    _damage([chunk for chunk in chunks if chunk.is_file()][0], how)
    with pytest.raises(StoreError, match="damaged|fail their checksums"):
        open_results(store)
    summary = run_study(study, tmp_path / "hurt")
    # a damaged coordinate is rewritten from the study; damaged data are computed again
    assert (summary.units_run == 0) == (target == "position_group")
    again = open_results(store).load()
    for name in whole.variables:
        np.testing.assert_array_equal(again[name].values, whole[name].values, err_msg=name)


@pytest.mark.parametrize("lost", ["effect", "done", "sample", "position_group", "group"])
@pytest.mark.parametrize("how", ["delete", "garble"])
def test_lost_metadata_is_written_again_and_no_finished_unit_is_lost(
    tmp_path: Path, lost: str, how: str
) -> None:
    study = parse_study(study_text(layers=2, samples=4))
    whole = open_results(run_study(study, tmp_path / "whole").store).load()
    store = run_study(study, tmp_path / "hurt").store
    model = whole.attrs["model_name"]
    metadata = store / model / ("" if lost == "group" else lost) / "zarr.json"
    if how == "delete":
        metadata.unlink()
    else:
        metadata.write_text(metadata.read_text()[:40])
    summary = run_study(study, tmp_path / "hurt")
    assert summary.units_run == 0 and summary.units_skipped > 0  # nothing recomputed
    again = open_results(store).load()
    for name in whole.variables:
        np.testing.assert_array_equal(again[name].values, whole[name].values, err_msg=name)


@pytest.mark.parametrize("verify_first", [False, True])
def test_group_metadata_of_another_node_type_is_written_again_not_the_store(
    tmp_path: Path, verify_first: bool
) -> None:
    """A group ``zarr.json`` that parses but describes an array is lost metadata: verify keeps
    every unit and the run rewrites it bit for bit (before: the template was rewritten and every
    finished unit computed again)."""
    from patchwork.store.verify import verify_store

    study = parse_study(study_text(layers=2, samples=4))
    store = run_study(study, tmp_path).store
    model = open_results(store).attrs["model_name"]
    metadata = store / model / "zarr.json"
    written = metadata.read_bytes()
    metadata.write_text('{"zarr_format": 3, "node_type": "array", "shape": "x"}')
    if verify_first:
        assert verify_store(store).metadata_lost == {model: [model]}
    summary = run_study(study, tmp_path)
    assert summary.units_run == 0 and summary.units_skipped > 0
    assert metadata.read_bytes() == written


def test_a_full_disk_is_one_line_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from patchwork.store.zarr_store import ResultStore

    study = parse_study(study_text(layers=2, samples=4).replace("unit_size: 2", "unit_size: 1"))
    whole = open_results(run_study(study, tmp_path / "whole").store).load()
    write = ResultStore.write_unit
    calls = []

    def filling(self, start, arrays):
        calls.append(start)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, start, arrays)

    monkeypatch.setattr(ResultStore, "write_unit", filling)
    with pytest.raises(StoreError, match=r"the disk is full \(.* MiB free; a unit needs up to"):
        run_study(study, tmp_path / "full")
    monkeypatch.setattr(ResultStore, "write_unit", write)
    summary = run_study(study, tmp_path / "full")
    assert summary.units_skipped == 2
    again = open_results(summary.store).load()
    for name in whole.variables:
        np.testing.assert_array_equal(again[name].values, whole[name].values, err_msg=name)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_while_generated_media_are_written_keeps_its_errno() -> None:
    """A generator's wav written on a full disk raises ENOSPC, which a run reports as a full disk
    in one line (before: libsndfile's "System error", a traceback)."""
    import errno

    from patchwork.data import media

    with pytest.raises(OSError) as raised:
        media.save_audio(Path("/dev/full"), np.zeros(160, dtype=np.float32))
    assert raised.value.errno == errno.ENOSPC


def test_fresh_removes_a_damaged_store(tmp_path: Path) -> None:
    """--fresh is the way out of a damaged store: it must not verify the store it removes."""
    study = parse_study(study_text(layers=2, samples=4))
    store = run_study(study, tmp_path).store
    chunk = next(
        path for path in (store / "random_init" / "done" / "c").rglob("*") if path.is_file()
    )
    chunk.write_bytes(b"")
    notes: list[str] = []
    summary = run_study(study, tmp_path, fresh=True, on_note=notes.append)
    assert summary.units_skipped == 0
    assert any("damaged; finished samples unknown" in note for note in notes)
    assert bool(open_results(store)["done"].all())


@pytest.mark.parametrize(
    ("declared", "nan_at", "intact"),
    [
        ({"metric": ["normalized_effect"]}, 2, True),  # NaN where declared
        ({"metric": ["normalized_effect"]}, 0, False),  # a logit difference lost
        (False, 2, False),  # declared finite everywhere
        (True, 0, True),  # NaN allowed anywhere
    ],
)
def test_a_finished_unit_holds_nan_only_where_its_array_declares(
    tmp_path: Path, declared: object, nan_at: int, intact: bool
) -> None:
    """A unit whose checksums match but that holds NaN where its array declares none (a method
    that lost a value) is damaged: verify and resume compute it again."""
    spec = ArraySpec(("sample", "metric"), {"metric": list(METRICS)}, may_be_nan=declared)  # type: ignore[arg-type]
    coords = SampleCoords(["s0", "s1"], ["a", "a"], ["b", "b"])
    path = tmp_path / "store.zarr"
    empty = template(coords, {"score": spec}, unit_size=2)
    store = ResultStore.create_or_resume(path, "m", empty, 2, {"config_sha256": "x"})
    values = np.ones((2, 3), dtype=np.float32)
    values[1, nan_at] = np.nan
    store.write_unit(0, {"score": values})  # checksums of these very values
    assert store.unit_intact(0, 2) is intact
    assert store.damaged_units() == ([] if intact else [(0, 2)])


@pytest.mark.parametrize("which", ["store", "root"])
def test_a_store_path_that_is_a_file_is_refused_in_one_line(tmp_path: Path, which: str) -> None:
    study = parse_study(study_text(samples=2))
    root = tmp_path / "root"
    if which == "root":
        root.write_text("a file")
    else:
        root.mkdir()
        (root / "tiny.zarr").write_text("a file")
    with pytest.raises(StoreError, match=r"is a file, not a folder: choose another store"):
        run_study(study, store_root=root)


def test_a_unit_with_nan_where_none_is_declared_is_refused_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN inputs or weights give NaN logit differences: the unit is refused in one line naming
    its samples, and nothing is written (before: written, then unmarked by verify and computed
    again for ever)."""
    from patchwork.engine import runner as engine

    study = parse_study(study_text(samples=4, unit_size=2))
    real = engine.Prepared.unit

    def poisoned(self, start: int, stop: int):  # noqa: ANN001, ANN202
        arrays, groups = real(self, start, stop)
        if start == 2:
            arrays["effect"][1, 0, 0, 0, 0] = np.nan  # logit_diff of the unit's second sample
        return arrays, groups

    monkeypatch.setattr(engine.Prepared, "unit", poisoned)
    with pytest.raises(DataError, match=r"samples s00003: effect not finite"):
        run_study(study, store_root=tmp_path)
    assert open_results(tmp_path / "tiny.zarr")["done"].values.tolist() == [True] * 2 + [False] * 2
