"""The configuration reference, generated from the pydantic models: every section's keys with
their types, defaults and the comments beside them in the code.

    python -m tuning.config.reference > docs/configuration.md

tests/test_reference.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing

from pydantic import BaseModel

from trainable.families import FAMILIES, readers
from tuning.config.schema import ExperimentConfig

FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")
COMMENT = re.compile(r"^\s+#\s?(.*)$")


def comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comment in the source of `model` and its bases: the comment lines right
    above the field and the one at the end of its line, joined."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        above: list[str] = []
        for line in inspect.getsource(cls).splitlines()[1:]:
            if match := COMMENT.match(line):
                above.append(match.group(1))
            elif (match := FIELD.match(line)) and match.group(1) in cls.__annotations__:
                text = " ".join([*above, match.group(2) or ""]).strip()
                found[match.group(1)] = text or found.get(match.group(1), "")
                above = []
            else:
                above = []
    return found


def type_name(annotation) -> str:
    """`annotation` for a reader: a Literal's values, a union's parts, a class's name."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if args or not hasattr(annotation, "__name__"):
        return str(annotation).replace("typing.", "").replace("tuning.config.", "")
    return annotation.__name__


def default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value!r}`"
    return "" if field.is_required() else f"`{field.default!r}`"


def section(name: str, model: type[BaseModel], notes: dict[str, str] | None = None) -> str:
    notes = notes or {}
    found = comments(model)
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue  # a section of its own
        meaning = " ".join(filter(None, [notes.get(key, ""), found.get(key, "")]))
        rows.append(f"| `{key}` | {type_name(field.annotation)} | {default(field)} | {meaning} |")
    doc = model.__dict__.get("__doc__") or ""  # its own, not a base's
    intro = f"{doc.splitlines()[0]}\n\n" if doc and model is not ExperimentConfig else ""
    return f"## `{name}`\n\n{intro}" + "\n".join(rows)


def reference() -> str:
    trial = ExperimentConfig.model_fields["trial"].annotation
    family_of = {
        key: f"({', '.join(sorted(readers(key)))} only)"
        for family in FAMILIES.values()
        for key in family.settings.model_fields
    }
    parts = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `python -m tuning.config.reference > "
        "docs/configuration.md`; do not edit by hand. An experiment YAML holds these sections; "
        "every key is optional, unknown keys are errors, and `--set SECTION.KEY=VALUE` "
        "overrides one.",
        "",
        section("top level", ExperimentConfig),
    ]
    for key, field in ExperimentConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            parts += ["", section(key, model, family_of if model is trial else None)]
    search = ExperimentConfig.model_fields["search"].annotation
    distribution = search.model_fields["space"].annotation.__args__[1]
    parts += ["", section("search.space.<key>", distribution)]
    parts += ["", section("search.tpe", search.model_fields["tpe"].annotation)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
