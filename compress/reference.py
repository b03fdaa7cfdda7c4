"""The recipe reference, rendered from the schema's field descriptions so it cannot drift from the code:
``python -m compress.reference > docs/recipe.md``. One section and table per recipe section (key path, type,
default, description); a model used in several places (the training schedule) gets a section of its own, which
they link to, and any other nested model is expanded in place under its key path."""

from __future__ import annotations

import inspect
import json
import sys
from collections import Counter
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from compress.recipe import Range, Recipe

HEADER = """# Recipe reference

A recipe is YAML validated into the typed schema of `compress/recipe.py`. Every key is optional except `name`;
a wrong key, type or value stops the run before anything is written, naming the key path, the bad value and what
is allowed. `--set key.path=value` overrides any key from the command line. This page is generated from the
schema's field descriptions by `python -m compress.reference > docs/recipe.md`, and a test checks that it is
current: edit the descriptions in `compress/recipe.py`, not this page. How the search uses these keys:
[search.md](search.md); the latency protocol: [latency.md](latency.md).
"""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (alone or in a union with None), or None."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def type_name(t: Any) -> str:
    """A field's type in a reader's words: ``int or null``, ``qdq / qoperator``, ``list of int``."""
    origin, args = get_origin(t), get_args(t)
    if t is type(None):
        return "null"
    if t is Any:
        return "any"
    if origin is Literal:
        return " / ".join(map(str, args))
    if origin is Union or type(t).__name__ == "UnionType":
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict or (isinstance(t, type) and issubclass(t, BaseModel)):
        return "mapping"
    return getattr(t, "__name__", str(t))


def _value(v: Any) -> str:
    if isinstance(v, BaseModel):
        v = v.model_dump(mode="json")
    return f"`{v}`" if isinstance(v, str) else f"`{json.dumps(v)}`"


def _text(s: str | None) -> str:
    """One Markdown table cell or paragraph: whitespace collapsed, table pipes and HTML-like brackets escaped."""
    return " ".join((s or "").split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__")
    return "\n\n".join(_text(p) for p in inspect.cleandoc(doc).split("\n\n")) if doc else ""


def _uses(cls: type[BaseModel], counts: Counter) -> Counter:
    for info in cls.model_fields.values():
        sub = _model_of(info.annotation)
        if sub is not None:
            counts[sub] += 1
            _uses(sub, counts)
    return counts


def _rows(cls: type[BaseModel], prefix: str, default: BaseModel | None, shared: set, nested: bool = True) -> list[str]:
    """A table row per field of ``cls`` (defaults from ``default``, else the class's), nested models expanded."""
    rows = []
    for name, info in cls.model_fields.items():
        key, sub = prefix + name, _model_of(info.annotation)
        if sub is not None and not nested:
            continue
        value = getattr(default, name) if default is not None else info.get_default(call_default_factory=True)
        shown = "required" if info.is_required() and default is None else _value(value)
        kind = type_name(info.annotation)
        if sub in shared:
            kind = kind.replace("mapping", f"[{sub.__name__}](#{sub.__name__.lower()})")
            base = sub().model_dump(mode="json")
            diff = {k: v for k, v in value.model_dump(mode="json").items() if base.get(k) != v}
            shown = ", ".join(f"{k}: {json.dumps(v).strip(chr(34))}" for k, v in diff.items()) or "its defaults"
        elif sub is not None:
            shown = _value(value) if value is None else "see below"
        rows.append(f"| `{key}` | {kind} | {shown} | {_text(info.description)} |")
        if sub is not None and sub not in shared:
            rows += _rows(sub, key + ".", value, shared)
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| key | type | default | description |", "| --- | --- | --- | --- |", *rows, ""]


def recipe_reference() -> str:
    """docs/recipe.md: the recipe schema as Markdown, from ``Recipe`` and its section models."""
    shared = {cls for cls, n in _uses(Recipe, Counter()).items() if n > 1}
    out = [HEADER, "## Top level", ""]
    sections = {n: i for n, i in Recipe.model_fields.items() if _model_of(i.annotation)}
    out += _table(_rows(Recipe, "", None, shared, nested=False)
                  + [f"| `{n}` | [section](#{n}) | | {_text(i.description)} |" for n, i in sections.items()])
    for name, info in sections.items():
        cls = _model_of(info.annotation)
        out += [f"## {name}", "", _doc(cls) or _text(info.description), ""]
        out += _table(_rows(cls, name + ".", info.get_default(call_default_factory=True), shared))
    for cls in [*sorted(shared, key=lambda c: c.__name__), Range]:
        out += [f"## {cls.__name__}", "", _doc(cls), ""]
        out += _table(_rows(cls, "", None, set()))
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(recipe_reference())
