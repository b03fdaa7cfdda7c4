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


def test_parity_takes_pytorchs_logits_computed_once(tmp_path, tiny_data):
    """``reference``: PyTorch's logits from an earlier pass (one for a model's fp32 export and its int8 copy)
    give the numbers a fresh pass gives; they, not the model, are what the file is compared with."""
    from compress.export import reference_logits

    model = create_model("cnn", width=8, depth=1).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    ref = reference_logits(model, tiny_data.val)
    assert ref.shape == (len(tiny_data.val), 10)
    once, fresh = (check_parity(model, path, tiny_data.val, int8=False, **kw) for kw in ({"reference": ref}, {}))
    assert once["top1_agreement"] == fresh["top1_agreement"] == 1.0 and once["n"] == fresh["n"]
    assert once["max_abs_logit_diff"] == pytest.approx(fresh["max_abs_logit_diff"], abs=1e-5)  # channels_last
    with pytest.raises(ParityError, match=r"max abs logit difference vs PyTorch is 1\.00e\+00"):
        check_parity(model, path, tiny_data.val, int8=False, reference=ref + 1.0)


def test_export_falls_back_to_the_dynamo_exporter(tmp_path, monkeypatch):
    """A model the TorchScript exporter cannot take is exported by the dynamo one, batch still dynamic."""
    import numpy as np

    import compress.export as export_mod
    from compress.measure.latency import make_session

    def refuse(*args, **kwargs):
        raise RuntimeError("TorchScript cannot trace this model")

    monkeypatch.setattr(export_mod, "_torchscript_export", refuse)
    model = create_model("cnn", width=4, depth=1, in_channels=3).eval()
    path = export_mod.export_onnx(model, tmp_path / "m.onnx", 17, (3, 20, 24))
    sess = make_session(path, threads=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 20, 24)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {"input": x})[0] - want).max() < 1e-4  # batch 5: the batch axis is dynamic


def test_a_model_no_exporter_can_take_names_both_errors(tmp_path, monkeypatch):
    import compress.export as export_mod

    def refuse(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(export_mod, "_torchscript_export", refuse)
    monkeypatch.setattr(export_mod, "_dynamo_export", refuse)
    with pytest.raises(export_mod.ExportError, match="TorchScript exporter: RuntimeError: no; dynamo exporter"):
        export_mod.export_onnx(create_model("cnn", width=4, depth=1), tmp_path / "m.onnx")


def test_a_models_evaluation_is_kept_beside_it_and_read_only_for_that_file_and_data(tmp_path, tiny_data, monkeypatch):
    """``evaluated(keep=True)``: a trial's or a baseline's own process evaluates its model, and the report reads
    the same numbers (validation accuracy, per-test-sample correctness) from beside the file; another model
    in that file, other data or an unreadable record are evaluated again."""
    import dataclasses

    import compress.pipeline as pipeline
    from compress.export import onnx_accuracy, onnx_correct

    torch.manual_seed(0)
    path = export_onnx(create_model("cnn", width=8, depth=1).eval(), tmp_path / "m.onnx")
    val, correct = pipeline.evaluated(path, tiny_data, keep=True)
    assert val == onnx_accuracy(path, tiny_data.val)
    np.testing.assert_array_equal(correct, onnx_correct(path, tiny_data.test))
    assert (tmp_path / "m.accuracy.json").is_file()
    runs = []
    monkeypatch.setattr(pipeline, "onnx_correct", lambda *a: runs.append(a) or onnx_correct(*a))
    again = pipeline.evaluated(path, tiny_data, keep=True)
    assert runs == [] and again[0] == val and again[1].dtype == bool
    np.testing.assert_array_equal(again[1], correct)
    other_data = dataclasses.replace(tiny_data, fingerprint="another")
    pipeline.evaluated(path, other_data, keep=True)
    assert len(runs) == 1
    torch.manual_seed(1)
    export_onnx(create_model("cnn", width=8, depth=1).eval(), path)  # another model in the same file
    pipeline.evaluated(path, other_data, keep=True)
    assert len(runs) == 2
    (tmp_path / "m.accuracy.json").write_text("{ half a rec")
    pipeline.evaluated(path, other_data, keep=True)
    assert len(runs) == 3
    pipeline.evaluated(path, other_data)  # not kept: always evaluated
    assert len(runs) == 4


def test_fp32_parity_is_relative_to_the_logits_scale(tmp_path, tiny_data):
    """Float rounding grows with the logits: 3e-3 off on logits in the hundreds is a correct export; on logits
    of at most 1 it is not."""
    from compress.export import reference_logits

    for factor, passes in ((1000.0, True), (1e-3, False)):
        model = create_model("cnn", width=8, depth=1).eval()
        with torch.no_grad():
            model.fc.weight.mul_(factor)
            model.fc.bias.mul_(factor)
        path = export_onnx(model, tmp_path / f"m{factor}.onnx")
        ref = reference_logits(model, tiny_data.val)
        ref += 3e-3 * np.where(ref >= 0, 1.0, -1.0)  # away from zero: the largest magnitude grows by as much
        if passes:
            parity = check_parity(model, path, tiny_data.val, int8=False, reference=ref)
            assert parity["max_abs_logit_diff"] > 1e-3 and parity["logit_scale"] > 10
        else:
            assert np.abs(ref).max() < 1
            with pytest.raises(ParityError, match=r"above the allowed 1e-03 x 1 \(the largest logit magnitude"):
                check_parity(model, path, tiny_data.val, int8=False, reference=ref)
