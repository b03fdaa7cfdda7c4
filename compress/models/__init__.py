"""Model families by name: ``create_model(name, **kwargs)`` over a decorator registry.

Adding a family is one new module that calls ``@register_model("name")`` and one import below.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model family {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model family; ``tv:<arch>`` builds a torchvision architecture."""
    if name.startswith("tv:"):
        from compress.models.torchvision_adapter import create_torchvision

        return create_torchvision(name[3:], **kwargs)
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown model family {name!r}; registered: {', '.join(list_models())}, "
            "or 'tv:<torchvision architecture>' such as 'tv:resnet18'"
        )
    return _REGISTRY[name](**kwargs)


# Registrations (import for side effect).
from compress.models import resnet, cnn  # noqa: E402,F401


def macs_and_params(model: nn.Module, input_shape=(1, 1, 28, 28)) -> tuple[int, int]:
    """Multiply-accumulates for one sample and the parameter count, by Torch-Pruning's op counter."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(*input_shape))
    model.train(was_training)
    return int(macs), int(params)
