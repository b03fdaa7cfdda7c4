import numpy as np
import onnx
import pytest
import torch

from compress.export import ParityError, check_parity, export_onnx, onnx_logits
from compress.models import create_model


def test_export_is_checked_dynamic_batch_and_matches_pytorch(tmp_path, tiny_data):
    model = create_model("cnn", width=8, depth=1).eval()
    path = export_onnx(model, tmp_path / "m.onnx", opset=17)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    parity = check_parity(model, path, tiny_data.val, int8=False)
    assert parity["max_abs_logit_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert onnx_logits(path, x).shape == (3, 10)


def test_parity_failure_raises_with_numbers(tmp_path, tiny_data):
    model = create_model("cnn", width=8, depth=1).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the PyTorch model no longer matches the exported file
    with pytest.raises(ParityError, match=r"max abs logit difference vs PyTorch is 1\.00e\+00"):
        check_parity(model, path, tiny_data.val, int8=False)
