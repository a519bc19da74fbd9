"""A store never loses finished work and never writes outside itself (issue 28, item 4).

Each case damages a copy of one finished store the way a crash, a full disk or a hostile user
would, then checks what the next ``verify`` or ``run`` keeps, recomputes, says and writes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from patchwork import StoreError, open_results, parse_study, run_study
from patchwork.cli import _register_subcommands, app
from patchwork.store.bounded import chunk_limit
from patchwork.store.verify import verify_store

from ..core.helpers import study_text

TEXT = study_text(layers=2, samples=8, unit_size=2)
cli = CliRunner()
_register_subcommands()


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
    # a group's attributes are written again in the template's order, from the study and the
    # arrays' own metadata
    assert every_file(store) == before


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
        ("zarr.json", "root metadata (zarr.json) is lost, unreadable or not what its model group"),
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
    assert "the array 'checksum' is missing" in line
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


def edit_metadata(path: Path, field: str) -> None:
    """Make an array's ``zarr.json`` disagree with the template: still valid JSON and Zarr."""
    metadata = json.loads(path.read_text())
    if field == "shape":
        metadata["shape"][1] += 1
    elif field == "chunk_shape":
        metadata["chunk_grid"]["configuration"]["chunk_shape"][0] *= 2
    else:
        metadata["attributes"]["units"] = "V"
    path.write_text(json.dumps(metadata, indent=2))


def edit_attributes(metadata: Path, edit) -> None:
    """Rewrite a ``zarr.json`` validly with its attributes changed by ``edit(attributes)``."""
    document = json.loads(metadata.read_text())
    edit(document["attributes"])
    metadata.write_text(json.dumps(document, indent=2))


GROUP_EDITS = {
    "attributes removed": lambda attributes: attributes.clear(),
    "template mark removed": lambda attributes: attributes.pop("template_complete"),
    "template mark false": lambda attributes: attributes.update(template_complete=False),
    "metadata checksums removed": lambda attributes: attributes.pop("metadata_checksums"),
    "coordinate checksums removed": lambda attributes: attributes.pop("coordinate_checksums"),
    "root record removed": lambda attributes: attributes.pop("store_attributes"),
    "model name changed": lambda attributes: attributes.update(model_name="other"),
    "a metadata checksum changed": lambda attributes: attributes["metadata_checksums"].update(
        effect=1
    ),
    "a metadata checksum removed": lambda attributes: attributes["metadata_checksums"].pop(
        "effect"
    ),
    # fourth campaign, attacks 1486-1514
    "metadata checksums emptied": lambda attributes: attributes["metadata_checksums"].clear(),
    "metadata checksums a string": lambda attributes: attributes.update(metadata_checksums="x"),
    "coordinate checksums emptied": lambda attributes: attributes["coordinate_checksums"].clear(),
    "root record emptied": lambda attributes: attributes["store_attributes"].clear(),
    "template mark a string": lambda attributes: attributes.update(template_complete="true"),
    "model name a number": lambda attributes: attributes.update(model_name=1),
    "an attribute added": lambda attributes: attributes.update(note="mine"),
}


@pytest.mark.parametrize("field", ["shape", "chunk_shape", "attributes"])
def test_metadata_that_disagrees_with_the_template_is_damaged_metadata(
    store: Path, field: str
) -> None:
    """A lying shape or chunk shape once passed verify (which then unmarked every unit), made
    every run refuse the store and status print a traceback."""
    before = every_file(store)
    edit_metadata(store / "random_init" / "effect" / "zarr.json", field)
    expected = "the metadata (zarr.json) of 'effect' is lost, unreadable or not what the store"
    code, line = one_line("verify", store)
    assert code == 0 and expected in line and "needs the study" in line
    code, line = one_line("status", store)
    assert code == 2 and line.startswith("error: ") and expected in line
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before  # written again byte for byte, attributes included
    assert verify_store(store).ok


@pytest.mark.parametrize("checksums", ["metadata checksums removed", "metadata checksums emptied"])
@pytest.mark.parametrize("field", ["shape", "chunk_shape", "attributes"])
def test_array_metadata_altered_with_the_groups_checksums_gone_is_written_again(
    store: Path, field: str, checksums: str
) -> None:
    """With nothing left that records the arrays' metadata, the run writes every array's
    metadata again from the study's template: the altered one is not kept as found (fourth
    campaign, attacks 1302-1485: emptied checksums vouched for no array, and the run kept each
    altered one)."""
    before = every_file(store)
    edit_attributes(store / "random_init" / "zarr.json", GROUP_EDITS[checksums])
    edit_metadata(store / "random_init" / "effect" / "zarr.json", field)
    code, line = one_line("status", store)
    assert code == 2 and line.startswith("error: ")
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before


@pytest.mark.parametrize("damage", ["remove", "garble", "config hash"])
def test_a_lost_root_metadata_costs_no_finished_unit(store: Path, damage: str) -> None:
    """The root zarr.json is written again from the record the model group keeps (before: the
    run refused the store, and --fresh, the advice, recomputed every unit)."""
    before = every_file(store)
    root = store / "zarr.json"
    if damage == "remove":
        root.unlink()
    elif damage == "garble":
        root.write_text("{garbled")
    else:
        text = root.read_text()
        digest = json.loads(text)["attributes"]["config_sha256"]
        root.write_text(text.replace(digest, "0" * len(digest)))
    if damage != "config hash":
        for command in ("status", "verify"):
            code, line = one_line(command, store)
            assert code == 2 and "root metadata (zarr.json) is lost" in line
            assert "finished units are kept" in line
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before


@pytest.mark.parametrize(("chunk", "units"), [("effect/c/1/0/0/0/0", 1), ("done/c/1", 0)])
def test_a_folder_in_place_of_a_chunk_costs_at_most_its_unit(
    store: Path, chunk: str, units: int
) -> None:
    """A folder where a chunk file belongs made run, verify and status fail with
    IsADirectoryError."""
    before = every_file(store)
    path = store / "random_init" / chunk
    path.unlink()
    path.mkdir()
    code, line = one_line("status", store)
    assert code in (0, 2) and (code == 0 or "damaged 1 finished unit(s) (samples 2-3" in line)
    code, line = one_line("verify", store)
    assert code == 0 and "repaired" in line
    assert run_study(parse_study(TEXT), store.parent).units_run == units
    assert every_file(store) == before


def test_a_folder_with_files_in_place_of_a_chunk_is_refused_in_one_line(store: Path) -> None:
    path = store / "random_init" / "effect" / "c" / "1" / "0" / "0" / "0" / "0"
    path.unlink()
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is a folder where a chunk of the store belongs"):
        run_study(parse_study(TEXT), store.parent)
    assert (path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["compare", "locate", "plot", "status", "verify"])
def test_a_removed_effect_array_is_named_by_every_command(
    store: Path, tmp_path: Path, command: str
) -> None:
    """compare (and locate, plot with --no-verify) once failed with a KeyError traceback."""
    shutil.rmtree(store / "random_init" / "effect")
    extra = {
        "compare": [store, "--no-verify"],
        "locate": ["--no-verify"],
        "plot": ["--out", tmp_path / "figures", "--no-verify"],
    }
    code, line = one_line(command, store, *extra.get(command, []))
    assert "the array 'effect' is missing" in line, line
    if command == "verify":
        assert code == 0 and "needs the study" in line
    else:
        assert code == 2 and line.startswith(f"error: {store}/random_init: the array")


def torn(chunk: Path, how: str) -> None:
    data = chunk.read_bytes()
    garbled = np.random.default_rng(0).bytes(len(data))
    chunk.write_bytes(data[:1] if how == "truncate" else garbled)


@pytest.mark.parametrize("how", ["truncate", "garble"])
@pytest.mark.parametrize("command", ["status", "locate", "plot", "compare"])
def test_an_unreadable_done_chunk_is_damage_to_every_reader(
    store: Path, tmp_path: Path, how: str, command: str
) -> None:
    """status, locate, plot and compare once ended in a Zstd RuntimeError traceback."""
    torn(store / "random_init" / "done" / "c" / "1", how)
    extra = {"compare": [store], "plot": ["--out", tmp_path / "figures"]}
    code, line = one_line(command, store, *extra.get(command, []))
    assert code == 2 and line.startswith(f"error: {store}/random_init: the done marks"), line
    assert "samples 2-3" in line and "run patchwork verify" in line
    assert one_line("verify", store)[0] == 0
    assert one_line(command, store, *extra.get(command, []))[0] == 0


@pytest.mark.parametrize("command", ["locate", "plot"])
def test_a_truncated_chunk_read_without_verifying_is_one_line(
    store: Path, tmp_path: Path, command: str
) -> None:
    """locate and plot with --no-verify once failed while computing, with a traceback."""
    torn(store / "random_init" / "effect" / "c" / "1" / "0" / "0" / "0" / "0", "truncate")
    extra = ["--out", tmp_path / "figures"] if command == "plot" else []
    code, line = one_line(command, store, "--no-verify", *extra)
    assert code == 2 and line.startswith(f"error: {store}: the store is damaged"), line
    assert "run patchwork verify" in line


def special_file(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
        return
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs privileges")


@pytest.mark.parametrize(
    ("file", "kind"),
    [
        ("zarr.json", "fifo"),
        ("random_init/effect/zarr.json", "fifo"),
        ("random_init/effect/c/1/0/0/0/0", "fifo"),
        ("random_init/done/c/1", "fifo"),
        ("random_init/checksum/c/1", "device"),
    ],
)
def test_a_fifo_or_device_in_the_store_is_refused_without_being_opened(
    store: Path, file: str, kind: str
) -> None:
    """status, verify, locate and run once waited forever on the FIFO (or read /dev/zero)."""
    special_file(store / file, kind)
    words = "is a FIFO (named pipe)" if kind == "fifo" else "is a character device"
    for command in ("status", "verify", "locate"):
        code, line = one_line(command, store)
        assert code == 2 and line.startswith(f"error: {store / file} {words}"), line
    with pytest.raises(StoreError, match=re.escape(f"{store / file} {words}")):
        run_study(parse_study(TEXT), store.parent)


def test_a_file_in_place_of_the_model_group_is_one_line(store: Path) -> None:
    """run once failed with zarr's ValueError (delete_dir was passed a prefix that is a file)."""
    shutil.rmtree(store / "random_init")
    (store / "random_init").write_text("x")
    with pytest.raises(StoreError, match="random_init is a file where the store keeps the results"):
        run_study(parse_study(TEXT), store.parent)
    assert (store / "random_init").read_text() == "x"


@pytest.mark.parametrize("where", ["effect", "root"])
def test_an_empty_folder_in_place_of_metadata_is_written_again(store: Path, where: str) -> None:
    """run once failed with IsADirectoryError (an array's, and the root's metadata)."""
    before = every_file(store)
    metadata = (
        store / "random_init" / "effect" / "zarr.json" if where == "effect" else store / "zarr.json"
    )
    metadata.unlink()
    metadata.mkdir()
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before
    metadata.unlink()
    metadata.mkdir()
    (metadata / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is a folder where the store's metadata file belongs"):
        run_study(parse_study(TEXT), store.parent)
    assert (metadata / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["leftover", "unit"])
def test_verify_of_a_read_only_store_says_what_it_would_have_done(
    store: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """verify on a read-only mount once failed with an OSError (errno 30) traceback."""
    if damage == "leftover":
        (store / "random_init" / "effect" / "c" / "0" / "0" / "0" / "0" / "0.partial").touch()
        expected = "verify would have removed the leftover"
    else:
        zarr.open_array(store / "random_init" / "checksum", mode="r+")[2] = 1
        expected = "verify would have unmarked the damaged samples 2-3 of 'random_init'"
    refused = OSError(errno.EROFS, os.strerror(errno.EROFS))
    opened = Path.open

    def read_only(path: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        if set(mode) & set("wax+"):
            raise refused
        return opened(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only)
    monkeypatch.setattr(Path, "unlink", lambda *_, **__: (_ for _ in ()).throw(refused))
    code, line = one_line("verify", store)
    assert code == 2 and "the store cannot be written (Read-only file system)" in line, line
    assert expected in line


@pytest.mark.parametrize(
    ("chunk", "units"), [("effect/c/1/0/0/0/0", 1), ("done/c/1", 0), ("effect/zarr.json", 0)]
)
def test_a_huge_file_in_place_of_a_chunk_is_damage_never_read_whole(
    store: Path, monkeypatch: pytest.MonkeyPatch, chunk: str, units: int
) -> None:
    """A sparse 3 GB file in place of a chunk was read whole by status, verify and run (3.3 GB
    peak): it is over what its array's metadata allow, so it reads as damage without being read
    (and one in place of an array's zarr.json as lost metadata, written again by the run)."""
    before = every_file(store)
    path = store / "random_init" / chunk
    path.unlink()
    with path.open("wb") as handle:
        handle.truncate(2**27)  # sparse: takes no room on disk
    read_whole = Path.read_bytes

    def never_whole(self: Path) -> bytes:
        assert self != path or self.stat().st_size < 2**27, f"{path} was read whole"
        return read_whole(self)

    monkeypatch.setattr(Path, "read_bytes", never_whole)
    if chunk.startswith("effect/c"):  # read without verifying: the file is named
        with pytest.raises(StoreError, match=rf"{re.escape(str(path))} is over [\d,]+ bytes"):
            open_results(store, verify=False)["effect"].load()
    code, line = one_line("status", store)
    assert code == 2 and line.startswith(f"error: {store}/random_init"), line
    code, line = one_line("verify", store)
    assert code == 0 and f"{units} unmarked" in line, line
    assert run_study(parse_study(TEXT), store.parent).units_run == units
    monkeypatch.undo()
    assert every_file(store) == before


def test_every_chunk_a_store_writes_is_within_its_bound(tmp_path: Path) -> None:
    """The bound never calls a sound chunk damaged: incompressible data (zstd's worst case) in
    every kind of array the store keeps, labels of the longest allowed length among them."""
    rng = np.random.default_rng(0)
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    for name, data in {
        "effect": rng.standard_normal((4, 3, 5)).astype(np.float32),
        "checksum": rng.integers(0, 2**32, 4096),
        "done": rng.integers(0, 2, 4096).astype(bool),
    }.items():
        group.create_array(name, data=data, chunks=(data.shape[0] // 2, *data.shape[1:]))
    labels = np.array(["é" * 256, "x", "€" * 4096], dtype=object)
    strings = zarr.dtype.VariableLengthUTF8()  # type: ignore[attr-defined]
    group.create_array("sample", shape=(3,), chunks=(3,), dtype=strings)[:] = labels
    for folder in (tmp_path / "s.zarr").iterdir():
        if folder.is_dir():
            limit = chunk_limit(json.loads((folder / "zarr.json").read_text()))
            chunks = [path for path in (folder / "c").rglob("*") if path.is_file()]
            assert chunks and limit is not None and max(c.stat().st_size for c in chunks) <= limit


@pytest.mark.parametrize("edit", GROUP_EDITS)
def test_a_group_whose_records_are_edited_is_refused_then_written_again_whole(
    store: Path, edit: str
) -> None:
    """Third campaign, attacks 0301-0313: the run kept every unit but left the group's
    attributes as edited, and readers accepted a group that no longer recorded its template."""
    before = every_file(store)
    edit_attributes(store / "random_init" / "zarr.json", GROUP_EDITS[edit])
    code, line = one_line("status", store)
    assert code == 2 and line.startswith("error: ") and line.count("error") == 1
    assert "random_init" in line or "root metadata" in line
    code, line = one_line("verify", store)  # touches nothing a run needs
    assert code == 0 or (code == 2 and "root metadata" in line)
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before
    assert verify_store(store).ok


@pytest.mark.parametrize(
    "records",
    ["coordinate checksums removed", "coordinate checksums emptied", "attributes removed"],
)
@pytest.mark.parametrize("command", ["status", "locate"])
def test_swapped_layer_labels_without_their_checksums_are_never_read(
    store: Path, records: str, command: str
) -> None:
    """Third campaign, attacks 0344-0347: with the coordinates' checksums gone, readers
    reported effects under swapped layer labels."""
    before = every_file(store)
    edit_attributes(store / "random_init" / "zarr.json", GROUP_EDITS[records])
    layer = zarr.open_array(store / "random_init" / "layer", mode="r+")
    layer[:] = layer[:][::-1]
    code, line = one_line(command, store)
    assert code == 2 and line.startswith("error: ") and "random_init" in line
    assert "'random_init'" in line or "layer" in line
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before


ROOT_EDITS = {
    "study text changed": lambda attributes: attributes.update(study="name: other\n"),
    "overrides dropped": lambda attributes: attributes.update(overrides=["x=1"]),
    "attributes removed": lambda attributes: attributes.clear(),
    "schema version changed": lambda attributes: attributes.update(schema_version=999),
    "an attribute added": lambda attributes: attributes.update(note="mine"),
}


@pytest.mark.parametrize("edit", ROOT_EDITS)
@pytest.mark.parametrize("where", ["root", "record"])
def test_root_attributes_that_disagree_with_their_record_are_refused_then_restored(
    store: Path, edit: str, where: str
) -> None:
    """Third campaign, attacks 0317 and 0319: a run kept the root's edited provenance. The side
    that still names the running study is the one written back."""
    before = every_file(store)
    if where == "root":
        edit_attributes(store / "zarr.json", ROOT_EDITS[edit])
    else:
        edit_attributes(
            store / "random_init" / "zarr.json",
            lambda attributes: ROOT_EDITS[edit](attributes["store_attributes"]),
        )
    code, line = one_line("status", store)
    assert code == 2 and line.startswith("error: ")
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before


@pytest.mark.parametrize("verify_first", [False, True])
def test_a_lost_mark_beside_an_unreadable_coordinate_keeps_its_unit(
    store: Path, verify_first: bool
) -> None:
    """Fourth campaign, attacks 1039 and 1110: marks were judged before the coordinates they
    read were repaired, so a lost mark was written as unfinished while the run skipped its unit,
    and verify unmarked every unit."""
    before = every_file(store)
    (store / "random_init" / "done" / "c" / "2").unlink()
    (store / "random_init" / "metric" / "c" / "0").write_bytes(b"")
    if verify_first:
        code, line = one_line("verify", store)
        assert code == 0 and "'metric'" in line and "damaged; units not checked" in line
        assert "0 unmarked" in line
    assert run_study(parse_study(TEXT), store.parent).units_run == 0
    assert every_file(store) == before


def test_readers_list_arrays_by_name_whatever_order_the_store_gives(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fourth campaign, attack 1212: status listed the arrays in the order zarr gathered the
    group's members (concurrently), so the same store printed differently from run to run."""
    import xarray as xr

    from patchwork.store import zarr_store

    open_zarr = xr.open_zarr

    def reversed_open(*arguments, **options):
        dataset = open_zarr(*arguments, **options)
        return dataset[list(dataset.data_vars)[::-1]]

    monkeypatch.setattr(zarr_store.xr, "open_zarr", reversed_open)
    names = list(open_results(store).data_vars)
    assert names == sorted(names) and len(names) > 2
    code, line = one_line("status", store)
    assert code == 0 and line.index("baseline (run") < line.index("effect (layer")


def test_emptied_metadata_checksums_name_the_group_not_every_array(store: Path) -> None:
    """Fourth campaign, attack 1327: the line listed all 17 arrays as lost."""
    edit_attributes(store / "random_init" / "zarr.json", GROUP_EDITS["metadata checksums emptied"])
    code, line = one_line("status", store)
    assert code == 2 and "the metadata (zarr.json) of 'random_init' is lost" in line
    assert "'effect'" not in line


@pytest.mark.parametrize("edit", ["schema version changed", "an attribute added"])
def test_a_root_altered_beside_an_emptied_record_is_refused_not_kept(
    store: Path, edit: str
) -> None:
    """Fourth campaign, attacks 1548 and 1550: with the group's copy of the root emptied, the
    run copied the altered root into it and went on."""
    edit_attributes(store / "zarr.json", ROOT_EDITS[edit])
    edit_attributes(store / "random_init" / "zarr.json", GROUP_EDITS["root record emptied"])
    before = every_file(store)
    with pytest.raises(StoreError, match="neither is what this study writes"):
        run_study(parse_study(TEXT), store.parent)
    assert every_file(store) == before


def test_one_unreadable_coordinate_is_named_alone_and_its_units_not_blamed(store: Path) -> None:
    """Fourth campaign, attack 2703: with one coordinate chunk emptied, status named all nine
    coordinates and the four intact units as damaged, and the run printed nine repairs."""
    before = every_file(store)
    (store / "random_init" / "metric" / "c" / "0").write_bytes(b"")
    code, line = one_line("status", store)
    assert code == 2 and "damaged coordinates ['metric']: they fail their checksums" in line
    assert "unit" not in line.split("keeping")[0]
    notes: list[str] = []
    assert run_study(parse_study(TEXT), store.parent, on_note=notes.append).units_run == 0
    assert [note for note in notes if "was damaged" in note] == [
        "coordinate 'metric' was damaged: rewritten from the study"
    ]
    assert every_file(store) == before
