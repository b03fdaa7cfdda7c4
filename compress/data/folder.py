"""An image folder tree read by torchvision's ``ImageFolder`` (one sub-folder per class).

Either one tree (``data.root``), from which the test split (``data.test_fraction``) and then the
validation split are carved by ``data.split_seed``, or separate ``train_dir`` / ``val_dir`` / ``test_dir``
trees with the same class folders. Every image is converted to the recorded channels and size with the
PIL steps ``compress predict`` applies, and held in memory as uint8, or, for a tree larger than
``data.max_memory_mb`` (or with ``data.stream: true``), read from disk batch by batch by DataLoader workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.data.raw import LazyImages, RawData, geometry, open_image, take
from compress.errors import DatasetError


def _tree(path: str):
    from torchvision.datasets import ImageFolder

    if not Path(path).is_dir():
        raise DatasetError(f"image folder {path}: no such folder")
    try:
        return ImageFolder(path, loader=lambda p: p)  # paths only; images are opened below
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetError(f"image folder {path}: {err}; expected one sub-folder of images per class") from None


def _lazy(tree, geometry, workers: int):
    return LazyImages([p for p, _ in tree.samples], geometry, workers), torch.tensor([y for _, y in tree.samples])


def _read(tree, geometry) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    xs = np.empty((len(tree.samples), *geometry.shape), dtype=np.uint8)
    ys = np.empty(len(tree.samples), dtype=np.int64)
    for i, (p, y) in enumerate(tqdm(tree.samples, desc=f"reading {tree.root}", leave=False, mininterval=2.0, disable=None)):
        xs[i] = open_image(p, geometry.prepare_image)
        ys[i] = y
    return torch.from_numpy(xs), torch.from_numpy(ys)


def load(cfg):
    trees = {"train": _tree(cfg.train_dir or cfg.root)}
    if cfg.train_dir:
        trees["test"] = _tree(cfg.test_dir)
        if cfg.val_dir:
            trees["val"] = _tree(cfg.val_dir)
    classes = trees["train"].classes
    for name, t in trees.items():
        if t.classes != classes:
            raise DatasetError(f"image folder {t.root}: classes {t.classes} differ from the training tree's {classes}; "
                               "every split needs the same class folders")
    mode, (width, height) = open_image(trees["train"].samples[0][0], lambda img: (img.mode, img.size))
    geo = geometry(cfg, 1 if mode in ("L", "1", "I", "I;16", "F") else 3, height, width)
    n_bytes = sum(len(t.samples) for t in trees.values()) * int(np.prod(geo.shape))
    stream = cfg.stream if cfg.stream is not None else n_bytes > cfg.max_memory_mb * 2**20
    parts = {k: _lazy(t, geo, cfg.workers) if stream else _read(t, geo) for k, t in trees.items()}
    if "test" not in parts:  # one tree: hold out the test split, seeded and fixed

        x, y = parts["train"]
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.split_seed + 1))
        n_test = max(1, int(round(cfg.test_fraction * len(y))))
        parts = {"train": (take(x, perm[n_test:]), y[perm[n_test:]]), "test": (take(x, perm[:n_test]), y[perm[:n_test]])}
    where = cfg.train_dir or cfg.root
    return RawData("image", parts["train"], parts.get("val"), parts["test"], labels=list(classes),
                   description=f"image folder {where}", augment=("shift", "hflip"), prepared=True)
