"""Model families by name: ``create_model(name, **kwargs)`` over a decorator registry, and
``build_model(name, spec, kwargs)``, which adapts any family to the data's input specification.

Adding a family is one new module that calls ``@register_model("name", inputs=...)`` ("image", "vector", or
"any": it takes ``in_features`` and flattens an image itself) and one import below.
A model name is a registered family, ``tv:<arch>`` (any torchvision classification architecture) or an
import path ``package.module:factory``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch.nn as nn

from compress.errors import RecipeError
from compress.imports import import_object, is_import_path
from compress.models import cnn, mlp, resnet  # noqa: F401 (registrations)
from compress.models.registry import (  # noqa: F401
    INPUTS,
    REGISTRY,
    create_model,
    family_inputs,
    list_models,
    register_model,
)
from compress.models.torchvision_adapter import create_torchvision


def _data_args(spec) -> dict[str, int]:
    if spec.kind == "image":  # in_features for families that flatten the image (mlp)
        return {"num_classes": spec.num_classes, "in_channels": spec.channels, "in_features": math.prod(spec.shape)}
    return {"num_classes": spec.num_classes, "in_features": spec.shape[0]}


def _takes(fn: Callable) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters
    return set(params), any(p.kind == p.VAR_KEYWORD for p in params.values())


def takes_argument(name: str, arg: str) -> bool:
    """Whether family ``name`` has a constructor argument ``arg`` (torchvision architectures: their own
    keyword arguments are not inspected, so only the data arguments count)."""

    if name.startswith("tv:"):
        return arg in ("num_classes", "in_channels")
    if is_import_path(name):
        try:
            return arg in _takes(import_object(name, "student.model"))[0]
        except RecipeError:
            return False  # build_model names the import error
    return name in REGISTRY and arg in _takes(REGISTRY[name])[0]


def build_model(name: str, spec, kwargs: dict[str, Any] | None = None, field: str = "student.model") -> nn.Module:
    """A model of family ``name`` for inputs described by ``spec`` (an ``InputSpec``): the data's class
    count and channels (or feature count) are passed where the family takes them, ``kwargs`` as given.
    Every mistake is a RecipeError naming the field, the family and the fix."""

    kwargs = dict(kwargs or {})
    data = _data_args(spec)
    if is_import_path(name):
        fn = import_object(name, field)
        names, var_kw = _takes(fn)
        args = {k: v for k, v in data.items() if k in names or (var_kw and k == "num_classes")}
    elif name.startswith("tv:"):
        if spec.kind != "image":
            raise RecipeError(f"{field} = {name!r}: torchvision architectures take images, and these data are "
                              f"{spec.shape[0]}-feature vectors; use mlp or an import path")
        fn = create_torchvision
        args = {k: data[k] for k in ("num_classes", "in_channels")}
    elif name in REGISTRY:
        fn = REGISTRY[name]
        if INPUTS[name] not in (spec.kind, "any"):
            raise RecipeError(f"{field} = {name!r}: this family takes {INPUTS[name]}s, and these data are "
                              f"{spec.kind}s; families for {spec.kind}s: {', '.join(list_models(spec.kind))}, or "
                              "an import path package.module:factory")
        names, _ = _takes(fn)
        args = {k: v for k, v in data.items() if k in names}
    else:
        raise RecipeError(f"{field} = {name!r}: unknown model family; registered: {', '.join(list_models())}, "
                          "'tv:<torchvision architecture>' such as 'tv:resnet18', or an import path "
                          "package.module:factory")
    for k in sorted(set(kwargs) & set(args)):
        if kwargs[k] != args[k]:
            raise RecipeError(f"{field} = {name!r}: kwargs give {k}={kwargs[k]!r}, but the data have {args[k]}; "
                              "remove it from the kwargs (it comes from the data)")
        del args[k]
    try:
        model = fn(*([name[3:]] if name.startswith("tv:") else []), **args, **kwargs)
    except (TypeError, ValueError, KeyError) as err:
        taken = sorted(inspect.signature(fn).parameters) if not name.startswith("tv:") else None
        hint = f"; it takes {', '.join(taken)}" if taken else ""
        raise RecipeError(f"{field} = {name!r} could not be built with {kwargs or 'no kwargs'} "
                          f"({type(err).__name__}: {str(err).strip(chr(39))}){hint}") from None
    except Exception as err:  # noqa: BLE001 - raised inside the architecture's own code: said so, not blamed on a file
        raise RecipeError(f"{field} = {name!r}: building it raised {type(err).__name__}: {err} (inside {name}, "
                          f"called with {({**args, **kwargs}) or 'no arguments'})") from None
    if not isinstance(model, nn.Module):
        raise RecipeError(f"{field} = {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    check_output(model, spec, f"{field} = {name!r}")
    return model


def check_output(model: nn.Module, spec, what: str) -> None:
    """Run two zero inputs of the spec's shape; the output must be (2, number of classes)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *spec.shape))
    except Exception as err:  # noqa: BLE001 - any shape error inside the user's model
        raise RecipeError(f"{what}: the model fails on inputs of shape {list(spec.batch_shape(2))} "
                          f"({spec.describe().split(',')[0]}): {type(err).__name__}: {str(err)[:300]}") from None
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if shape != (2, spec.num_classes):
        raise RecipeError(f"{what}: the model outputs shape {list(shape)} for 2 inputs, but the data have "
                          f"{spec.num_classes} classes: expected [2, {spec.num_classes}] (class scores)")


def macs_and_params(model: nn.Module, input_shape=(1, 1, 28, 28)) -> tuple[int, int]:
    """Multiply-accumulates for one sample and the parameter count, by Torch-Pruning's op counter."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(*input_shape))
    model.train(was_training)
    return int(macs), int(params)
