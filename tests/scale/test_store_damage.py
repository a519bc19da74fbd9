"""A store never loses finished work and never writes outside itself (issue 28, item 4).

Each case damages a copy of one finished store the way a crash, a full disk or a hostile user
would, then checks what the next ``verify`` or ``run`` keeps, recomputes, says and writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from patchwork import StoreError, open_results, parse_study, run_study
from patchwork.cli import app
from patchwork.store.verify import verify_store

from ..core.helpers import study_text

TEXT = study_text(layers=2, samples=8, unit_size=2)
cli = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    run_study(parse_study(TEXT), root)
    return root


@pytest.fixture
def store(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished store (``tmp_path / 'tiny.zarr'``)."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path / "tiny.zarr"


def every_file(store: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(store)): path.read_bytes()
        for path in sorted(store.rglob("*"))
        if path.is_file()
    }


def one_line(*arguments: str | Path) -> tuple[int, str]:
    result = cli.invoke(app, [str(argument) for argument in arguments])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def test_a_truncated_done_chunk_is_recovered_from_the_units_own_data(store: Path) -> None:
    before = every_file(store)
    chunk = store / "random_init" / "done" / "c" / "1"
    chunk.write_bytes(chunk.read_bytes()[:3])
    notes: list[str] = []
    summary = run_study(parse_study(TEXT), store.parent, on_note=notes.append)
    assert (summary.units_run, summary.units_skipped) == (0, 4)
    assert notes == [
        "samples 2-3: done mark unreadable, recovered from the unit's data and checksums "
        "(finished: kept)"
    ]
    assert every_file(store) == before  # the mark is written again as it was


def test_verify_recovers_a_torn_mark_and_unmarks_only_an_unfinished_unit(store: Path) -> None:
    effect = store / "random_init" / "effect" / "c" / "2" / "0" / "0" / "0" / "0"
    effect.unlink()  # the unit's data never landed: its mark cannot be trusted
    for index in ("1", "2"):
        chunk = store / "random_init" / "done" / "c" / index
        chunk.write_bytes(b"torn")
    report = verify_store(store)
    assert report.marks_restored["random_init"] == [
        "samples 2-3: done mark unreadable, recovered from the unit's data and checksums "
        "(finished: kept)",
        "samples 4-5: done mark unreadable, recovered from the unit's data and checksums "
        "(not finished: computed again)",
    ]
    assert open_results(store)["done"].values.tolist() == [True] * 4 + [False] * 2 + [True] * 2
    assert run_study(parse_study(TEXT), store.parent).units_run == 1


@pytest.mark.parametrize("node", ["effect", "done", "baseline"])
def test_verify_first_never_unmarks_units_when_metadata_is_lost(store: Path, node: str) -> None:
    """The error message advises verify; verify must then keep every finished unit."""
    before = every_file(store)
    (store / "random_init" / node / "zarr.json").unlink()
    code, line = one_line("verify", store)
    assert code == 0 and f"the metadata (zarr.json) of '{node}' is lost" in line
    assert "finished units are kept" in line and "needs the study" in line
    summary = run_study(parse_study(TEXT), store.parent)
    assert summary.units_run == 0
    assert every_file(store) == before  # metadata written again byte for byte
    assert verify_store(store).ok


@pytest.mark.parametrize("node", ["effect", "random_init"])
def test_restored_metadata_is_bit_identical_attributes_included(store: Path, node: str) -> None:
    before = every_file(store)
    metadata = store / "random_init" / ("" if node == "random_init" else node) / "zarr.json"
    metadata.write_text("{garbled")
    run_study(parse_study(TEXT), store.parent)
    after = every_file(store)
    assert after.keys() == before.keys()
    group = "random_init/zarr.json"
    if node == "random_init":  # written again from the study: the same attributes
        assert open_results(store).attrs["model_name"] == "random_init"
        after.pop(group), before.pop(group)
    assert after == before


def test_no_write_follows_a_symbolic_link_out_of_the_store(store: Path, tmp_path: Path) -> None:
    zarr.open_array(store / "random_init" / "done", mode="r+")[:2] = False  # a unit to compute
    outside = tmp_path / "outside"
    chunks = store / "random_init" / "effect" / "c"
    shutil.move(str(chunks), str(outside))
    chunks.symlink_to(outside)
    before = every_file(outside)
    for attempt in (
        lambda: run_study(parse_study(TEXT), store.parent),
        lambda: verify_store(store),
    ):
        with pytest.raises(StoreError, match="is a symbolic link; patchwork never writes"):
            attempt()
    assert every_file(outside) == before


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("zarr.json", "its root metadata is unreadable"),
        ("random_init/zarr.json", "the metadata (zarr.json) of 'random_init' is lost"),
        ("random_init/effect/zarr.json", "the metadata (zarr.json) of 'effect' is lost"),
    ],
)
@pytest.mark.parametrize("command", ["status", "verify"])
def test_status_and_verify_say_damaged_metadata_in_one_line(
    store: Path, damage: str, expected: str, command: str
) -> None:
    (store / damage).write_text("{garbled")
    code, line = one_line(command, store)
    if command == "status" or damage == "zarr.json":
        assert code == 2 and line.startswith("error: ") and line.count("error") == 1
    assert expected in line


def test_status_reads_every_method_store_without_naming_its_arrays(store: Path) -> None:
    code, line = one_line("status", store)
    assert code == 0
    assert "random_init: 8/8 samples done (complete)" in line
    assert "effect (layer 2 × position_group 5 × component 3 × metric 3)" in line
    assert np.isfinite(open_results(store)["effect"].sel(metric="logit_diff")).all()


def test_a_removed_checksum_array_costs_its_units_never_their_verification(
    store: Path, finished: Path
) -> None:
    """Without its checksums a store cannot tell whole data from damaged data: the array is
    written again and every unit computed again (before: verify said ok and a changed effect
    went unnoticed)."""
    before = every_file(finished / "tiny.zarr")
    shutil.rmtree(store / "random_init" / "checksum")
    code, line = one_line("verify", store)
    assert "the metadata (zarr.json) of 'checksum' is lost" in line
    summary = run_study(parse_study(TEXT), store.parent)
    assert summary.units_run == 4
    assert every_file(store) == before


@pytest.mark.parametrize("array", ["done", "effect"])
def test_an_array_removed_whole_is_written_again_by_the_run(
    store: Path, finished: Path, array: str
) -> None:
    """A lost done array is recovered from the checksums (no unit computed); a lost data array
    costs exactly its units. Never a refusal that only --fresh can answer."""
    before = every_file(finished / "tiny.zarr")
    shutil.rmtree(store / "random_init" / array)
    summary = run_study(parse_study(TEXT), store.parent)
    assert summary.units_run == (0 if array == "done" else 4)
    assert every_file(store) == before


def test_verify_waits_for_no_run_it_is_refused_while_one_writes(store: Path) -> None:
    from patchwork.engine.lock import store_lock

    before = every_file(store)
    with store_lock(store):
        code, line = one_line("verify", store)
    assert code == 2 and "being written by another run" in line
    assert every_file(store) == before


@pytest.mark.parametrize("inside", ["", "random_init"])
def test_a_folder_of_the_users_inside_the_store_is_not_lost_metadata(
    store: Path, inside: str
) -> None:
    """plot --out STORE/figs once made every later command refuse the store."""
    (store / inside / "figs").mkdir()
    (store / inside / "figs" / "heatmap.png").write_bytes(b"png")
    code, line = one_line("status", store)
    assert code == 0 and "8/8 samples done (complete)" in line


def test_lost_metadata_of_an_array_without_chunks_is_written_again(
    store: Path, finished: Path
) -> None:
    """An array whose values all equal its fill value has no chunk files: losing its metadata
    left an empty folder that was taken for a user's, and the run failed with KeyError (found by
    the damage fuzzer in CI)."""
    bare = [
        folder.name
        for folder in (store / "random_init").iterdir()
        if folder.is_dir() and not (folder / "c").exists()
    ]
    assert bare  # the store this test damages has such an array ('partner')
    before = every_file(finished / "tiny.zarr")
    for name in bare:
        (store / "random_init" / name / "zarr.json").unlink()
    code, line = one_line("verify", store)
    assert code == 0 and all(f"'{name}'" in line for name in bare), line
    summary = run_study(parse_study(TEXT), store.parent)
    assert summary.units_run == 0
    assert every_file(store) == before
