"""Read a study file safely and validate it, with errors that name file, line and field.

YAML is read by ruamel's *safe* loader (no Python tags; duplicate keys refused). A second,
node-level pass records the line of every key so that schema errors — and later
model-dependent errors — can point at the line a user has to edit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML, MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

from patchwork import files, plugins
from patchwork.errors import PatchworkError, StudyError
from patchwork.study.locations import FieldPath, dotted, format_location
from patchwork.study.messages import describe_error, first_error, yaml_error
from patchwork.study.schema import PluginIntervention, Study

#: Fields that change how fast a run goes or how it is analysed, never what it computes: outside
#: the study hash.
NOT_HASHED: dict[str, Any] = {"description": True, "execution": {"threads"}, "analysis": True}


def load_study(path: str | Path, overrides: Iterable[str] = ()) -> Study:
    """Read and validate a study file; raise :class:`StudyError` naming file, line and field.

    ``overrides`` are ``"key.path=value"`` strings (the CLI's ``--set``) applied before
    validation; an invalid one is reported as ``--set key.path=value: …``.
    """
    path = Path(path)
    try:
        data = files.read_bounded(path, MAX_STUDY_BYTES)
    except files.Unreadable as problem:
        raise StudyError(f"{path}: study file {problem}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise StudyError(f"{path}:{line}: not UTF-8 text (byte {error.start})") from None
    return parse_study(text, source=path, overrides=overrides)


def parse_study(text: str, source: Path | None = None, overrides: Iterable[str] = ()) -> Study:
    """Validate a study given as YAML text (``source`` only labels messages), with ``overrides``
    applied as in :func:`load_study`."""
    label = str(source) if source else "<study>"
    overrides = tuple(overrides)
    try:
        _check_shape(text, label)
        lines = _key_lines(YAML(typ="safe", pure=True).compose(text), label)
        data = YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as error:
        raise StudyError(yaml_error(error, label)) from None
    except YAMLError as error:
        raise StudyError(f"{label}: malformed YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise StudyError(f"{label}:1: a study file is a mapping of keys (name, model, …)")
    written = data
    overridden: dict[FieldPath, str] = {}
    values: dict[FieldPath, object] = {}
    for override in overrides:
        field_path, value = parse_override(override)
        if field_path in values and values[field_path] != value:
            raise StudyError(
                f"--set {_shown(overridden[field_path])} and --set {_shown(override)} give "
                "one field two values; give it once"
            )
        data = _with_value(dict(data), field_path, value, override)
        overridden[field_path], values[field_path] = override, value
    if source is not None:
        data = _resolve_relative(dict(data), source.parent)
    try:
        study = Study.model_validate(_as_tuples(data))
    except ValidationError as error:
        first = first_error(error.errors(), Study)
        field_path = _data_path(data, tuple(first["loc"]))
        where = _override_of(overridden, field_path, written) or format_location(
            source, lines, field_path
        )
        raise StudyError(f"{where}: {describe_error(first, Study)}") from None
    study._source = source
    study._text = text
    study._lines = lines
    study._overrides = overrides
    _check_plugin_entries(study)
    return study


#: Bounds on a study file, checked on its event stream before anything is built from it: a
#: few hundred lines are typical, and anchors only serve alias bombs ("billion laughs").
MAX_STUDY_BYTES = 1_000_000
MAX_NESTING = 32
#: Integers a study writes have at most this many digits (its largest bound, a seed's, has 19);
#: longer ones are refused before YAML converts them (Python converts at most 4,300 digits).
MAX_DIGITS = 30
#: Plain YAML scalars that YAML 1.2 or 1.1 reads as integers (decimal, hex, octal, binary,
#: sexagesimal), underscores allowed.
_INTEGER = re.compile(r"[-+]?(?:0x[0-9a-fA-F_]+|0o?[0-7_]+|0b[01_]+|[0-9][0-9_]*(?::[0-9_]+)*)")


def _check_shape(text: str, label: str) -> None:
    """Refuse, in one pass over the YAML events, what could make loading hang, recurse or fail
    inside the YAML library: text over :data:`MAX_STUDY_BYTES`, aliases (``*name``), nesting
    deeper than :data:`MAX_NESTING`, integers of more than :data:`MAX_DIGITS` digits."""
    size = len(text.encode("utf-8"))
    if size > MAX_STUDY_BYTES:
        raise StudyError(f"{label}: {size:,} bytes; a study file is at most {MAX_STUDY_BYTES:,}")
    depth = 0
    for event in YAML(typ="safe", pure=True).parse(text):
        line = event.start_mark.line + 1 if event.start_mark is not None else 1
        where = f"{label}:{line}"
        if isinstance(event, AliasEvent):
            raise StudyError(f"{where}: YAML aliases (*{event.anchor}) are not allowed")
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise StudyError(f"{where}: nested more than {MAX_NESTING} levels deep")
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
        elif isinstance(event, ScalarEvent) and event.style is None:
            digits = _integer_digits(event.value)
            if digits > MAX_DIGITS:
                raise StudyError(
                    f"{where}: a number of {digits:,} digits; numbers in a study have at "
                    f"most {MAX_DIGITS}"
                )


def _integer_digits(value: str) -> int:
    """How many digits a plain scalar has when YAML would read it as an integer (else 0)."""
    if len(value) <= MAX_DIGITS or not _INTEGER.fullmatch(value):
        return 0
    return sum(character.isalnum() for character in value)


def _check_plugin_entries(study: Study) -> None:
    """Validate each intervention of another package's method by that method's ``spec_model``
    (this imports the plug-in; studies of patchwork's own methods import nothing)."""
    for index, entry in enumerate(study.interventions):
        if not isinstance(entry, PluginIntervention):
            continue
        try:
            model = getattr(plugins.load(plugins.METHODS, entry.kind), "spec_model", None)
        except PatchworkError as error:
            raise StudyError(f"{study.where('interventions', index, 'kind')}: {error}") from None
        if model is None:
            continue
        try:
            spec = model.model_validate(entry.model_dump())
        except ValidationError as error:
            first = first_error(error.errors(), model)
            where = study.where("interventions", index, *first["loc"])
            raise StudyError(f"{where}: {describe_error(first, model)}") from None
        for run in getattr(spec, "run_names", ()):
            if run not in study.runs:
                where = study.where("interventions", index)
                raise StudyError(f"{where}: names run {run!r}, not one of {list(study.runs)}")


def parse_override(text: str) -> tuple[FieldPath, object]:
    """``"execution.batch_size=8"`` → (("execution", "batch_size"), 8): the value is read as YAML
    (``true``, ``[0, 2]``, ``{GPU: 1}`` …); a numeric part indexes a list
    (``interventions.0.window=2``)."""
    key, sep, value = text.partition("=")
    parts = [part.strip() for part in key.split(".")]
    shown = _shown(text)
    if not sep or not all(parts):
        raise StudyError(f"--set {shown!r}: expected KEY.PATH=VALUE, e.g. model.dtype=bfloat16")
    indices = [part for part in parts if part.isascii() and part.isdigit()]
    if any(len(index) > 9 for index in indices):
        raise StudyError(f"--set {shown}: a list index of more than 9 digits")
    try:
        _check_shape(value, f"--set {shown}")
        _key_lines(YAML(typ="safe", pure=True).compose(value), f"--set {shown}")
        parsed = YAML(typ="safe", pure=True).load(value) if value.strip() else ""
    except YAMLError as error:
        raise StudyError(f"--set {shown}: the value is not valid YAML ({error})") from None
    return tuple(int(p) if p.isascii() and p.isdigit() else p for p in parts), parsed


def study_hash(study: Study) -> str:
    """SHA-256 of the validated study's meaning — not of its formatting, nor of
    :data:`NOT_HASHED` fields, nor of how its paths are spelled: the manifest counts as its
    resolved path and the digest of its bytes, a checkpoint directory as its resolved path. What
    a resumed run must match."""
    canonical = json.dumps(_meaning(study), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _meaning(study: Study) -> dict[str, Any]:
    """What :func:`study_hash` digests: the study as JSON without :data:`NOT_HASHED`, the
    manifest as its resolved path and its bytes' digest, a checkpoint as its resolved path."""
    meaning = study.model_dump(mode="json", by_alias=True, exclude=NOT_HASHED)
    manifest = study.dataset.manifest
    if manifest is not None:
        path = Path(manifest).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        meaning["dataset"]["manifest"] = {"path": str(path), "sha256": digest}
    checkpoint = study.model.checkpoint
    if checkpoint is not None and not checkpoint.startswith("testbed"):
        meaning["model"]["checkpoint"] = str(Path(checkpoint).resolve())
    return meaning


def describe_changes(stored_text: str, study: Study, stored_overrides: Iterable[str] = ()) -> str:
    """'changed: a.b, c' — the fields where ``study`` differs from a study given as YAML text
    (with the ``--set`` overrides it ran with), compared as :func:`study_hash` compares them: the
    stored text's relative paths are read from ``study``'s folder, and paths compare resolved."""
    try:
        stored = parse_study(stored_text, source=study.source_path, overrides=stored_overrides)
    except StudyError:
        return "the stored study no longer validates"
    changed = _differences(_meaning(stored), _meaning(study), ())
    return "changed: " + ", ".join(dotted(path) for path in changed) if changed else ""


def _differences(old: object, new: object, path: FieldPath) -> list[FieldPath]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            difference
            for key in sorted(set(old) | set(new), key=str)
            for difference in _differences(old.get(key), new.get(key), (*path, key))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in _differences(a, b, (*path, i))
        ]
    return [] if old == new else [path]


def _data_path(data: object, loc: FieldPath) -> FieldPath:
    """Drop parts of a pydantic location that are not in the data (union tags such as a kind)."""
    path: list[str | int] = []
    node = data
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif not last:
            continue
        path.append(part)
    return tuple(path)


#: The YAML types a study is written in (YAML's core schema); others (``!!binary``,
#: ``!!timestamp``, ``!!set`` …) are refused rather than handed to the schema as bytes or dates.
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")
)
_NAME_TAG = "tag:yaml.org,2002:str"
#: What a key that is not a name is, by its YAML tag.
_KEY_KINDS = {
    f"tag:yaml.org,2002:{tag}": kind
    for tag, kind in (
        ("int", "a number"),
        ("float", "a number"),
        ("bool", "true or false"),
        ("null", "null"),
        ("seq", "a list"),
        ("map", "a mapping"),
    )
}


def _key_lines(node: Node | None, label: str, prefix: FieldPath = ()) -> dict[FieldPath, int]:
    """1-based line of every mapping key and sequence item, keyed by field path. Refuses, with
    ``label:line``, a key that is not text (``? [a, b]``, ``1:``) and a value of a type outside
    YAML's core schema (``!!binary``, a date)."""
    lines: dict[FieldPath, int] = {}
    if node is None:
        return lines
    line = node.start_mark.line + 1
    lines.setdefault(prefix, line)
    if str(node.tag) not in _PLAIN_TAGS:
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        field = f"{dotted(prefix)}: " if prefix else ""
        raise StudyError(
            f"{label}:{line}: {field}a {tag} value; a study holds text, numbers, true or false, "
            "lists and mappings"
        )
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and str(key.tag) == _NAME_TAG):
                field = f"{dotted(prefix)}: " if prefix else ""
                raise StudyError(
                    f"{label}:{key.start_mark.line + 1}: {field}key {_node_text(key)} is "
                    f"{_KEY_KINDS.get(str(key.tag), 'not text')}; the keys of a study are names "
                    "(text)"
                )
            path = (*prefix, key.value)
            lines[path] = key.start_mark.line + 1
            lines.update({k: v for k, v in _key_lines(value, label, path).items() if k != path})
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_key_lines(item, label, (*prefix, index)))
    return lines


def _node_text(node: Node) -> str:
    """A YAML node as flow text for messages (``[a, b]``), at most about 60 characters."""
    if isinstance(node, ScalarNode):
        text = node.value
    elif isinstance(node, SequenceNode):
        text = "[" + ", ".join(_node_text(item) for item in node.value[:8]) + "]"
    else:
        text = "{" + ", ".join(f"{_node_text(k)}: {_node_text(v)}" for k, v in node.value[:8]) + "}"
    return text if len(text) <= 60 else f"{text[:57]}…"


def _as_tuples(data: object) -> object:
    """``data`` with every list a tuple: the schema is strict (a YAML text is never taken for a
    number or a flag) and its sequences are tuples, which strict validation takes as they are."""
    if isinstance(data, Mapping):
        return {key: _as_tuples(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return tuple(_as_tuples(item) for item in data)
    return data


def _with_value(data: dict, field_path: FieldPath, value: object, override: str) -> dict:
    """A copy of ``data`` with ``value`` at ``field_path`` (missing mappings are created)."""
    head, rest = field_path[0], field_path[1:]
    if isinstance(head, int):
        raise StudyError(f"--set {override}: a path starts with a key, not an index")
    if not rest:
        return {**data, head: value}
    child = data.get(head)
    if isinstance(rest[0], int):
        if not isinstance(child, list) or not 0 <= rest[0] < len(child):
            size = len(child) if isinstance(child, list) else 0
            raise StudyError(f"--set {override}: {head} has no item {rest[0]} ({size} items)")
        items = list(child)
        item = items[rest[0]]
        if len(rest) == 1:
            items[rest[0]] = value
        elif isinstance(item, Mapping):
            items[rest[0]] = _with_value(dict(item), rest[1:], value, override)
        else:
            raise StudyError(f"--set {override}: {head}[{rest[0]}] is not a mapping")
        return {**data, head: items}
    if child is None:
        child = {}
    if isinstance(child, list):
        raise StudyError(
            f"--set {override}: {head} is a list; name an item by its index (0 to "
            f"{len(child) - 1}), not {rest[0]!r}"
        )
    if not isinstance(child, Mapping):
        raise StudyError(f"--set {override}: {head} is not a mapping")
    return {**data, head: _with_value(dict(child), rest, value, override)}


def _override_of(
    overridden: Mapping[FieldPath, str], field_path: FieldPath, written: object
) -> str | None:
    """'--set a.b=v: a.b' when the invalid field is (inside) an override's value, or a key that
    an override added to what the file had ``written`` (``--set modle.dtype=…`` adds ``modle``)."""
    for path, override in overridden.items():
        inside = field_path[: len(path)] == path
        added = path[: len(field_path)] == field_path and not _present(written, field_path)
        if inside or added:
            return f"--set {_shown(override)}: {dotted(field_path)}"
    return None


def _shown(override: str) -> str:
    """An override as messages show it: whole up to 80 characters, else its start."""
    return override if len(override) <= 80 else f"{override[:60]}…"


def _present(data: object, field_path: FieldPath) -> bool:
    """Whether ``data`` (mappings and lists) has a value at ``field_path``."""
    for part in field_path:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def _resolve_relative(data: dict, base: Path) -> dict:
    """Make the manifest path relative to the study file, as users expect, and absolute (so that
    a later change of working directory cannot move it)."""
    dataset = data.get("dataset")
    if isinstance(dataset, Mapping) and isinstance(dataset.get("manifest"), str):
        manifest = Path(dataset["manifest"])
        if not manifest.is_absolute():
            # realpath, not resolve(): a loop of links is left for the manifest check to name
            data["dataset"] = {**dataset, "manifest": os.path.realpath(base / manifest)}
    return data
