"""Fuzzing testbed-format checkpoint folders (issue 28, item 5): one file of a tiny folder —
``config.json``, ``model.safetensors``, ``patchwork_testbed.json`` or ``tokenizer.json`` —
truncated, garbled (bytes overwritten or flipped) or replaced by other JSON, then read by
``validate`` (every file checked, no weights loaded) and by ``testbed eval`` (weights loaded, the
model run). A case passes when it ends in success or in exactly one line ``error: …`` with exit
code 2; a traceback fails it.

Budgets (CI, about 25 s here on a busy 2-core machine): 40 cases through ``validate``, 20
through ``testbed eval``; fixed (derandomized) cases.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .hostile import TESTBED_FILES, patchwork_main, study_on, tiny_testbed

FUZZ = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_testbed(tmp_path_factory.mktemp("fuzzed") / "testbed")


@st.composite
def damages(draw: st.DrawFn) -> tuple[str, str, object]:
    """(file, kind, detail): which file, and how it is damaged."""
    file = draw(st.sampled_from(TESTBED_FILES))
    kind = draw(st.sampled_from(["truncate", "overwrite", "flip", "json"]))
    if kind == "truncate":
        return file, kind, draw(st.floats(0, 1))
    if kind == "overwrite":
        return file, kind, (draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=16)))
    if kind == "flip":
        return (
            file,
            kind,
            draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4)),
        )
    other = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=6,
    )
    return file, kind, draw(other)


def damage(folder: Path, file: str, kind: str, detail: object) -> None:
    path = folder / file
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        data = data[: int(len(data) * float(detail))]  # type: ignore[arg-type]
    elif kind == "overwrite":
        where, garbage = detail  # type: ignore[misc]
        start = int(len(data) * where)
        data[start : start + len(garbage)] = garbage
    elif kind == "flip":
        for where, mask in detail:  # type: ignore[attr-defined]
            index = min(int(len(data) * where), len(data) - 1)
            data[index] ^= mask
    else:
        data = bytearray(json.dumps(detail).encode())
    path.write_bytes(bytes(data))


def _settled(*arguments: object) -> None:
    outcome = patchwork_main(*arguments)
    if outcome.code == 0:
        return
    assert outcome.code == 2, (outcome.code, outcome.stderr)
    assert outcome.line.startswith("error: "), outcome.stderr


@settings(FUZZ, max_examples=40)
@given(damages())
def test_damaged_folders_in_validate(tiny: Path, case: tuple[str, str, object]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(tiny, Path(scratch) / "testbed"))
        damage(folder, *case)
        _settled("validate", study_on(Path(scratch), folder))


@settings(FUZZ, max_examples=20)
@given(damages())
def test_damaged_folders_in_evaluation(tiny: Path, case: tuple[str, str, object]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(tiny, Path(scratch) / "testbed"))
        damage(folder, *case)
        _settled("testbed", "eval", folder, "--samples", "1")
