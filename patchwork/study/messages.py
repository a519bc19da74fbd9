"""What a study's mistakes are called: malformed YAML at the line to edit, schema errors in a few
words, and the key a misspelt one was probably meant to be (``did you mean 'model'?``)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from ruamel.yaml.error import MarkedYAMLError

#: ruamel's contexts for a construct that opened and never closed: the line to edit is where it
#: opened, not where the parser gave up (often the end of the file).
UNCLOSED = {
    "while parsing a flow sequence": "'[' opened here is not closed",
    "while parsing a flow mapping": "'{' opened here is not closed",
    "while scanning a quoted scalar": "the quote opened here is not closed",
}


def yaml_error(error: MarkedYAMLError, label: str) -> str:
    """``label:line: malformed YAML: …`` at the line a user has to edit."""
    problem = (error.problem or error.context or "malformed YAML").strip()
    opened, found = error.context_mark, error.problem_mark
    unclosed = UNCLOSED.get(str(error.context))
    if unclosed and opened is not None and found is not None and found.line > opened.line:
        return (
            f"{label}:{opened.line + 1}: malformed YAML: {unclosed} "
            f"(line {found.line + 1}: {problem})"
        )
    mark = found or opened
    line = f":{mark.line + 1}" if mark is not None else ""
    return f"{label}{line}: malformed YAML: {problem}"


def first_error(errors: Sequence[Mapping[str, Any]], root: type[BaseModel]) -> Mapping[str, Any]:
    """The validation error to report: the first, unless it is a missing field that a misspelt
    key beside it explains (``modle:`` for ``model:``): then that key's."""
    first = errors[0]
    if first["type"] != "missing":
        return first
    parent, wanted = tuple(first["loc"][:-1]), first["loc"][-1]
    for error in errors:
        if error["type"] == "extra_forbidden" and tuple(error["loc"][:-1]) == parent:
            if suggestion(root, tuple(error["loc"])) == wanted:
                return error
    return first


def describe_error(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """A pydantic error of validating ``root`` in a few words (its location is said elsewhere)."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        meant = suggestion(root, tuple(error["loc"]))
        if meant is not None:
            return f"unknown key; did you mean {meant!r}?"
        return "unknown key (check its spelling against the study-file reference)"
    if error["type"] == "missing":
        return "required field is missing"
    given = error.get("input")
    if isinstance(given, str) and len(given) > 100:  # a hostile value is not echoed whole
        return f"{message}; got {given[:60]!r}… ({len(given):,} characters)"
    if isinstance(given, str | int | float | bool) or given is None:
        return f"{message}; got {given!r}"
    return message


def suggestion(root: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The allowed key closest to the unknown one at pydantic location ``loc`` of ``root``."""
    if not loc or not isinstance(loc[-1], str):
        return None
    matches = difflib.get_close_matches(loc[-1], allowed_keys(root, loc[:-1]), n=1)
    return matches[0] if matches else None


def allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a study may write in the mapping at pydantic location ``loc`` of ``root`` (a
    location names union members by their tag, e.g. ``interventions, 0, steering``), as written
    in a file (aliases); none when no model is there."""
    model = _model_at(root, loc)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_at(annotation: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _model_at(args[0], loc)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not loc:
            return annotation
        for name, field in annotation.model_fields.items():
            if loc[0] in (name, field.alias):
                return _model_at(field.annotation, loc[1:])
        return None
    if origin in (Union, types.UnionType):
        for member in args:  # the member the location names (tag or class), else any that fits
            tags = [getattr(meta, "tag", None) for meta in getattr(member, "__metadata__", ())]
            if loc and loc[0] in (*tags, getattr(member, "__name__", None)):
                return _model_at(member, loc[1:])
        found = (_model_at(member, loc) for member in args)
        return next((model for model in found if model is not None), None)
    if not loc:
        return None
    if origin in (list, tuple, set, frozenset) and isinstance(loc[0], int) and args:
        item = args[0] if origin is not tuple or ... in args else args[min(loc[0], len(args) - 1)]
        return _model_at(item, loc[1:])
    if origin is dict and len(args) == 2:
        return _model_at(args[1], loc[1:])
    return None
