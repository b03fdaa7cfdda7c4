"""ONNX export (opset >= 17, dynamic batch axis, checked) and parity against PyTorch."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compress.data import INPUT_SHAPE, Split
from compress.errors import CompressError, ParityError
from compress.io import copy_atomic
from compress.spec import INPUT_NAME, OUTPUT_NAME
from compress.data import batches
from compress.measure.latency import make_session
from compress.train import predict_logits


class ExportError(CompressError):
    """No torch.onnx exporter could export the model."""


def _torchscript_export(model, dummy, path: Path, opset: int) -> None:
    # The TorchScript exporter folds BatchNorm into Conv and needs no onnxscript graph rewrites for plain
    # CNNs; it is deprecated upstream, so the dynamo exporter is the fallback for what it cannot trace.
    torch.onnx.export(model, (dummy,), str(path), opset_version=opset, dynamo=False,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _dynamo_export(model, dummy, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (dummy,), str(path), opset_version=opset, dynamo=True, external_data=False,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},))


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17, input_shape=INPUT_SHAPE) -> Path:
    """Export ``model`` for samples of ``input_shape`` (eval mode, batch axis dynamic) through whichever
    torch.onnx exporter works for it, and run ``onnx.checker`` on the file. A teacher that is an ONNX file
    already is copied as it is."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = getattr(model, "path", None)
    if source is not None and Path(source).suffix == ".onnx":  # an OnnxTeacher
        return copy_atomic(source, path)
    # Written beside and moved into place: a neighbour worker reading ``path`` never sees half a file.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    model = model.eval().to(memory_format=torch.contiguous_format)
    errors = []
    # dynamo specialises a dimension of size 1, so its example batch is 2.
    for name, export, batch in (("TorchScript", _torchscript_export, 1), ("dynamo", _dynamo_export, 2)):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                export(model, torch.zeros(batch, *input_shape), tmp, opset)
            onnx.checker.check_model(str(tmp), full_check=True)
            return tmp.replace(path)
        except Exception as err:  # noqa: BLE001 - try the next exporter, report both
            errors.append(f"{name} exporter: {type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}")
            tmp.unlink(missing_ok=True)
    raise ExportError(f"could not export {type(model).__name__} to ONNX (opset {opset}, input "
                      f"{[1, *input_shape]}): " + "; ".join(errors))


def onnx_logits(path: str | Path, inputs: np.ndarray, batch_size: int = 500) -> np.ndarray:
    sess = make_session(path, threads=0)  # 0: all cores; parity is not a timing
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: inputs[i : i + batch_size]})[0]
                           for i in range(0, len(inputs), batch_size)])


def _onnx_batches(path: str | Path, split: Split, batch_size: int = 500):
    """(inputs, labels, ONNX logits) batch by batch: a streamed split never sits in memory."""

    sess = make_session(path, threads=0)  # 0: all cores; this is not a timing
    name = sess.get_inputs()[0].name
    for _, x, y in batches(split, batch_size):
        yield x, y, sess.run(None, {name: x.numpy()})[0]


def onnx_correct(path: str | Path, split: Split) -> np.ndarray:
    """Per-sample top-1 correctness of an ONNX model on ``split``, in order (for paired tests)."""
    return np.concatenate([got.argmax(1) == y.numpy() for _, y, got in _onnx_batches(path, split)])


def onnx_accuracy(path: str | Path, split: Split) -> float:
    """Top-1 accuracy of an ONNX model on ``split``."""
    return float(onnx_correct(path, split).mean())


def reference_logits(model: nn.Module, split: Split) -> np.ndarray:
    """PyTorch's fp32 logits for ``split``, in order: computed once for both parity checks of one model (its
    fp32 export and its int8 copy), as a pass is a large share of a trial. The unchanged teacher reads its
    own from a cache (``compress.data.teacher_logits.cached_teacher_logits(exact=True)``)."""

    return predict_logits(model, split, 500).numpy()


def check_parity(model: nn.Module, path: str | Path, split: Split, *, int8: bool,
                 max_abs_diff: float = 1e-3, min_agreement: float = 0.99, reference: np.ndarray | None = None) -> dict:
    """Compare ONNX and PyTorch on ``split`` (batch by batch; PyTorch's logits from ``reference`` when given,
    see ``reference_logits``); raise ParityError naming the numbers when it fails. fp32: ``max_abs_diff`` per
    unit of the largest logit magnitude (at least 1), as float rounding grows with the logits' scale."""
    model.eval()
    diff, scale, same, n = 0.0, 1.0, 0, 0
    for x, _, got in _onnx_batches(path, split):
        if reference is not None:
            ref = reference[n:n + len(x)]
        else:
            with torch.no_grad():
                ref = model(x).numpy()
        diff, scale = max(diff, float(np.abs(ref - got).max())), max(scale, float(np.abs(ref).max()))
        same += int((ref.argmax(1) == got.argmax(1)).sum())
        n += len(x)
    agree = same / n
    result = {"max_abs_logit_diff": diff, "logit_scale": scale, "top1_agreement": agree, "n": int(n), "int8": int8}
    if int8 and agree < min_agreement:
        raise ParityError(f"{path}: int8 top-1 agreement with PyTorch is {agree:.4f} on {n} validation "
                          f"images, below the required {min_agreement} (max abs logit diff {diff:.4f}). "
                          "Try quantize.calibration=percentile or entropy, a larger calibration_size, "
                          "quantize.reduce_range: true, or fp32.")
    if not int8 and diff > max_abs_diff * scale:
        raise ParityError(f"{path}: fp32 max abs logit difference vs PyTorch is {diff:.2e}, above the allowed "
                          f"{max_abs_diff:.0e} x {scale:.3g} (the largest logit magnitude; top-1 agreement "
                          f"{agree:.4f}).")
    return result
