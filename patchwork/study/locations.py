"""Where in a study file a field lives (``file:line: a.b[0].c``), for every message naming one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

FieldPath = tuple[str | int, ...]


def format_location(
    source: Path | None, lines: Mapping[FieldPath, int], field_path: Iterable[str | int]
) -> str:
    """'file:line: a.b[0].c' using the deepest prefix of the path whose line is known."""
    field_path = tuple(field_path)
    line = None
    for depth in range(len(field_path), -1, -1):
        line = lines.get(field_path[:depth])
        if line is not None:
            break
    label = str(source) if source else "<study>"
    location = f"{label}:{line}" if line is not None else label
    return f"{location}: {dotted(field_path)}" if field_path else location


def dotted(field_path: FieldPath) -> str:
    """``("a", "b", 0, "c")`` → ``"a.b[0].c"``."""
    text = ""
    for part in field_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
