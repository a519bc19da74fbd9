"""Check a store after a crash: leftovers removed, every unit marked done really complete.

A unit marked done whose data are not finite or whose checksum does not match what was recorded
loses its mark, so the next ``patchwork run`` computes it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import zarr

from patchwork.errors import StoreError
from patchwork.store.zarr_store import DAMAGE, ResultStore, template_complete


@dataclass
class VerifyReport:
    """What ``verify`` found: leftovers removed, units checked, units unmarked (per model)."""

    partial_files_removed: list[Path] = field(default_factory=list)
    units_checked: int = 0
    units_cleared: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    #: Coordinates (per model) that fail their checksums: the next run rewrites them.
    coordinates_damaged: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.partial_files_removed
            and not any(self.units_cleared.values())
            and not any(self.coordinates_damaged.values())
        )


def verify_store(path: str | Path) -> VerifyReport:
    """Remove ``*.partial`` leftovers and unmark every done unit that is not complete."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no patchwork store here")
    report = VerifyReport()
    for leftover in sorted(path.rglob("*.partial")):
        leftover.unlink()
        report.partial_files_removed.append(leftover)
    try:
        root = zarr.open_group(path, mode="r", zarr_format=3)
        groups = sorted(root.groups())
    except DAMAGE as error:
        raise StoreError(
            f"{path}: cannot read the store's metadata ({error}); a damaged model group's or "
            "array's zarr.json is written again by the next run of the study, but without the "
            "root's patchwork cannot tell which study wrote the store (--fresh starts over)"
        ) from None
    for model, group in groups:
        if not template_complete(group):
            continue  # a template cut short by a crash: rewritten by the next run
        store = ResultStore(path, model)
        cleared = report.units_cleared.setdefault(model, [])
        try:
            done, size = store.done(), store.unit_size
            report.units_checked += sum(
                bool(done[start : start + size].any()) for start in range(0, len(done), size)
            )
        except DAMAGE:
            pass  # an unreadable mark array: damaged_units clears every unit
        for start, stop in store.damaged_units():
            store.clear_done(start, stop)
            cleared.append((start, stop))
        report.coordinates_damaged[model] = store.damaged_coordinates()
    return report
