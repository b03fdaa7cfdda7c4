"""Datasets behind one ``load_dataset(cfg)``: the source, the fixed split, the input specification.

Each source (``data.source`` in the recipe) is one module here that reads the data through the library
made for it and returns raw splits: uint8 images N x C x H x W already at the model's size and channels,
or float32 feature vectors N x D. This module then carves the validation split from the training one
when the data has none (seeded, fixed), computes the normalisation on the training split when the recipe
omits it, and records everything in one ``InputSpec`` (``compress.spec``) that every later stage reads.

The splits are held in memory as raw tensors and normalised per batch (Fashion-MNIST is ~55 MB,
CIFAR-10 ~180 MB); a folder tree larger than memory is streamed from disk (``LazyImages``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from dataclasses import dataclass

import numpy as np
import torch

from compress.data.raw import LazyImages, RawData, geometry, take  # noqa: F401 (the sources' types)
from compress.errors import DatasetError
from compress.measure.hostlock import batch
from compress.recipe import DataConfig
from compress.spec import InputSpec

INPUT_SHAPE = (1, 28, 28)  # the demo's; everything else reads Dataset.spec.shape


@dataclass(frozen=True)
class Split:
    raw: torch.Tensor  # uint8 N x C x H x W images, or float32 N x D vectors
    labels: torch.Tensor  # int64, N
    mean: torch.Tensor  # broadcastable to one sample
    std: torch.Tensor
    divide: float = 255.0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return isinstance(self.raw, LazyImages)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return ((raw.float() / self.divide) - self.mean).div_(self.std)

    def inputs(self, idx=slice(None)) -> torch.Tensor:
        """Normalised float32 model inputs for the samples at ``idx`` (read from disk when streamed)."""
        raw = self.raw[idx]
        return self.normalize(raw if torch.is_tensor(raw) else raw[torch.arange(len(raw))])

    def head(self, n: int | None) -> "Split":
        return self if n is None else dataclasses.replace(self, raw=self.raw[:n], labels=self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    fingerprint: str  # sha256 over the three splits' raw samples and labels, in order
    spec: InputSpec

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels


SOURCES = {"fashion_mnist": "compress.data.fashion_mnist", "torchvision": "compress.data.torchvision_source",
           "folder": "compress.data.folder", "arrays": "compress.data.arrays", "import": "compress.data.imported"}


def _fit_images(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 N x C x H x W -> the spec's channels and size, through the same PIL steps predict uses."""
    if tuple(x.shape[1:]) == spec.shape and not spec.resize:  # with resize, predict zooms and crops even these
        return x
    from PIL import Image

    arr = x.numpy()
    out = np.empty((len(arr), *spec.shape), dtype=np.uint8)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        out[i] = spec.prepare_image(pil)
    return torch.from_numpy(out)


def _stats(kind: str, train: torch.Tensor, divide: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if kind == "image":
        x = train.float().div_(divide)
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    else:
        mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature: centred, not scaled
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read ``cfg.source`` and return the fixed train / validation / test splits with their InputSpec."""
    raw: RawData = importlib.import_module(SOURCES[cfg.source]).load(cfg)
    train_x, train_y = raw.train
    if raw.val is not None:
        val_x, val_y = raw.val
    else:
        n_val = int(round(cfg.val_fraction * len(train_y))) if cfg.val_fraction else cfg.val_size
        if n_val >= len(train_y):
            raise DatasetError(f"data.val_size = {n_val}, but the training set has only {len(train_y)} samples; "
                               "set data.val_size (or data.val_fraction) lower")
        gen = torch.Generator().manual_seed(cfg.split_seed)
        perm = torch.randperm(len(train_y), generator=gen)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        train_x, train_y, val_x, val_y = take(train_x, train_idx), train_y[train_idx], take(train_x, val_idx), train_y[val_idx]
    test_x, test_y = raw.test
    spec = _spec(cfg, raw, train_x, train_y)
    splits = []
    for x, y, n in ((train_x, train_y, cfg.train_subset), (val_x, val_y, cfg.val_subset), (test_x, test_y, cfg.test_subset)):
        if raw.kind == "image" and not raw.prepared:
            x = _fit_images(x, spec)
        shape = (-1, 1, 1) if raw.kind == "image" else (-1,)
        mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(shape)
        std = torch.tensor(spec.std, dtype=torch.float32).reshape(shape)
        if len(spec.mean) == 1:  # one statistic for every channel: a scalar
            mean, std = float(spec.mean[0]), float(spec.std[0])
        splits.append(Split(x, y.long(), mean, std, spec.divide).head(n))
    tr, va, te = splits
    _check_labels(tr, va, te, spec)
    h = hashlib.sha256()
    for s in (tr, va, te):
        h.update(s.raw.fingerprint().encode() if s.streamed else s.raw.numpy().tobytes())
        h.update(s.labels.numpy().tobytes())
    return Dataset(tr, va, te, h.hexdigest(), spec)


def _spec(cfg: DataConfig, raw: RawData, train_x: torch.Tensor, train_y: torch.Tensor) -> InputSpec:
    if raw.kind == "image":
        base = geometry(cfg, *train_x.shape[1:])
        if not raw.prepared and (tuple(train_x.shape[1:]) != base.shape or base.resize):
            train_x = _fit_images(train_x[:20000], base)  # statistics on (up to) 20k fitted images
    else:
        base = InputSpec("vector", (int(train_x.shape[1]),), (), (0.0,), (1.0,), 1.0)
    if isinstance(train_x, LazyImages):  # statistics from a seeded sample of 2,000 streamed images
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.split_seed))[:2000]
        train_x = train_x[pick]
    if cfg.mean is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif raw.mean is not None:
        mean, std = raw.mean, raw.std
    else:
        mean, std = _stats(raw.kind, train_x, base.divide)
    n_classes = int(train_y.max()) + 1 if len(train_y) else 0
    if not (cfg.labels or raw.labels):
        _check_inferred_classes(train_y, n_classes)
    labels = cfg.labels or raw.labels or [str(i) for i in range(n_classes)]
    if len(labels) < n_classes:
        raise DatasetError(f"data.labels names {len(labels)} classes, but the training labels go up to "
                           f"{n_classes - 1} ({n_classes} classes); give one name per class")
    if len(labels) < 2:
        raise DatasetError(f"the data have one class ({', '.join(map(str, labels)) or 'none'}): a classifier needs "
                           "two at least; check the data source (an image folder needs one sub-folder per class)")
    try:
        return dataclasses.replace(base, labels=tuple(str(v) for v in labels), mean=mean, std=std,
                                   source=raw.description, augment=raw.augment)
    except ValueError as err:
        raise DatasetError(f"data.mean / data.std: {err} (the input has {base.shape[0]} "
                           f"{'channels' if raw.kind == 'image' else 'features'})") from None


def _check_inferred_classes(train_y: torch.Tensor, n_classes: int) -> None:
    """Classes counted from the labels (none named): labels with gaps are a mistake in the data."""
    empty = [i for i, n in enumerate(train_y.bincount(minlength=n_classes).tolist()) if n == 0]
    if empty:
        raise DatasetError(f"the training labels go up to {n_classes - 1} ({n_classes} classes), but class(es) "
                           f"{', '.join(map(str, empty))} have no training sample: a label outside the real classes? "
                           "Labels must be class indices 0..K-1; name the classes in data.labels if some have no "
                           "training sample on purpose")


def _check_labels(tr: Split, va: Split, te: Split, spec: InputSpec) -> None:
    for name, s in (("train", tr), ("validation", va), ("test", te)):
        if len(s) == 0:
            raise DatasetError(f"the {name} split is empty; check the data source and the subset sizes")
        lo, hi = int(s.labels.min()), int(s.labels.max())
        if lo < 0 or hi >= spec.num_classes:
            raise DatasetError(f"the {name} split has label {hi if hi >= spec.num_classes else lo}, outside 0.."
                               f"{spec.num_classes - 1} ({spec.num_classes} classes); labels must be class indices")



def split_overlaps(data: Dataset) -> list[str]:
    """Warnings for inputs that appear in two splits (identical bytes): accuracy on them is not held out.
    Streamed images are not read for this."""
    splits = {"training": data.train, "validation": data.val, "test": data.test}
    if any(s.streamed for s in splits.values()):
        return []
    seen = {name: {hashlib.blake2b(row.tobytes(), digest_size=16).digest()
                   for row in s.raw.numpy().reshape(len(s), -1)} for name, s in splits.items()}
    out = []
    for a, b in (("validation", "training"), ("test", "training"), ("test", "validation")):
        n = len(seen[a] & seen[b])
        if n:
            out.append(f"WARNING: {n} {a} input(s) also in the {b} split (identical): {a} accuracy is not held out "
                       f"on them{', and it chooses the models' if a == 'validation' else ''}; remove the duplicates")
    return out


def calibration_inputs(split: Split, n: int, seed: int) -> tuple[np.ndarray, str]:
    """``n`` normalised training samples for int8 calibration, and their fingerprint."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=gen)[: min(n, len(split))]
    x = split.inputs(idx).numpy()
    return x, hashlib.sha256(x.tobytes()).hexdigest()


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 2,
            kinds: tuple[str, ...] = ("shift", "hflip")) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels and/or horizontal flips, per image (N x C x H x W floats)."""
    out = images
    n, c, h, w = images.shape
    if "shift" in kinds:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), value=float(images.min()))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, c, h, w + 2 * pad)
        out = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, c, h, w)
        out = out.gather(3, cols)
    if "hflip" in kinds:
        out = out.clone() if out is images else out
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


class _BatchReader(torch.utils.data.Dataset):
    """Item i is the i-th batch of ``order``: what a DataLoader worker reads from disk."""

    def __init__(self, raw: LazyImages, order: torch.Tensor, batch_size: int):
        self.raw, self.order, self.batch_size = raw, order, batch_size

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        return idx, self.raw[idx]


def batches(split: Split, batch_size: int, gen: torch.Generator | None = None):
    """Yield (index, inputs, labels); shuffled when a generator is given. Streamed images are read by
    DataLoader workers, a few batches ahead."""
    n = len(split)
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    if split.streamed:
        workers = split.raw.workers
        loader = torch.utils.data.DataLoader(_BatchReader(split.raw, order, batch_size), batch_size=None,
                                             num_workers=workers, prefetch_factor=2 if workers else None)
        for idx, raw in loader:
            with batch():  # a neighbour's measurement waits for it, and it waits for the measurement
                yield idx, split.normalize(raw), split.labels[idx]
        return
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        with batch():  # while another process on this host times a model, wait (compress.measure.hostlock)
            yield idx, split.inputs(idx), split.labels[idx]
