"""A finished store of every method passes ``patchwork verify``, and verify re-reads every
variable a unit wrote, one-dimensional ones too (``probe_logit_diff``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import zarr

from patchwork import parse_study, run_study
from patchwork.store.verify import verify_store

from .helpers import study_text


def test_every_methods_finished_store_passes_verify(tmp_path: Path) -> None:
    summary = run_study(parse_study(study_text(samples=4)), store_root=tmp_path)
    report = verify_store(summary.store)
    assert report.ok, report
    assert report.units_checked == 2
    names = set(dict(zarr.open_group(summary.store / "random_init", mode="r").arrays()))
    assert {"probe_logit_diff", "knockout_effect", "lens_probability", "share", "base_kl"} <= names

    # a changed value of the 1-D variable is caught: its unit is unmarked for a re-run
    changed = tmp_path / "changed.zarr"
    shutil.copytree(summary.store, changed)
    array = zarr.open_array(changed / "random_init" / "probe_logit_diff", mode="r+")
    array[3] = float(array[3]) + 1.0
    report = verify_store(changed)
    assert report.units_cleared == {"random_init": [(2, 4)]}
