"""Check a store after a crash: leftovers removed, every unit marked done really complete.

A unit marked done whose data are not finite or whose checksum does not match what was recorded
loses its mark, so the next ``patchwork run`` computes it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from patchwork.errors import StoreError
from patchwork.store.zarr_store import MARKS, ResultStore, sample_checksums

#: Metrics that must be finite in a complete unit (normalized_effect may be NaN by design when
#: the clean and conflict runs do not differ).
FINITE_METRICS = (0, 1)


@dataclass
class VerifyReport:
    """What ``verify`` found: leftovers removed, units checked, units unmarked (per model)."""

    partial_files_removed: list[Path] = field(default_factory=list)
    units_checked: int = 0
    units_cleared: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.partial_files_removed and not any(self.units_cleared.values())


def verify_store(path: str | Path) -> VerifyReport:
    """Remove ``*.partial`` leftovers and unmark every done unit that is not complete."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no patchwork store here")
    report = VerifyReport()
    for leftover in sorted(path.rglob("*.partial")):
        leftover.unlink()
        report.partial_files_removed.append(leftover)
    root = zarr.open_group(path, mode="r", zarr_format=3)
    for model, group in sorted(root.groups()):
        if not all(name in group for name in MARKS):
            continue  # a template cut short by a crash: rewritten by the next run
        store = ResultStore(path, model)
        done, recorded = store.done(), store.checksums()
        cleared = report.units_cleared.setdefault(model, [])
        size, total = store.unit_size, len(done)
        for start in range(0, total, size):
            stop = min(start + size, total)
            if not done[start:stop].any():
                continue
            report.units_checked += 1
            if (
                not _complete(store, start, stop, recorded[start:stop])
                or not done[start:stop].all()
            ):
                store.clear_done(start, stop)
                cleared.append((start, stop))
    return report


def _complete(store: ResultStore, start: int, stop: int, recorded: np.ndarray) -> bool:
    arrays = store.read_unit(start, stop)
    if not np.array_equal(sample_checksums(arrays), recorded):
        return False
    # null_effect may be NaN by design (a unit of one sample has no mismatched partner).
    return all(
        bool(np.isfinite(arrays[name][..., list(FINITE_METRICS)]).all())
        for name in ("effect", "baseline")
        if name in arrays
    )
