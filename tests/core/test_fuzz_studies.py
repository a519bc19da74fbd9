"""Fuzzing study files (issue 28, item 5): mutated YAML of a valid tiny study — random values in
random fields, random keys, random nesting, and raw text edits — through ``validate
--schema-only`` and ``validate``. A case passes when it ends in success or in exactly one line
``error: …`` with exit code 2; a traceback fails it.

Budgets (CI, about 25 s here on a busy 2-core machine): structural mutations 80 cases (schema
only) + 30 (full ``validate``, which builds the model on the meta device and the samples), text
edits 80 cases; fixed (derandomized) cases.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from .helpers import study_text
from .hostile import patchwork_main

BASE = study_text(layers=2, samples=2)

#: Values a hostile study may hold: huge and negative integers, NaN and infinities, odd text,
#: empty and nested containers.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**64, 10**30, 10**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["all", "0-1", "1-0", "0:99999", "audio", "clean", "-", "²", "meta", "cuda:0"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a mapping value or list item of ``node``."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _container(data: Any, path: tuple) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_studies(draw: st.DrawFn) -> dict:
    data = YAML(typ="safe", pure=True).load(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        parent = _container(data, path)
        action = draw(st.sampled_from(["set", "add key", "delete", "nest"]))
        if action == "set":
            parent[path[-1]] = draw(values)
        elif action == "add key" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(st.sampled_from([[parent[path[-1]]], {"x": parent[path[-1]]}]))
    return data


def _yaml(data: Any) -> str:
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, stream)
    return stream.getvalue()


def _passes(*arguments: object) -> None:
    """Success, or one line ``error: …`` with exit code 2 (a traceback propagates)."""
    outcome = patchwork_main(*arguments)
    if outcome.code == 0:
        return
    assert outcome.code == 2, (outcome.code, outcome.stderr)
    assert outcome.line.startswith("error: "), outcome.stderr


def _check(text: str, *options: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        path.write_text(text, encoding="utf-8")
        _passes("validate", path, *options)


def _light(data: Any) -> bool:
    """Whether a full ``validate`` stays cheap: no more than a few generated samples."""
    dataset = data.get("dataset") if isinstance(data, dict) else None
    samples = dataset.get("samples") if isinstance(dataset, dict) else None
    return not isinstance(samples, int) or samples <= 8


#: Fixed cases (derandomized): the same ones on every run and machine.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@settings(FUZZ, max_examples=80)
@given(mutated_studies())
def test_mutated_studies_against_the_schema(data: dict) -> None:
    _check(_yaml(data), "--schema-only")


@settings(FUZZ, max_examples=30)
@given(mutated_studies())
def test_mutated_studies_in_full_validation(data: dict) -> None:
    if _light(data):
        _check(_yaml(data))


@settings(FUZZ, max_examples=80)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(BASE)),
            st.integers(0, 8),
            st.one_of(
                st.text(alphabet="{}[]:,-&*!|>'\"#%@` \n\t0123456789abc_.\\²", max_size=6),
                st.sampled_from(["9" * 5000, "0x" + "f" * 5000, "1:" * 2000 + "1", "[" * 100]),
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_edited_study_text(edits: list[tuple[int, int, str]]) -> None:
    """Characters deleted and inserted anywhere: YAML syntax errors, tags, anchors, tabs,
    integers of thousands of digits, deep nesting."""
    text = BASE
    for start, length, inserted in edits:
        text = text[:start] + inserted + text[start + length :]
    _check(text, "--schema-only")
