"""Tiny checkpoints and media, built once per test session in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import builders, checkpoints

CHECKPOINTS = {
    "qwen2_5_omni": checkpoints.qwen2_5_omni_checkpoint,
    "qwen3_omni": checkpoints.qwen3_omni_checkpoint,
    "gemma3n": checkpoints.gemma3n_checkpoint,
    "generic": checkpoints.qwen2_audio_checkpoint,
}


@pytest.fixture(scope="session")
def family_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("families")
    builders.media_folder(root / "media")
    return root


@pytest.fixture(scope="session")
def checkpoint(family_root: Path):
    """checkpoint(family) -> directory of that family's tiny checkpoint (built on first use)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = CHECKPOINTS[family](family_root / f"checkpoint-{family}")
        return built[family]

    return get
