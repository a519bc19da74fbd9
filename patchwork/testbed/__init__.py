"""The embedded default model: a small Qwen2.5-Omni thinker trained on a synthetic audio-visual
world so that it shows vision dominance (see ``docs/testbed.md``).

- :func:`checkpoint_path` — where a shipped checkpoint lives (``testbed``, ``testbed-base``,
  ``testbed-windowed``);
- :func:`load` — the model (eval mode, planted windows installed) and its tokenizer;
- :func:`make_samples` — held-out samples with named runs, media written as wav/png files.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchwork.testbed.model import checkpoint_path, load
    from patchwork.testbed.samples import make_samples

#: Imported on first use, so that ``patchwork testbed --help`` does not load torch.
_LAZY = {
    "checkpoint_path": "patchwork.testbed.model",
    "load": "patchwork.testbed.model",
    "make_samples": "patchwork.testbed.samples",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'patchwork.testbed' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["checkpoint_path", "load", "make_samples"]
