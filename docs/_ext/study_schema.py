"""``{study-schema}``: the study-file reference, rendered from the pydantic schema at build time.

Every section is one object of the schema (the study itself first, then each nested object in the
order the study mentions it); every row is one key: its type, its default (or *required*) and its
description. Nothing is written by hand, so the page cannot drift from the code.
"""

from __future__ import annotations

import json
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _anchor(name: str) -> str:
    return f"study-{name.lower()}"


def _type_of(spec: dict[str, Any]) -> str:
    """A short readable type: ``string``, ``list of "a" | "b"``, or a link to an object."""
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f":ref:`{name} <{_anchor(name)}>`"
    if "const" in spec:
        return f"``{json.dumps(spec['const'])}``"
    if "enum" in spec:
        return " | ".join(f"``{json.dumps(value)}``" for value in spec["enum"])
    for key in ("anyOf", "oneOf"):
        if key in spec:
            options = [_type_of(option) for option in spec[key] if option.get("type") != "null"]
            text = " or ".join(options)
            return text + (" or ``null``" if len(options) < len(spec[key]) else "")
    kind = spec.get("type", "any")
    if kind == "array":
        text = f"list of {_type_of(spec.get('items', {}))}"
        bounds = [f"≥ {spec['minItems']}" if "minItems" in spec else ""]
        bounds.append(f"≤ {spec['maxItems']}" if "maxItems" in spec else "")
        bounds = [bound for bound in bounds if bound]
        return text + (f" ({', '.join(bounds)} items)" if bounds else "")
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"mapping of name → {_type_of(spec['additionalProperties'])}"
    if spec.get("format") == "path":
        return "path"
    limits = [
        f"{word} {spec[key]}" for key, word in (("minimum", "≥"), ("maximum", "≤")) if key in spec
    ]
    return kind + (f" ({', '.join(limits)})" if limits else "")


def _cell(text: str) -> list[str]:
    return [line if line else "" for line in (text or " ").splitlines()] or [" "]


def _object_rst(name: str, spec: dict[str, Any]) -> list[str]:
    lines = [f".. _{_anchor(name)}:", "", name, "~" * max(len(name), 3), ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    if spec.get("additionalProperties") is False:
        lines += ["Unknown keys are errors.", ""]
    required = set(spec.get("required", []))
    lines += [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 30 16 36",
        "",
        "   * - key",
        "     - type",
        "     - default",
        "     - meaning",
    ]
    for key, field in spec.get("properties", {}).items():
        if key in required:
            default = "*required*"
        elif "default" in field:
            default = f"``{json.dumps(field['default'])}``"
        else:
            default = "*built in*"  # a default computed by the schema (a default factory)
        lines += [
            f"   * - ``{key}``",
            f"     - {_type_of(field)}",
            f"     - {default}",
            f"     - {' '.join(_cell(field.get('description', '—')))}",
        ]
    return [*lines, ""]


def _ordered_definitions(schema: dict[str, Any]) -> list[str]:
    """Nested objects in the order a reader meets them, starting from the study's own keys."""
    definitions = schema.get("$defs", {})
    order: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in order and name in definitions:
                    order.append(name)
                    visit(definitions[name])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit({key: value for key, value in schema.items() if key != "$defs"})
    return order + [name for name in definitions if name not in order]


def study_schema_rst() -> list[str]:
    """The whole reference as reStructuredText lines (also handy for tests)."""
    from patchwork.study.schema import Study

    schema = Study.model_json_schema()
    lines = _object_rst("Study", schema)
    for name in _ordered_definitions(schema):
        lines += _object_rst(name, schema["$defs"][name])
    return lines


class StudySchemaDirective(SphinxDirective):
    """Insert the study-file reference generated from :class:`patchwork.study.schema.Study`."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        source = StringList(study_schema_rst(), source="patchwork.study.schema")
        self.state.nested_parse(source, self.content_offset, container, match_titles=True)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("study-schema", StudySchemaDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
