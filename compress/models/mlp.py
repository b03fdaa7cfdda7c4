"""A student family for feature vectors and images: a plain MLP parametrised by width and depth.

``depth`` hidden layers of ``width`` units (Linear, BatchNorm, ReLU), then one linear classifier. BatchNorm
folds into the Gemm at export, and Torch-Pruning shrinks the hidden widths like a CNN's channels. An image
is flattened first (``in_features`` = channels x height x width): the fastest end of an image front.
"""

from __future__ import annotations

import torch.nn as nn

from compress.models.registry import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int = 256, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_features
        for _ in range(depth):
            layers += [nn.Linear(cin, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.features(x.flatten(1)))


@register_model("mlp", inputs="any")
def mlp(in_features: int = 64, num_classes: int = 10, width: int = 256, depth: int = 2, dropout: float = 0.0) -> nn.Module:
    return MLP(in_features, num_classes, width, depth, dropout)
