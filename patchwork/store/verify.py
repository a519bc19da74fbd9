"""Check a store after a crash: leftovers removed, every unit marked done really complete.

A unit marked done whose data are not finite or whose checksum does not match what was recorded
loses its mark, so the next ``patchwork run`` computes it again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import zarr

from patchwork.errors import StoreError
from patchwork.store.bounded import open_store_group
from patchwork.store.metadata import refuse_links, unreadable_metadata
from patchwork.store.zarr_store import ResultStore, store_models, template_complete


@dataclass
class VerifyReport:
    """What ``verify`` found: leftovers removed, units checked, units unmarked (per model)."""

    partial_files_removed: list[Path] = field(default_factory=list)
    units_checked: int = 0
    units_cleared: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    #: Coordinates (per model) that fail their checksums: the next run rewrites them.
    coordinates_damaged: dict[str, list[str]] = field(default_factory=dict)
    #: Done marks (per model) that could not be read, written again from the units' data.
    marks_restored: dict[str, list[str]] = field(default_factory=dict)
    #: Nodes (per model) whose zarr.json is lost: nothing of that model was touched.
    metadata_lost: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.partial_files_removed
            and not any(self.units_cleared.values())
            and not any(self.coordinates_damaged.values())
            and not any(self.marks_restored.values())
            and not self.metadata_lost
        )


def verify_store(path: str | Path) -> VerifyReport:
    """Remove ``*.partial`` leftovers, write unreadable done marks again from the units' own data,
    and unmark every done unit that is not complete. A model whose metadata is lost is left as it
    is (its finished units are kept) and named in :attr:`VerifyReport.metadata_lost`: the next
    run of the study writes the metadata again from the study."""
    path = Path(path)
    models = store_models(path)  # a store whose root metadata read, or one line
    refuse_links(path)
    root = open_store_group(path)
    report = VerifyReport()
    for folder, _, files in os.walk(path, followlinks=False):
        for name in sorted(files):
            if name.endswith(".partial"):
                leftover = Path(folder) / name
                with _writing(path, f"removed the leftover {leftover}"):
                    leftover.unlink()
                report.partial_files_removed.append(leftover)
    report.partial_files_removed.sort()
    for model in models:
        lost = unreadable_metadata(path, model)
        if lost:
            report.metadata_lost[model] = lost
            continue
        group = root[model]
        if not isinstance(group, zarr.Group) or not template_complete(group):
            continue  # a template cut short by a crash: rewritten by the next run
        store = ResultStore(path, model)
        report.coordinates_damaged[model] = store.damaged_coordinates()
        if report.coordinates_damaged[model]:
            continue  # units are judged by their coordinates too: the run rewrites them first
        with _writing(path, f"written unreadable done marks of {model!r} again"):
            report.marks_restored[model] = store.restore_marks()
        cleared = report.units_cleared.setdefault(model, [])
        done = store.done()
        report.units_checked += sum(bool(done[start:stop].any()) for start, stop in store.units())
        for start, stop in store.damaged_units():
            with _writing(path, f"unmarked the damaged samples {start}-{stop - 1} of {model!r}"):
                store.clear_done(start, stop)
            cleared.append((start, stop))
    return report


#: What writing into a store that may not be written raises (a read-only mount, no permission).
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def _writing(path: Path, action: str) -> Iterator[None]:
    """Turn a refused write into one line: the store cannot be written, and what verify would
    have done (``action``) had it been writable."""
    try:
        yield
    except OSError as error:
        if error.errno not in _NOT_WRITABLE:
            raise
        raise StoreError(
            f"{path}: the store cannot be written ({error.strerror}); verify would have "
            f"{action} — make the store writable (or copy it) and run patchwork verify again"
        ) from None
