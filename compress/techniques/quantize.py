"""int8 post-training static quantization with ONNX Runtime's quantizer.

``quant_pre_process`` (shape inference + graph optimisation) first, as ONNX Runtime recommends; then
``quantize_static`` with uint8 activations and int8 weights (the VNNI fast path on x86), per-channel
weights, and the recipe's calibration method on images from the training split. Convolutions are never
quantized dynamically: ConvInteger is many times slower than fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from compress.measure.hostlock import batch
from compress.recipe import QuantizeConfig
from compress.export import INPUT_NAME
from compress.measure.latency import environment

CALIBRATION_BATCH = 64
FORMAT_NAMES = {"qdq": "QDQ", "qoperator": "QOperator"}  # recipe value -> ONNX Runtime's QuantFormat member


class _Reader:
    """An onnxruntime CalibrationDataReader over an in-memory array. ONNX Runtime runs each batch on every
    core, so each is held as a batch of heavy work (``hostlock.batch``): a neighbour's latency measurement
    waits for it instead of reading an inflated p95 (measured: results/README.md, calibration_neighbour.json)."""

    def __init__(self, input_name: str, inputs: np.ndarray):
        self._batches = iter([{input_name: inputs[i : i + CALIBRATION_BATCH]}
                              for i in range(0, len(inputs), CALIBRATION_BATCH)])
        self._held = contextlib.ExitStack()

    def get_next(self):
        self._held.close()  # the batch handed out before has been run
        item = next(self._batches, None)
        if item is not None:
            self._held.enter_context(batch())
        return item

    def close(self) -> None:
        self._held.close()


def reduce_range(cfg: QuantizeConfig) -> bool:
    """``quantize.reduce_range``, resolved: None is on exactly when this CPU has no VNNI instructions."""
    if cfg.reduce_range is not None:
        return cfg.reduce_range

    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(environment()["flags"])


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, cfg: QuantizeConfig) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process


    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    fmt = QuantFormat[FORMAT_NAMES[cfg.format]]
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        # The histogram calibrators print their progress ("Collecting tensor data ..."): not for our users.
        reader = _Reader(INPUT_NAME, calibration)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.closing(reader):
            quantize_static(
                str(pre), str(out_path), reader,
                quant_format=fmt, per_channel=cfg.per_channel, reduce_range=reduce_range(cfg),
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=method,
                # Calibration tensors are kept in a temp dir of their own, not next to the model.
                extra_options={"CalibTensorRangeSymmetric": False},
                calibration_providers=["CPUExecutionProvider"],
            )
    return out_path
