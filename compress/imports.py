"""``package.module:name`` import paths named in recipes, with errors that name the module and the cause."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from compress.errors import RecipeError


def is_import_path(name: str) -> bool:
    return ":" in name and not name.startswith("tv:")


def import_object(path: str, field: str):
    """The object at ``package.module:name``. The working directory is importable, so a recipe can name
    a module of the user's project (``examples.digits:mlp``) without installing it."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"{field} = {path!r}: expected package.module:name")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - ImportError, or the module's own code failing
        raise RecipeError(f"{field} = {path!r}: could not import module {module_name!r} "
                          f"({type(err).__name__}: {err})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RecipeError(f"{field} = {path!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RecipeError(f"{field} = {path!r}: {attr!r} is a {type(obj).__name__}, not a function or class")
    return obj
