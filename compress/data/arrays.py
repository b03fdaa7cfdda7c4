"""Arrays in a ``.npz`` file (or a folder of ``.npy`` files): ``x_train``, ``y_train``, ``x_test``,
``y_test``, optionally ``x_val``, ``y_val`` and ``labels``.

Images are N x H x W, N x H x W x C or N x C x H x W (C 1 or 3), uint8 pixels or floats in [0, 1] or
[0, 255]; anything 2-D is feature vectors, N x D. ``to_raw`` is shared with the import source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.data.raw import RawData
from compress.errors import DatasetError

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _images_u8(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] in (1, 3):
        pass  # N x C x H x W
    elif x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DatasetError(f"{where}: shape {x.shape} is not N x H x W, N x H x W x C or N x C x H x W with "
                           "1 or 3 channels (2-D arrays are feature vectors)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise DatasetError(f"{where}: dtype {x.dtype} is not numeric")
    x = x.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise DatasetError(f"{where}: float pixels range {lo:g}..{hi:g}; give uint8 pixels or floats in [0, 1] "
                           "or [0, 255] (normalisation is applied by compress and recorded with the model)")
    return np.ascontiguousarray(np.rint(x * 255 if hi <= 1.0 else x).astype(np.uint8))


def to_raw(x, y, where: str) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(kind, raw samples, int64 labels) from array-likes, with the layout rules above."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or x.ndim > 4:
        raise DatasetError(f"{where}: {x.ndim}-D array of shape {x.shape}; expected N x D vectors or images")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{where}: {len(x)} samples but labels of shape {y.shape}; give one integer label each")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DatasetError(f"{where}: labels have dtype {y.dtype}; give integer class indices (and the names "
                               "as data.labels or a 'labels' array)")
    ys = torch.from_numpy(y.astype(np.int64))
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DatasetError(f"{where}: {int((~np.isfinite(x)).sum())} values are NaN or infinite; clean or impute them first")
    if x.ndim == 2:
        if not np.issubdtype(x.dtype, np.number):
            raise DatasetError(f"{where}: dtype {x.dtype} is not numeric")
        return "vector", torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), ys
    return "image", torch.from_numpy(_images_u8(x, where)), ys


def from_splits(parts: dict, where: str, labels=None, description: str = ""):
    """RawData from {'train': (x, y), 'val': (x, y) or None, 'test': (x, y)}, checking the splits agree."""

    out, kinds = {}, set()
    for name in ("train", "val", "test"):
        if parts.get(name) is None:
            out[name] = None
            continue
        kind, x, y = to_raw(*parts[name], f"{where} ({name})")
        kinds.add(kind)
        out[name] = (x, y)
    if len(kinds) > 1:
        raise DatasetError(f"{where}: the splits mix images and vectors")
    shapes = {tuple(v[0].shape[1:]) for v in out.values() if v is not None}
    kind = kinds.pop()
    if kind == "vector" and len(shapes) > 1:
        raise DatasetError(f"{where}: the splits have different feature counts {sorted(shapes)}")
    return RawData(kind, out["train"], out["val"], out["test"], labels=labels, description=description,
                   augment=("shift",) if kind == "image" else ())


def load(cfg):
    path = Path(cfg.path)
    if path.is_dir():
        files = {p.stem: p for p in path.glob("*.npy")}
        arrays = {k: np.load(p, allow_pickle=False) for k, p in files.items()}
    elif path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as err:  # noqa: BLE001 - not an npz, corrupt, pickled objects
            raise DatasetError(f"data.path {path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    else:
        raise DatasetError(f"data.path {path}: no such file or folder (an .npz file, or a folder of .npy files)")
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"data.path {path}: missing {', '.join(missing)}; it has {', '.join(sorted(arrays)) or 'nothing'}. "
                           f"Expected {', '.join(KEYS)} (and optionally x_val, y_val, labels)")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DatasetError(f"data.path {path}: give both x_val and y_val, or neither")
    val = (arrays["x_val"], arrays["y_val"]) if "x_val" in arrays else None
    labels = [str(v) for v in arrays["labels"]] if "labels" in arrays else None
    return from_splits({"train": (arrays["x_train"], arrays["y_train"]), "val": val,
                        "test": (arrays["x_test"], arrays["y_test"])}, f"data.path {path}", labels, f"arrays {path.name}")
