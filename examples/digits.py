"""scikit-learn's handwritten digits as feature vectors: the example of "your own data and your own model".

1,797 8x8 images of digits, read as 64 grey levels (0-16) per sample, i.e. feature vectors, not images.
``load`` is the data factory (``data.source: import``, ``data.factory: examples.digits:load``) and
``teacher`` the model factory (``teacher.model: examples.digits:teacher``) of ``recipes/digits*.yaml``.
scikit-learn ships the data, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np


def load(test_size: int = 360, seed: int = 0) -> dict:
    """A fixed, seeded train/test split (validation is carved from train by compress)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(y))
    test, train = perm[:test_size], perm[test_size:]
    return {"train": (x[train].astype(np.float32), y[train]), "val": None,
            "test": (x[test].astype(np.float32), y[test]), "labels": [str(d) for d in range(10)]}


def teacher(in_features: int, num_classes: int, width: int = 1024, depth: int = 2, dropout: float = 0.2):
    """A deliberately big MLP: the "accurate but too slow" model a team would bring."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    cin = in_features
    for _ in range(depth):
        layers += [nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        cin = width
    return nn.Sequential(*layers, nn.Linear(cin, num_classes))
