"""patchwork: causal interventions on audio-visual large language models.

Find *where* an AVLLM stops listening: patch activations of a clean run (the sound without a
conflicting picture) into a conflict run, layer by layer and position group by position group,
and store every effect as chunked Zarr arrays that open in xarray.

The names below are imported on first use, so ``import patchwork`` (and the command line's
``--help``, ``validate --schema-only``, ``status``, ``locate`` and ``plot``) never loads torch,
transformers or nnsight; running or fully validating a study does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from patchwork._version import __version__
from patchwork.errors import DataError, ModelError, PatchworkError, StoreError, StudyError

if TYPE_CHECKING:
    from patchwork.engine.inspect import inspect_inputs
    from patchwork.engine.runner import RunSummary, run_study
    from patchwork.loading.pairs import pair_clips
    from patchwork.store.zarr_store import open_results
    from patchwork.study import load_study, parse_study

#: Public name → module that defines it (imported when the name is first read).
_LAZY = {
    "RunSummary": "patchwork.engine.runner",
    "inspect_inputs": "patchwork.engine.inspect",
    "pair_clips": "patchwork.loading.pairs",
    "run_study": "patchwork.engine.runner",
    "open_results": "patchwork.store.zarr_store",
    "load_study": "patchwork.study",
    "parse_study": "patchwork.study",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'patchwork' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DataError",
    "ModelError",
    "PatchworkError",
    "RunSummary",
    "StoreError",
    "StudyError",
    "__version__",
    "inspect_inputs",
    "load_study",
    "open_results",
    "pair_clips",
    "parse_study",
    "run_study",
]
