"""patchwork: causal interventions on audio-visual large language models.

Find *where* an AVLLM stops listening: patch activations of a clean run (the sound without a
conflicting picture) into a conflict run, layer by layer and position group by position group,
and store every effect as chunked Zarr arrays that open in xarray.
"""

from __future__ import annotations

__version__ = "0.1.0"

from patchwork.engine.runner import RunSummary, run_study
from patchwork.errors import DataError, ModelError, PatchworkError, StoreError, StudyError
from patchwork.store.zarr_store import open_results
from patchwork.study import load_study, parse_study

__all__ = [
    "DataError",
    "ModelError",
    "PatchworkError",
    "RunSummary",
    "StoreError",
    "StudyError",
    "__version__",
    "load_study",
    "open_results",
    "parse_study",
    "run_study",
]
