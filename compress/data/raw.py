"""What a data source returns, and the streamed images of a folder tree larger than memory: the types
every source module and ``load_dataset`` share."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from compress.errors import DatasetError
from compress.recipe import DataConfig
from compress.spec import InputSpec


def open_image(path: str, fn):
    """``fn(PIL image)`` for the image file at ``path``; an unreadable file is named."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return fn(img)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: not a readable image ({type(err).__name__}: {err}); remove or replace it") from None


def read_image(path: str, spec) -> np.ndarray:
    """One image file as the model's uint8 C x H x W pixels (a streamed dataset's reader)."""
    return open_image(path, spec.prepare_image)


@dataclass(frozen=True)
class RawData:
    """What a source module returns: raw splits (val may be None) and what it knows about them."""

    kind: str  # image or vector
    train: tuple[torch.Tensor, torch.Tensor]  # raw samples, int64 labels
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    labels: list[str] | None = None
    mean: tuple[float, ...] | None = None  # the source's published statistics, if any
    std: tuple[float, ...] | None = None
    description: str = ""
    augment: tuple[str, ...] = ()  # the augmentations that make sense for these data
    prepared: bool = False  # images already went through InputSpec.prepare_image (torchvision, folder)


class LazyImages:
    """uint8 N x C x H x W pixels read from image files on demand: a folder tree larger than memory.

    Slicing and ``take`` give lazy subsets (a split, a head); indexing with an index tensor reads those
    images (that is a batch). ``batches`` reads through a DataLoader with ``workers`` processes."""

    def __init__(self, paths: list[str], spec: InputSpec, workers: int = 2):
        self.paths, self.spec, self.workers = list(paths), spec, workers
        self.shape = (len(self.paths), *spec.shape)

    def __len__(self) -> int:
        return len(self.paths)

    def dim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def take(self, idx) -> "LazyImages":
        return LazyImages([self.paths[i] for i in torch.as_tensor(idx).reshape(-1).tolist()], self.spec, self.workers)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return LazyImages(self.paths[idx], self.spec, self.workers)
        one = isinstance(idx, int)
        ids = [idx] if one else torch.as_tensor(idx).reshape(-1).tolist()
        x = torch.from_numpy(np.stack([read_image(self.paths[i], self.spec) for i in ids])) if ids else \
            torch.empty((0, *self.spec.shape), dtype=torch.uint8)
        return x[0] if one else x

    def __array__(self, dtype=None, copy=None):
        arr = self[torch.arange(len(self))].numpy()
        return arr if dtype is None else arr.astype(dtype)

    def fingerprint(self) -> str:
        """Over the files' names, sizes and modification times, and the preparation: no pixel is read."""
        h = hashlib.sha256(repr((self.spec.shape, self.spec.resize)).encode())
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def take(x, idx):
    """Rows ``idx`` of raw samples: a lazy subset of streamed images, a tensor otherwise."""
    return x.take(idx) if isinstance(x, LazyImages) else x[idx]


def geometry(cfg: DataConfig, channels: int, height: int, width: int) -> InputSpec:
    """The image spec before statistics: the recipe's size and channels over the data's own."""
    if cfg.image_size is not None:
        size = cfg.image_size if isinstance(cfg.image_size, list) else [cfg.image_size] * 2
        if len(size) != 2 or min(size) < 1:
            raise DatasetError(f"data.image_size = {cfg.image_size!r}: give one size or [height, width]")
        height, width = size
    return InputSpec("image", (cfg.channels or channels, height, width), (), (0.0,), (1.0,), 255.0, cfg.resize)
