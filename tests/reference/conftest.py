"""The reference tests need the official routes' own packages (torchvision, torchcodec,
qwen-omni-utils, librosa) and ffmpeg: they run in the reference environment (``tox -e
reference``, the CI's reference step) and are skipped, with the reason, elsewhere. With
``PATCHWORK_REFERENCE=required`` a missing piece fails the run instead of skipping it."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

NEEDED = ("torchvision", "torchcodec", "qwen_omni_utils", "librosa")


def missing() -> list[str]:
    absent = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    return absent + ([] if shutil.which("ffmpeg") else ["ffmpeg"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    absent = missing()
    if not absent:
        return
    reason = f"reference environment only: {', '.join(absent)} not installed (tox -e reference)"
    if os.environ.get("PATCHWORK_REFERENCE") == "required":
        raise pytest.UsageError(f"PATCHWORK_REFERENCE=required but {reason}")
    for item in items:
        if "tests/reference" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))
