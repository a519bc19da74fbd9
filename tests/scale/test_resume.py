"""Crash safety: kill -9 at random moments, resume, and the store equals an uninterrupted run's.

Also: verify repairs a damaged unit, a second concurrent run is refused, --fresh says what it
removes, and a changed study is refused with what changed.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from patchwork import StoreError, open_results, parse_study, run_study
from patchwork.engine import runner
from patchwork.engine.lock import store_lock
from patchwork.store.verify import verify_store

from ..core.helpers import study_text

TEXT = study_text(layers=2, samples=12, unit_size=2, noise_floor="mismatched")
VARIABLES = ("effect", "null_effect", "baseline", "done", "checksum")


def arrays(store: Path) -> dict[str, np.ndarray]:
    results = open_results(store).load()
    return {name: results[name].values for name in VARIABLES}


def assert_same(first: dict, second: dict) -> None:
    for name in VARIABLES:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    root = tmp_path_factory.mktemp("reference")
    summary = run_study(parse_study(TEXT), root)
    return {**arrays(summary.store), "seconds": summary.seconds}


def _run_in_child(text: str, root: str, gate) -> None:  # noqa: ANN001 - a Pipe end
    """Run the study, reporting each finished unit to the parent and waiting for its word before
    the next one: the parent decides after how many units the kill may land."""

    def on_unit(count: int) -> None:
        gate.send(count)
        gate.recv()

    run_study(parse_study(text), Path(root), on_unit=on_unit)


def test_kill_9_at_random_moments_then_resume(tmp_path: Path, reference) -> None:
    """10 runs killed by SIGKILL (forked processes, so no import delay): every third anywhere
    from the start (store creation included), the others while a chosen unit is being computed.

    The mid-run kills wait on observed progress, not on time: the child reports each finished
    unit and waits for the parent's word, so after ``k`` reported units (1 ≤ k ≤ 4 of 6) it can
    finish at most one more before the kill lands, however slow or busy the machine is. Where
    in that unit the kill lands is random."""
    context = multiprocessing.get_context("fork")
    rng = random.Random(7)
    unit_seconds = reference["seconds"] / 6
    killed_mid_run = 0
    for trial in range(10):
        root = tmp_path / f"trial{trial}"
        store = root / "tiny.zarr"
        parent_end, child_end = context.Pipe()
        child = context.Process(target=_run_in_child, args=(TEXT, str(root), child_end))
        child.start()
        if trial % 3 == 0:  # anywhere, store creation included
            time.sleep(rng.uniform(0.0, 1.0))
        else:  # after k finished units, somewhere inside the next one
            for _ in range(rng.randint(1, 4)):
                parent_end.recv()  # a unit is done and marked
                parent_end.send(True)
            time.sleep(rng.uniform(0.0, unit_seconds))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        parent_end.close()
        if (store / "zarr.json").exists():
            verify_store(store)
        try:
            done_before = open_results(store)["done"].values.copy()
        except StoreError:  # killed before the store's template was complete
            done_before = np.zeros(12, dtype=bool)
        killed_mid_run += 0 < done_before.sum() < 12
        summary = run_study(parse_study(TEXT), root)
        # Units marked done before the kill are not computed again; all others are.
        assert summary.units_skipped == int(done_before.sum()) // 2
        assert summary.units_run == 6 - summary.units_skipped
        assert_same(arrays(store), reference)
    assert killed_mid_run >= 6, "the kills after observed progress must all land mid-run"


def test_verify_unmarks_a_damaged_unit_and_removes_leftovers(tmp_path: Path, reference) -> None:
    store = run_study(parse_study(TEXT), tmp_path).store
    effect = zarr.open_array(store / "random_init" / "effect", mode="r+")
    effect[4:6] = np.float32(0.5)  # data changed after the unit was marked done
    leftover = store / "random_init" / "effect" / "c" / "0.abc.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"torn")
    report = verify_store(store)
    assert report.units_cleared == {"random_init": [(4, 6)]}
    assert report.partial_files_removed == [leftover] and not leftover.exists()
    assert open_results(store)["done"].values.tolist() == [True] * 4 + [False] * 2 + [True] * 6
    again = run_study(parse_study(TEXT), tmp_path)
    assert (again.units_run, again.units_skipped) == (1, 5)
    assert_same(arrays(store), reference)
    assert verify_store(store).ok


def test_a_second_run_on_a_busy_store_is_refused_before_its_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = parse_study(TEXT)

    def no_loading(*args: object) -> None:
        raise AssertionError("the model was loaded before the lock was checked")

    with store_lock(tmp_path / "tiny.zarr"):
        with monkeypatch.context() as patched:
            patched.setattr(runner, "load_model", no_loading)
            with pytest.raises(StoreError, match=r"being written by another run \(pid \d+"):
                run_study(study, tmp_path)
    assert not (tmp_path / "tiny.zarr").exists()
    assert run_study(study, tmp_path).units_run == 6  # released: the next run goes ahead


@pytest.mark.parametrize("fresh", [False, True])
def test_a_run_started_while_another_loads_its_model_is_refused_not_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: bool
) -> None:
    """The first run holds the lock from before its model loads: a second run (``--fresh`` too)
    started meanwhile is refused, and the first one finishes (before: the second took the lock,
    wrote or removed the store, and the first was refused after loading)."""
    study = parse_study(TEXT)
    load = runner.load_model
    refusals = []

    def second_run_while_loading(*args: object) -> object:
        if not refusals:
            with pytest.raises(StoreError, match="being written by another run") as refused:
                run_study(study, tmp_path, fresh=fresh)
            refusals.append(refused)
        return load(*args)

    monkeypatch.setattr(runner, "load_model", second_run_while_loading)
    assert run_study(study, tmp_path).units_run == 6
    assert len(refusals) == 1


def test_the_lock_file_is_never_followed_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("data")
    root = tmp_path / "root"
    root.mkdir()
    (root / ".tiny.zarr.lock").symlink_to(victim)
    with pytest.raises(StoreError, match="lock file"):
        run_study(parse_study(TEXT), root)
    assert victim.read_text() == "data"


def test_a_changed_study_is_refused_with_what_changed_and_fresh_starts_over(tmp_path: Path) -> None:
    run_study(parse_study(TEXT), tmp_path)
    changed = parse_study(TEXT.replace("window: 1", "window: 2"))
    with pytest.raises(StoreError, match=r"changed: interventions\[0\]\.window.*--fresh"):
        run_study(changed, tmp_path)
    notes: list[str] = []
    summary = run_study(changed, tmp_path, fresh=True, on_note=notes.append)
    assert notes == [
        f"--fresh: removing the existing store {tmp_path / 'tiny.zarr'} (12 finished samples)"
    ]
    assert summary.units_run == 6
    assert open_results(summary.store).attrs["study"] == changed.text


def test_a_run_that_wrote_no_store_removes_its_lock_file_and_a_late_opener_sees_it(tmp_path):
    """The lock file of a refused run (no store written) goes, while the lock is held; a run that
    had opened it just before must not take a lock on the removed file."""
    from patchwork.engine.lock import _open, _still_at, lock_path, store_lock

    store = tmp_path / "s.zarr"
    with store_lock(store):
        assert lock_path(store).is_file()
        early = _open(lock_path(store), create=False)  # another run, between open and lock
    assert not lock_path(store).exists()
    with early:
        assert not _still_at(lock_path(store), early)
    with store_lock(store):
        store.mkdir()  # this run writes its store: the lock file stays beside it
    assert lock_path(store).is_file()


def test_resuming_with_another_checkpoint_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    """Another model's weights copied into the checkpoint folder between two runs: the store's
    unfinished units would come from another model than its finished ones (before: resumed,
    "2 units run, 2 already done")."""
    import shutil

    from patchwork.testbed import checkpoint_path

    folder = tmp_path / "ck"
    shutil.copytree(checkpoint_path("testbed"), folder)
    text = (
        "name: swap\n"
        f"model: {{family: qwen2_5_omni, checkpoint: {folder}}}\n"
        "dataset: {generator: testbed, samples: 4, seed: 0}\n"
        "runs: {clean: {audio: own, picture: blank}, "
        "conflict: {audio: own, picture: other_category}}\n"
        "interventions: [{kind: activation_patching, layers: [0, 7], "
        "position_groups: [answer], components: [residual]}]\n"
        "execution: {unit_size: 2}\n"
    )
    store = run_study(parse_study(text), tmp_path / "s").store
    for mark, unset in (("done", False), ("checksum", 0)):  # the second unit: never finished
        zarr.open_array(store / "ck" / mark, mode="r+")[2:] = unset
    shutil.copy(checkpoint_path("testbed-base") / "model.safetensors", folder)
    with pytest.raises(StoreError, match="other weights than the model's now"):
        run_study(parse_study(text), tmp_path / "s")
    shutil.copy(checkpoint_path("testbed") / "model.safetensors", folder)  # put back: resumes
    again = run_study(parse_study(text), tmp_path / "s")
    assert (again.units_run, again.units_skipped) == (1, 1)
