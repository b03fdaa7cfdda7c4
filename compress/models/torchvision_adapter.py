"""Any torchvision classification architecture, adapted to the dataset's channels and classes."""

from __future__ import annotations

import torch.nn as nn


def create_torchvision(arch: str, in_channels: int = 1, num_classes: int = 10, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    if arch not in tvm.list_models(module=tvm):
        raise KeyError(f"torchvision has no classification model {arch!r}; see torchvision.models.list_models()")
    # weights=None: no model hub is reachable, and the teacher is trained on our data anyway.
    model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups, mod.bias is not None)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return
    raise ValueError("could not find the first 3-channel convolution to adapt")
