"""Anything else: ``data.factory: package.module:function`` called with ``data.kwargs``.

The function returns ``(train, val, test)`` (val may be None) or a dict with those keys and optionally
``labels``. Each split is ``(x, y)`` arrays (the layout rules of the arrays source) or a map-style
dataset yielding ``(sample, label)`` pairs, where a sample is a PIL image, an array or a tensor.
"""

from __future__ import annotations

import numpy as np

from compress.data.arrays import from_splits
from compress.errors import DatasetError
from compress.imports import import_object


def _is_xy(split) -> bool:
    """(x, y) arrays, not a 2-sample list of (sample, label) pairs: y is a 1-D array of numbers."""
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        return False
    try:
        y = np.asarray(split[1])
    except (ValueError, TypeError):
        return False
    return y.ndim == 1 and np.issubdtype(y.dtype, np.number)


def _as_arrays(split, where: str):
    if _is_xy(split):
        return split
    if not hasattr(split, "__getitem__") or not hasattr(split, "__len__"):
        raise DatasetError(f"{where}: got {type(split).__name__}; return (x, y) arrays or a dataset of (sample, label)")
    xs, ys = [], []
    for i in range(len(split)):
        x, y = split[i]
        if hasattr(x, "convert"):  # PIL image
            x = np.asarray(x)
        elif hasattr(x, "numpy"):
            x = x.numpy()
        xs.append(np.asarray(x))
        ys.append(int(y))
    shapes = sorted({a.shape for a in xs})
    if len(shapes) > 1:
        raise DatasetError(f"{where}: samples have different shapes ({shapes[0]}, {shapes[-1]}, ...); return them at "
                           "one size, or write them as an image folder (source: folder resizes with data.image_size)")
    return np.stack(xs), np.asarray(ys)


def load(cfg):
    fn = import_object(cfg.factory, "data.factory")
    try:
        out = fn(**cfg.kwargs)
    except Exception as err:  # noqa: BLE001 - the user's code: name it and its error
        raise DatasetError(f"data.factory {cfg.factory} raised {type(err).__name__}: {err}") from None
    if isinstance(out, dict):
        parts, labels = {k: out.get(k) for k in ("train", "val", "test")}, out.get("labels")
    elif isinstance(out, (tuple, list)) and len(out) == 3:
        parts, labels = dict(zip(("train", "val", "test"), out)), None
    else:
        raise DatasetError(f"data.factory {cfg.factory} returned {type(out).__name__}; return (train, val, test) "
                           "or a dict with train, val, test and optionally labels")
    if parts["train"] is None or parts["test"] is None:
        raise DatasetError(f"data.factory {cfg.factory}: train and test splits are required (val may be None)")
    where = f"data.factory {cfg.factory}"
    parts = {k: None if v is None else _as_arrays(v, f"{where} ({k})") for k, v in parts.items()}
    return from_splits(parts, where, [str(v) for v in labels] if labels is not None else None, cfg.factory)
