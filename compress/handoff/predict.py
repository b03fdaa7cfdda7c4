"""``compress predict``: input files read and preprocessed as the bundle's spec records, then labelled by
its model. No torch."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from compress.errors import BundleError
from compress.handoff.common import batched_logits, open_session, bundle_spec
from compress.handoff.verify import load_manifest, model_problems
from compress.spec import InputSpec


def _pixel_forms(spec: InputSpec) -> list[tuple[int, ...]]:
    c, h, w = spec.shape
    return [(c, h, w), (h, w, c)] + ([(h, w)] if c == 1 else [])


def _image_array(arr: np.ndarray, spec: InputSpec, p: str) -> np.ndarray:
    c, h, w = spec.shape
    if arr.dtype == np.float32 and arr.shape[-3:] == spec.shape and arr.ndim in (3, 4):
        return arr.reshape(-1, *spec.shape)  # already preprocessed (samples/inputs.npy is such a file)
    forms = _pixel_forms(spec)
    if arr.dtype == np.uint8:
        batch = arr[None] if arr.shape in forms else arr
        if batch.ndim >= 3 and batch.shape[1:] == (c, h, w):
            return spec.normalize(batch)
        if batch.ndim >= 3 and batch.shape[1:] == (h, w, c):
            return spec.normalize(batch.transpose(0, 3, 1, 2))
        if batch.ndim >= 3 and batch.shape[1:] == (h, w) and c == 1:
            return spec.normalize(batch[:, None])
    raise BundleError(
        f"{p}: array of shape {arr.shape} and dtype {arr.dtype} does not fit; expected uint8 pixels shaped "
        f"{' or '.join(map(str, forms))} (with or without a leading N), or preprocessed float32 shaped "
        f"{spec.shape} or (N, {', '.join(map(str, spec.shape))})")


def _vector_array(arr: np.ndarray, spec: InputSpec, p: str) -> np.ndarray:
    d = spec.shape[0]
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or arr.ndim not in (1, 2):
        raise BundleError(f"{p}: array of shape {arr.shape} and dtype {arr.dtype} does not fit; expected raw "
                          f"features as numbers shaped ({d},) or (N, {d})")
    if arr.shape[-1] != d:
        raise BundleError(f"{p}: {arr.shape[-1]} features per sample (array shape {arr.shape}); the model takes "
                          f"{d}: shape ({d},) or (N, {d})")
    return spec.normalize(arr.reshape(-1, d))


def _read_csv(path: Path, spec: InputSpec) -> np.ndarray:
    d, rows = spec.shape[0], []
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in row]
                while cells and not cells[-1]:  # trailing commas
                    cells.pop()
                if not cells:
                    continue
                try:
                    values = [float(c) for c in cells]
                except ValueError:
                    if not rows and i == 1:  # a header row
                        continue
                    raise BundleError(f"{path}: row {i} holds a value that is not a number; expected {d} numbers "
                                      "per row") from None
                if len(values) != d:
                    raise BundleError(f"{path}: row {i} has {len(values)} values; the model takes {d} features per row")
                rows.append(values)
    except (UnicodeDecodeError, csv.Error) as err:
        raise BundleError(f"{path}: not a readable CSV file ({err}); expected rows of {d} numbers") from None
    if not rows:
        raise BundleError(f"{path}: no data rows; expected rows of {d} numbers (a header row is optional)")
    return spec.normalize(np.asarray(rows, dtype=np.float32))


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise BundleError("reading images needs Pillow (pip install pillow); or pass .npy arrays") from None
    if path.suffix.lower() not in Image.registered_extensions():
        raise BundleError(f"{path}: unsupported input type {path.suffix!r}; this model takes images (any format "
                          "Pillow reads: PNG, JPEG, BMP, WebP, ...) or .npy arrays")
    try:
        with Image.open(path) as img:
            return spec.normalize(spec.prepare_image(img)[None])
    except UnidentifiedImageError:
        raise BundleError(f"{path}: not an image Pillow can read; expected an image file (PNG, JPEG, BMP, WebP, ...) "
                          "or a .npy array") from None
    except OSError as err:  # truncated or corrupt
        raise BundleError(f"{path}: unreadable image ({err})") from None


def load_inputs(paths: list[str], spec: InputSpec) -> tuple[np.ndarray, list[str]]:
    """Files -> float32 model inputs, preprocessed as ``spec`` records, and a name per input.

    Images: any image file Pillow opens, of any size and mode (converted, resized as the training data
    were), or ``.npy`` arrays of uint8 pixels (H x W for one channel, C x H x W or H x W x C, with or
    without a leading N) or already-preprocessed float32 of the model's shape. Vectors: ``.npy`` (D or
    N x D raw features) or ``.csv`` (D numbers per row; a header row is skipped).
    """
    batches, names = [], []
    for p in paths:
        path = Path(p)
        suffix = path.suffix.lower()
        if not path.is_file():
            raise BundleError(f"{p}: no such file")
        if suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise BundleError(f"{p}: not a readable .npy array ({err})") from None
            x = _image_array(arr, spec, p) if spec.kind == "image" else _vector_array(arr, spec, p)
        elif spec.kind == "vector":
            if suffix != ".csv":
                raise BundleError(f"{p}: unsupported input type {suffix!r}; this model takes feature vectors of "
                                  f"{spec.shape[0]} values: .npy arrays or .csv rows")
            x = _read_csv(path, spec)
        else:
            x = _read_image(path, spec)
        batches.append(x.astype(np.float32))
        names += [f"{path.name}[{i}]" for i in range(len(x))] if len(x) > 1 else [path.name]
    return np.concatenate(batches), names


def predict(folder: str | Path, inputs: list[str], check: bool = True) -> list[dict]:
    """Label ``inputs`` (files, see ``load_inputs``) with the bundle's model: label, index, probabilities.
    ``check``: first make sure the model is the bundle's (``model_problems``); refused when it is not."""
    folder = Path(folder)
    m = load_manifest(folder)
    x, names = load_inputs(inputs, bundle_spec(m))
    sess = open_session(folder / "model.onnx")
    wrong = model_problems(folder, m, sess) if check else []
    if wrong:  # the labels printed would not be the bundle's model's
        raise BundleError(f"{folder}: {wrong[0]}; run `compress verify {folder}` (or label with it anyway: "
                          "--no-verify)")
    logits = batched_logits(sess, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    return [{"input": n, "label": m["labels"][int(p.argmax())], "index": int(p.argmax()),
             "probabilities": {lab: round(float(v), 6) for lab, v in zip(m["labels"], p)}}
            for n, p in zip(names, probs)]
