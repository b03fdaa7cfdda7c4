"""The default teacher: a small ResNet for small images (28x28 grayscale in the demo; any size and channels).

Sized to be *big relative to the service level* (>= 1M parameters, a few ms per request on one CPU
thread) while still training to >= 93.5% test accuracy on Fashion-MNIST in under an hour on 2 cores.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(self, widths=(32, 64, 128, 256), strides=(1, 2, 2, 1), in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        blocks, cin = [], widths[0]
        for w, s in zip(widths, strides):
            blocks.append(BasicBlock(cin, w, s))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@register_model("resnet_small", inputs="image")
def resnet_small(widths=(32, 64, 128, 256), strides=(1, 2, 2, 1), in_channels=1, num_classes=10) -> nn.Module:
    return ResNetSmall(tuple(widths), tuple(strides), in_channels, num_classes)
