"""Datasets, the fixed train/validation split, batches, calibration images and data fingerprints.

Fashion-MNIST is read by torchvision from the IDX files that Debian's ``dataset-fashion-mnist`` package
installs (or that torchvision downloads). The whole dataset fits in memory as uint8 tensors (~55 MB),
so batches are sliced from tensors instead of going through a DataLoader.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress.recipe import DataConfig
from compress.errors import DatasetError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(".data")
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# Per-pixel statistics of the Fashion-MNIST training set; the model card repeats them for serving.
MEAN, STD = 0.2860, 0.3530
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
INPUT_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N x 28 x 28
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, idx=slice(None)) -> torch.Tensor:
        """Normalised float32 model inputs, N x 1 x 28 x 28."""
        return normalize(self.images[idx])

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    fingerprint: str  # sha256 over the three splits' pixels and labels, in order
    labels: tuple[str, ...] = tuple(LABELS)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    return ((images_u8.float() / 255.0) - MEAN).div_(STD).unsqueeze(1)


def _stage_raw(root: Path) -> None:
    """Give torchvision its ``<root>/FashionMNIST/raw/`` layout, extracting Debian's .gz files there."""
    from torchvision.datasets.utils import extract_archive

    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FILES):
        return
    if not all((DEBIAN_DIR / f"{f}.gz").is_file() for f in FILES):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        tmp = raw / f"{f}.gz"
        shutil.copyfile(DEBIAN_DIR / f"{f}.gz", tmp)
        extract_archive(str(tmp), str(raw), remove_finished=True)


def _read(root: Path):
    from torchvision.datasets import FashionMNIST

    _stage_raw(root)
    try:
        train = FashionMNIST(str(root), train=True, download=False)
        test = FashionMNIST(str(root), train=False, download=False)
    except RuntimeError:
        try:
            train = FashionMNIST(str(root), train=True, download=True)
            test = FashionMNIST(str(root), train=False, download=True)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
            raise DatasetError(
                f"Fashion-MNIST not found under {DEBIAN_DIR} or {root}, and torchvision could not download it "
                f"({type(err).__name__}: {err}).\nGet it one of two ways:\n"
                "  1. apt-get install dataset-fashion-mnist   (Debian; `make setup` does this when apt-get works)\n"
                f"  2. put the four IDX files (train/t10k images/labels) under {root}/FashionMNIST/raw/"
            ) from None
    return train, test


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load Fashion-MNIST with the fixed train/validation split; subsets apply for tiny runs."""
    root = Path(cfg.root) if cfg.root else CACHE_DIR
    train, test = _read(root)
    gen = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(len(train.targets), generator=gen)
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    tr = Split(train.data[train_idx], train.targets[train_idx]).head(cfg.train_subset)
    va = Split(train.data[val_idx], train.targets[val_idx]).head(cfg.val_subset)
    te = Split(test.data, test.targets).head(cfg.test_subset)
    h = hashlib.sha256()
    for s in (tr, va, te):
        h.update(s.images.numpy().tobytes())
        h.update(s.labels.numpy().tobytes())
    return Dataset(tr, va, te, h.hexdigest())


def calibration_inputs(split: Split, n: int, seed: int) -> tuple[np.ndarray, str]:
    """``n`` normalised training images for int8 calibration, and their fingerprint."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=gen)[: min(n, len(split))]
    x = split.inputs(idx).numpy()
    return x, hashlib.sha256(x.tobytes()).hexdigest()


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels and horizontal flips, per image (N x 1 x H x W floats)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), value=float(images.min()))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def batches(split: Split, batch_size: int, gen: torch.Generator | None = None):
    """Yield (index, inputs, labels); shuffled when a generator is given."""
    n = len(split)
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield idx, split.inputs(idx), split.labels[idx]


