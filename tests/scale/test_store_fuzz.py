"""Store damage fuzzing (issue 28, item 5): any one file of a finished store truncated, garbled,
flipped or removed, then the study run again. Every case ends bit-identical to the undamaged
store, and only the units whose own chunks were hit are computed again: damaged metadata (the
root's included), marks or coordinates never cost a finished unit, nor end in a refusal.

Budget: 60 examples (each a copy of an 8-sample store and one resumed run of a 2-layer random
thinker), about 40 s here: the store's 50 files (lock file included) and four kinds of damage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from patchwork import StoreError, open_results, parse_study, run_study

from ..core.helpers import study_text

TEXT = study_text(layers=2, samples=8, unit_size=2)
UNIT = 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], list[str]]:
    root = tmp_path_factory.mktemp("finished")
    store = run_study(parse_study(TEXT), root).store
    results = open_results(store).load()
    arrays = {str(name): results[name].values for name in results.variables}
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return root, arrays, files


def damage(path: Path, how: str, at: float) -> None:
    data = path.read_bytes()
    cut = int(at * len(data))
    if how == "remove":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[:cut])
    elif how == "garble":
        path.write_bytes(b"\x00garbled\xff" * 3)
    elif data:  # flip one byte
        flipped = bytearray(data)
        flipped[min(cut, len(data) - 1)] ^= 0xFF
        path.write_bytes(bytes(flipped))


def units_hit(relative: str) -> int:
    """Units whose own chunks this file holds: a chunk of a per-sample data array, or of the
    checksums that prove a unit whole (a unit whose proof is lost is computed again: its data can
    no longer be told from damaged ones); metadata, done marks and coordinates hold none."""
    parts = Path(relative).parts  # tiny.zarr / random_init / ARRAY / c / UNIT / …
    data = {"effect", "null_effect", "null_partner", "baseline", "checksum"}
    return int(len(parts) > 4 and parts[2] in data and parts[3] == "c")


@settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure prints its file: no shrink
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    choice=st.integers(min_value=0, max_value=10_000),
    how=st.sampled_from(["remove", "truncate", "garble", "flip"]),
    at=st.floats(min_value=0.0, max_value=1.0),
)
def test_one_damaged_file_never_loses_finished_work(
    finished: tuple[Path, dict[str, np.ndarray], list[str]],
    tmp_path_factory,
    choice: int,
    how: str,
    at: float,
) -> None:
    source, reference, files = finished
    damaged_run(source, reference, tmp_path_factory, files[choice % len(files)], how, at)


@pytest.mark.parametrize("how", ["remove", "truncate", "garble", "flip"])
def test_damaged_root_metadata_never_loses_finished_work(
    finished: tuple[Path, dict[str, np.ndarray], list[str]], tmp_path_factory, how: str
) -> None:
    """The root's zarr.json is written again from the record its model group keeps (once the
    only file whose damage ended in a refusal, and --fresh recomputed every unit)."""
    source, reference, _ = finished
    damaged_run(source, reference, tmp_path_factory, "tiny.zarr/zarr.json", how, 0.5)


def damaged_run(
    source: Path,
    reference: dict[str, np.ndarray],
    tmp_path_factory,
    relative: str,
    how: str,
    at: float,
) -> None:
    """Damage ``relative`` in a copy of the finished store and run the study again: no
    refusal, at most the units the file held computed again, every value as before."""
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(source, root, dirs_exist_ok=True)
    damage(root / relative, how, at)
    try:
        summary = run_study(parse_study(TEXT), root)
    except StoreError as error:
        raise AssertionError(f"{relative} ({how}): {error}") from None
    assert summary.units_run <= units_hit(relative), f"{relative} ({how}) cost finished units"
    results = open_results(summary.store).load()
    for name, values in reference.items():
        np.testing.assert_array_equal(results[name].values, values, err_msg=f"{relative}: {name}")
