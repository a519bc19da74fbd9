"""Model families and study methods are plug-ins, found through entry points as xarray finds its
backends: ``patchwork.families`` (name → a :class:`~patchwork.models.adapter.ModelAdapter`
subclass), ``patchwork.methods`` (study ``kind`` → a :class:`~patchwork.methods.method.Method`
subclass) and ``patchwork.reports`` (study ``kind`` → a :class:`~patchwork.analysis.reports.Report`
subclass: the summary and figures of that kind's arrays). patchwork registers its own the same
way (``pyproject.toml``); another package adds one by declaring, in its own ``pyproject.toml``::

    [project.entry-points."patchwork.methods"]
    answer_margin = "my_package.methods:AnswerMargin"

    [project.entry-points."patchwork.reports"]
    answer_margin = "my_package.reports:AnswerMarginReport"

Names are read from the installed packages' metadata without importing anything; a plug-in is
imported only when a study uses it (a report: when a store is read).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from patchwork.errors import PatchworkError

FAMILIES = "patchwork.families"
METHODS = "patchwork.methods"
#: Study ``kind`` → the pydantic model of its study entry (torch-free; read by the schema).
ENTRIES = "patchwork.entries"
REPORTS = "patchwork.reports"


@cache
def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name (read once per process; see :func:`refresh`)."""
    return {entry.name: entry for entry in entry_points(group=group)}


def names(group: str) -> tuple[str, ...]:
    """The names registered in ``group``, sorted; nothing is imported."""
    return tuple(sorted(registered(group)))


def load(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group`` (its module is imported now)."""
    entry = registered(group).get(name)
    if entry is None:
        known = ", ".join(names(group)) or "none"
        raise PatchworkError(f"no {group} plug-in named {name!r} is installed (installed: {known})")
    try:
        return entry.load()
    except (ImportError, AttributeError) as error:
        message = f"the {group} plug-in {name!r} ({entry.value}) fails to load: {error}"
        raise PatchworkError(message) from None


def refresh() -> None:
    """Forget what was read, e.g. after installing a plug-in into a running process."""
    registered.cache_clear()
