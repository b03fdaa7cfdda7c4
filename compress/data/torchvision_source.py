"""A torchvision dataset by class name (``data.name: CIFAR10``, ``MNIST``, ...) under ``data.root``.

The official test split is the test split; validation is carved from the training split. Images are
converted to the recipe's channels and size with the same PIL steps ``compress predict`` applies.
"""

from __future__ import annotations

import numpy as np
import torch

from compress.data.raw import RawData, geometry
from compress.errors import DatasetError


def _open(cls, cfg, train: bool):
    import inspect

    root = cfg.root or ".data"
    params = inspect.signature(cls).parameters
    kw = {"train": train} if "train" in params else {"split": "train" if train else "test"} if "split" in params else {}
    if not kw:
        raise DatasetError(f"data.name = {cfg.name!r}: torchvision's {cls.__name__} has neither a train flag nor a "
                           "split argument; use source: import with a factory that returns its splits")
    try:
        return cls(root, download=cfg.download, **kw)
    except (RuntimeError, OSError) as err:
        hint = "" if cfg.download else " (data.download is false; set it true where the network allows)"
        raise DatasetError(f"torchvision {cls.__name__} not found under {root}: {err}{hint}") from None


def _to_arrays(ds, geometry) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    xs = np.empty((len(ds), *geometry.shape), dtype=np.uint8)
    ys = np.empty(len(ds), dtype=np.int64)
    for i in tqdm(range(len(ds)), desc=f"reading {type(ds).__name__}", leave=False, mininterval=2.0, disable=None):
        img, y = ds[i]
        xs[i], ys[i] = geometry.prepare_image(img), int(y)
    return torch.from_numpy(xs), torch.from_numpy(ys)


def load(cfg):
    import torchvision.datasets as tvd


    cls = getattr(tvd, cfg.name, None)
    if cls is None or not isinstance(cls, type):
        raise DatasetError(f"data.name = {cfg.name!r}: torchvision.datasets has no such dataset; e.g. MNIST, "
                           "FashionMNIST, CIFAR10, SVHN (or use source: folder / arrays / import)")
    train, test = _open(cls, cfg, True), _open(cls, cfg, False)
    first = train[0][0]
    if not hasattr(first, "convert"):
        raise DatasetError(f"torchvision {cfg.name} yields {type(first).__name__}, not PIL images")
    channels = 1 if first.mode in ("L", "1", "I", "F") else 3
    geo = geometry(cfg, channels, first.size[1], first.size[0])
    labels = list(getattr(train, "classes", []) or []) or None
    return RawData("image", _to_arrays(train, geo), None, _to_arrays(test, geo), labels=labels,
                   description=f"torchvision {cfg.name}", augment=("shift", "hflip"), prepared=True)
