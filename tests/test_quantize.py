import onnx
import pytest
import torch

from compress.data import calibration_inputs
from compress.export import check_parity, export_onnx
from compress.models import create_model
from compress.recipe import QuantizeConfig
from compress.techniques.quantize import quantize_int8


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8_qdq_per_channel(tmp_path, tiny_data, calibration):
    model = create_model("cnn", width=32, depth=1).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    calib, fingerprint = calibration_inputs(tiny_data.train, 64, seed=0)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib, QuantizeConfig(enabled=True, calibration=calibration))
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "ConvInteger" not in ops  # never dynamic quantization of convolutions
    # Per-channel: conv weight scales are vectors, one per output channel.
    graph = onnx.load(str(int8)).graph
    scales = {i.name: i for i in graph.initializer}
    conv_w_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")]
    assert any(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1 for n in conv_w_dq)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    parity = check_parity(model, int8, tiny_data.val, int8=True, min_agreement=0.5)
    assert 0.5 <= parity["top1_agreement"] <= 1.0
    assert len(fingerprint) == 64


def test_qoperator_format_emits_qlinear_ops(tmp_path, tiny_data):
    model = create_model("cnn", width=16, depth=1).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    calib, _ = calibration_inputs(tiny_data.train, 32, seed=0)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib, QuantizeConfig(enabled=True, format="qoperator"))
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QLinearConv" in ops


def test_int8_agreement_gate_raises_with_the_numbers(tmp_path, tiny_data):
    from compress.errors import ParityError

    # Seeded: an untrained CNN from some initialisations predicts one class whatever its input, so clipping
    # changes no prediction (the global RNG's state, which depends on the tests run before, gave one on an H200).
    torch.manual_seed(1)
    model = create_model("cnn", width=8, depth=1).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    calib, _ = calibration_inputs(tiny_data.train, 16, seed=0)
    # Calibrated on inputs 100x too small: every real activation clips, so int8 disagrees with fp32.
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib * 0.01, QuantizeConfig(enabled=True))
    agreement = check_parity(model, int8, tiny_data.val, int8=True, min_agreement=0.0)["top1_agreement"]
    assert agreement < 0.99
    with pytest.raises(ParityError, match=r"int8 top-1 agreement with PyTorch is 0\.\d+ on 300 validation images, "
                                          r"below the required 0.99.*quantize.calibration"):
        check_parity(model, int8, tiny_data.val, int8=True, min_agreement=0.99)


def test_reduce_range_keeps_weights_in_7_bits_and_is_on_without_vnni(tmp_path, tiny_data):
    import numpy as np
    from onnx import numpy_helper

    from compress.measure.latency import environment
    from compress.techniques.quantize import reduce_range

    model = create_model("cnn", width=8, depth=1).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    calib, _ = calibration_inputs(tiny_data.train, 32, seed=0)
    widest = {}
    for rr in (False, True):
        int8 = quantize_int8(fp32, tmp_path / f"int8_{rr}.onnx", calib, QuantizeConfig(enabled=True, reduce_range=rr))
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
        widest[rr] = max(int(np.abs(w.astype(int)).max()) for w in weights)
    assert widest[True] <= 64 < widest[False]  # 7-bit weights: no u8 x s8 pair can saturate 16 bits
    has_vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(environment()["flags"]))
    assert reduce_range(QuantizeConfig()) is (not has_vnni)
    assert reduce_range(QuantizeConfig(reduce_range=False)) is False


def test_each_calibration_run_is_held_as_heavy_work_a_neighbours_measurement_waits_for(tmp_path, tiny_data, monkeypatch):
    """ONNX Runtime runs each calibration batch on every core: each run is inside compress.measure.hostlock.batch (a
    worker timing its candidate meanwhile waits for it), and nothing stays held once quantize_int8 returns."""
    import contextlib

    import onnxruntime as ort

    import compress.techniques.quantize as q

    state = {"inside": 0, "entered": 0, "runs": []}

    @contextlib.contextmanager
    def batch():
        state["inside"] += 1
        state["entered"] += 1
        try:
            yield
        finally:
            state["inside"] -= 1

    real_run = ort.InferenceSession.run

    def run(self, *args, **kwargs):
        state["runs"].append(state["inside"])
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(q, "batch", batch)
    monkeypatch.setattr(ort.InferenceSession, "run", run)
    fp32 = export_onnx(create_model("cnn", width=8, depth=1).eval(), tmp_path / "fp32.onnx")
    calib, _ = calibration_inputs(tiny_data.train, 3 * q.CALIBRATION_BATCH, seed=0)
    assert len(calib) == 3 * q.CALIBRATION_BATCH
    for method in ("minmax", "percentile"):
        state.update(entered=0, runs=[])
        quantize_int8(fp32, tmp_path / f"{method}.onnx", calib, QuantizeConfig(enabled=True, calibration=method))
        assert state["runs"] == [1, 1, 1], (method, state)
        assert state["entered"] == 3 and state["inside"] == 0, (method, state)
