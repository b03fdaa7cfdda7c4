import json
import subprocess
import sys

import onnx
import pytest

from compress.export import ParityError
from compress.pipeline import run
from compress.recipe import load_recipe


def test_tiny_recipe_end_to_end(tmp_path):
    """The whole spine through the CLI: distil, prune, fine-tune, quantize, export, measure, report."""
    proc = subprocess.run([sys.executable, "-m", "compress", "run", "recipes/tiny.yaml", "--set",
                           f"output_dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedup p50" in proc.stdout and "teacher" in proc.stdout
    # In a log file (not a terminal) no progress bar redraws: one line per epoch of each schedule.
    assert "\r" not in proc.stdout + proc.stderr
    epochs = [line for line in proc.stdout.splitlines() if " epoch 1/1: loss " in line]
    assert [line.split(" epoch")[0] for line in epochs] == ["distill", "distill (pruned)"]
    out = tmp_path / "tiny"
    for name in ["recipe.yaml", "model.onnx", "metrics.json", "summary.json"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for side in ("teacher", "artifact"):
        m = summary[side]
        assert 0 <= m["val_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
        assert m["params"] > 0 and m["macs"] > 0 and m["size_bytes"] > 0
    assert summary["teacher"]["params"] > 100 * summary["artifact"]["params"]
    assert summary["speedup_p50"] == pytest.approx(
        summary["teacher"]["latency_p50_ms"] / summary["artifact"]["latency_p50_ms"])
    assert summary["accuracy_drop_pp"] == pytest.approx(
        100 * (summary["teacher"]["test_accuracy"] - summary["artifact"]["test_accuracy"]))
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert set(metrics) == {"teacher", "student_fp32", "student_pruned_fp32", "student_pruned_int8"}
    assert metrics["student_pruned_fp32"]["macs"] < metrics["student_fp32"]["macs"]
    assert metrics["student_pruned_int8"]["parity"]["top1_agreement"] >= 0.9
    assert metrics["student_fp32"]["parity"]["max_abs_logit_diff"] <= 1e-3
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops
    assert load_recipe(out / "recipe.yaml").name == "tiny"  # the resolved recipe is itself a valid recipe
    assert not list(tmp_path.glob(".*"))  # no staging leftovers


def test_failed_run_leaves_no_result(tmp_path):
    recipe = load_recipe("recipes/tiny.yaml", [f"output_dir={tmp_path}", "distill.train.epochs=0",
                                               "prune.enabled=false", "quantize.enabled=false",
                                               "export.fp32_max_abs_diff=1e-12"])
    with pytest.raises(ParityError):
        run(recipe)
    assert list(tmp_path.iterdir()) == []


def test_student_from_teacher_is_pruned_then_distilled(tiny_data, tmp_path):
    """student.model: teacher starts from the teacher's weights, pruned before distillation."""
    from compress.pipeline import build_student, compress_student
    from compress.teacher import load_teacher

    recipe = load_recipe("recipes/tiny.yaml", ["student.model=teacher", "prune.ratio=0.75",
                                               "quantize.enabled=false"])
    teacher, tinfo = load_teacher(recipe.teacher)
    student = build_student(recipe, teacher, tiny_data.spec)
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in student.parameters())
    assert s_params < 0.2 * t_params  # 75% of the channels gone: ~1/16 of the weights
    assert type(student) is type(teacher)
    stages = compress_student(recipe, tiny_data, teacher, tinfo, tmp_path)
    assert [s.name for s in stages] == ["student_pruned_fp32"]  # no second pruning stage
    assert stages[0].params == s_params
    # Inherited weights: one epoch of prune.finetune (8 steps) lands far above chance (10%).
    from compress.export import onnx_accuracy
    assert onnx_accuracy(stages[0].onnx, tiny_data.val) > 0.4


def test_unpruned_teacher_copy_is_the_teacher_untrained(tiny_data, tmp_path):
    """A teacher copy that loses no channels is not trained and its BatchNorm is left alone: the exported
    student computes the teacher's logits. (No epochs run: a trained copy would differ.)"""
    import numpy as np

    from compress.export import onnx_logits
    from compress.pipeline import compress_student, trains
    from compress.teacher import load_teacher
    from compress.train import predict_logits

    recipe = load_recipe("recipes/tiny.yaml", ["student.model=teacher", "prune.enabled=true", "prune.ratio=0",
                                               "quantize.enabled=false"])
    assert not trains(recipe)
    teacher, tinfo = load_teacher(recipe.teacher)
    stages = compress_student(recipe, tiny_data, teacher, tinfo, tmp_path)
    assert [s.name for s in stages] == ["student_fp32"]
    got = onnx_logits(stages[0].onnx, tiny_data.val.inputs().numpy())
    np.testing.assert_allclose(got, predict_logits(teacher, tiny_data.val).numpy(), atol=1e-3)


def test_mlp_student_on_images_is_distilled_exported_and_agrees_with_its_onnx(tiny_data, tmp_path):
    """The default study's fastest family: an MLP on the flattened image, distilled, exported (parity checked
    against PyTorch on the validation images) and above chance after one epoch."""
    from compress.export import onnx_accuracy
    from compress.pipeline import compress_student
    from compress.teacher import load_teacher

    recipe = load_recipe("recipes/tiny.yaml", ["student.model=mlp", "student.width=32", "student.depth=1",
                                               "prune.enabled=false", "quantize.enabled=false"])
    teacher, tinfo = load_teacher(recipe.teacher)
    stages = compress_student(recipe, tiny_data, teacher, tinfo, tmp_path)
    assert [s.name for s in stages] == ["student_fp32"]
    graph = onnx.load(str(stages[0].onnx)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == list(tiny_data.spec.shape)
    assert stages[0].params == 28 * 28 * 32 + 2 * 32 + 32 * 10 + 10  # first layer without bias, BatchNorm, fc
    assert onnx_accuracy(stages[0].onnx, tiny_data.val) > 0.4
