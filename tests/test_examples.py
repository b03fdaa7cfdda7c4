"""The example of a user's own data and model (examples/digits.py, recipes/digits*.yaml) runs end to end."""

import json

from compress.recipe import load_recipe


def test_digits_vectors_through_distillation_pruning_int8_and_export(tmp_path):
    from compress.pipeline import run

    recipe = load_recipe("recipes/digits.yaml", [
        f"output_dir={tmp_path}", "distill.train.epochs=4", "prune.enabled=true", "prune.finetune.epochs=2",
        "quantize.enabled=true", "export.int8_min_agreement=0.9", "latency.max_seconds=0.2", "latency.min_runs=50"])
    summary = run(recipe)
    metrics = json.loads((tmp_path / "digits" / "metrics.json").read_text())["models"]
    assert set(metrics) == {"teacher", "student_fp32", "student_pruned_fp32", "student_pruned_int8"}
    # The committed teacher (an MLP from the user's own module) on the user's own split.
    assert metrics["teacher"]["test_accuracy"] > 0.95
    assert metrics["student_pruned_int8"]["params"] < metrics["student_fp32"]["params"] < metrics["teacher"]["params"]
    assert metrics["student_pruned_int8"]["test_accuracy"] > 0.5  # four epochs: learning, not converged
    assert summary["data_fingerprint"] and (tmp_path / "digits" / "model.onnx").is_file()


def test_digits_teacher_is_the_committed_one():
    from compress.data import load_dataset
    from compress.teacher import load_teacher

    recipe = load_recipe("recipes/digits.yaml")
    data = load_dataset(recipe.data)
    assert data.spec.kind == "vector" and data.spec.shape == (64,) and len(data.test) == 360
    model, info = load_teacher(recipe.teacher, data.spec)
    assert info["format"] == "compress" and info["prunable"]
    assert json.loads(open("teachers/digits_mlp/teacher.json").read())["sha256"] == info["sha256"]


def test_inspect_warns_when_the_teacher_is_given_other_preprocessing(capsys):
    """The digits teacher learned on standardised features: given them raw (data.mean [0], data.std [1]) it
    scores far below its teacher.json, and inspect says so loudly, with the setting to check; the recorded
    preprocessing says what is applied."""
    from compress.cli import main

    fast = ["--set", "latency.max_seconds=0.2", "--set", "latency.min_runs=50"]
    assert main(["inspect", "recipes/digits.yaml", "--set", "data.mean=[0]", "--set", "data.std=[1]", *fast]) == 0
    out = capsys.readouterr().out
    assert "64 float features per sample, used as they are (not standardised)" in out
    assert "WARNING: the teacher scores" in out and "leave data.mean and data.std out" in out
    tried = float(out.split("(so normalised, it scores ")[1].split("%")[0])
    assert tried > 90  # standardised, the teacher is itself again (98% on validation)
    assert main(["inspect", "recipes/digits.yaml", *fast]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and "standardised: x = (v - mean) / std" in out
