"""The student family: a plain CNN parametrised by width and depth.

``depth`` conv-BN-ReLU layers per stage, three stages at 28, 14 and 7 pixels with width, 2x and 4x
channels, then average pooling to a ``pool`` x ``pool`` grid and one linear layer. Plain convolutions (no
residuals) keep the ONNX graph short, which matters at batch 1 where per-node overhead dominates.

``pool`` 1 is global average pooling; 7 keeps every position of a 28-pixel image's last 7x7 map for the
linear layer (the "conv + fully connected" head of the classic small Fashion-MNIST CNNs), which buys small
CNNs 1-3 points of accuracy for microseconds of latency (measured: results/README.md, default recipe choices).
"""

from __future__ import annotations

import torch.nn as nn

from compress.models.registry import register_model


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class StudentCNN(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2, in_channels: int = 1, num_classes: int = 10, pool: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage in range(3):
            cout = width * 2**stage
            for _ in range(depth):
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin * pool * pool, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


@register_model("cnn", inputs="image")
def cnn(width: int = 16, depth: int = 2, in_channels: int = 1, num_classes: int = 10, pool: int = 1) -> nn.Module:
    return StudentCNN(width, depth, in_channels, num_classes, pool)
