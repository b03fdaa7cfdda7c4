"""The registry of model families: ``@register_model(name, inputs=...)`` adds one, ``create_model`` builds it."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from compress.models.torchvision_adapter import create_torchvision

REGISTRY: dict[str, Callable[..., nn.Module]] = {}
INPUTS: dict[str, str] = {}  # family -> "image", "vector" or "any" (an image is flattened into a vector)


def register_model(name: str, inputs: str = "image"):
    def deco(fn: Callable[..., nn.Module]):
        if name in REGISTRY:
            raise ValueError(f"model family {name!r} registered twice")
        REGISTRY[name] = fn
        INPUTS[name] = inputs
        return fn

    return deco


def list_models(inputs: str | None = None) -> list[str]:
    return sorted(n for n in REGISTRY if inputs is None or INPUTS[n] in (inputs, "any"))


def family_inputs(name: str) -> str:
    return INPUTS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model family; ``tv:<arch>`` builds a torchvision architecture."""
    if name.startswith("tv:"):
        return create_torchvision(name[3:], **kwargs)
    if name not in REGISTRY:
        raise KeyError(
            f"unknown model family {name!r}; registered: {', '.join(list_models())}, "
            "or 'tv:<torchvision architecture>' such as 'tv:resnet18'"
        )
    return REGISTRY[name](**kwargs)
