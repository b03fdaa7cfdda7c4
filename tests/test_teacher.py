import json
import shutil
from pathlib import Path

import pytest
import torch

from compress.data import load_dataset
from compress.io import sha256_file
from compress.errors import RecipeError
from compress.recipe import TeacherConfig, load_recipe
from compress.teacher import TeacherError, load_teacher, train_teacher

DEFAULT = Path("teachers/fashion_mnist_resnet")


def test_committed_default_teacher_meets_the_brief():
    """The checkpoint every run reuses: verified by hash, big and accurate enough to be worth compressing."""
    info = json.loads((DEFAULT / "teacher.json").read_text())
    assert sha256_file(DEFAULT / "model.pt") == info["sha256"]
    assert (DEFAULT / "model.pt").stat().st_size <= 10 * 2**20
    assert info["params"] >= 1_000_000
    assert info["test_accuracy"] >= 0.935
    assert info["latency"]["p95_ms"] >= 2.0 and info["latency"]["batch_size"] == 1 and info["latency"]["threads"] == 1
    recipe = load_recipe("recipes/fashion_mnist_single.yaml")
    model, loaded = load_teacher(recipe.teacher)
    assert loaded["sha256"] == info["sha256"]
    assert sum(p.numel() for p in model.parameters()) == info["params"]


def _copy_default(tmp_path) -> TeacherConfig:
    shutil.copy(DEFAULT / "model.pt", tmp_path / "model.pt")
    shutil.copy(DEFAULT / "teacher.json", tmp_path / "teacher.json")
    return TeacherConfig(checkpoint=str(tmp_path / "model.pt"))


def test_altered_checkpoint_fails_the_hash_check(tmp_path):
    cfg = _copy_default(tmp_path)
    with open(cfg.checkpoint, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(TeacherError, match="was altered.*compress teacher"):
        load_teacher(cfg)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherError, match="could not be loaded"):
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "model.pt")))


def test_missing_checkpoint_says_how_to_make_it(tmp_path, monkeypatch):
    with pytest.raises(TeacherError, match="does not exist; point teacher.checkpoint at your trained model") as e:
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "none.pt")))
    assert "fashion_mnist" not in str(e.value)  # a user's teacher is not the demo's
    import compress.teacher as teacher_mod

    monkeypatch.setattr(teacher_mod, "DEMO_CHECKPOINT", str(tmp_path / "none.pt"))
    with pytest.raises(TeacherError, match="does not exist.*recipes/teacher_fashion_mnist.yaml"):
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "none.pt")))


def test_pinned_sha256_in_recipe_is_enforced(tmp_path):
    cfg = _copy_default(tmp_path)
    wrong = TeacherConfig(checkpoint=cfg.checkpoint, sha256="0" * 64)
    with pytest.raises(TeacherError, match="teacher.sha256 in the recipe"):
        load_teacher(wrong)


def test_teacher_command_writes_checkpoint_onnx_and_metrics(tmp_path):
    recipe = load_recipe("recipes/teacher_fashion_mnist.yaml", [
        f"teacher.checkpoint={tmp_path}/t/model.pt", "teacher.model_kwargs={widths: [8, 8, 16, 16]}",
        "teacher.train.epochs=1", "data.train_subset=512", "data.val_subset=200", "data.test_subset=200",
        "latency.min_runs=20", "latency.max_seconds=0.2"])
    info = train_teacher(recipe, load_dataset(recipe.data))
    assert (tmp_path / "t" / "model.onnx").is_file()
    assert json.loads((tmp_path / "t" / "teacher.json").read_text())["sha256"] == info["sha256"]
    assert len(info["val_accuracy_per_epoch"]) == 1 and 0 <= info["test_accuracy"] <= 1
    model, _ = load_teacher(recipe.teacher)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_plain_state_dict_checkpoint_with_architecture_from_recipe(tmp_path):
    from compress.models import create_model

    model = create_model("tv:resnet18", in_channels=1, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    cfg = TeacherConfig(model="tv:resnet18", model_kwargs={"in_channels": 1}, checkpoint=str(tmp_path / "mine.pt"))
    loaded, info = load_teacher(cfg)
    assert loaded(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and len(info["sha256"]) == 64
    wrong = TeacherConfig(model="cnn", checkpoint=str(tmp_path / "mine.pt"))
    with pytest.raises(TeacherError, match="does not match teacher.model: missing keys features.0.weight.*unexpected "
                                           "keys conv1.weight"):
        load_teacher(wrong)


def _small(spec_channels=1):
    from compress.models import create_model

    return create_model("cnn", width=4, depth=1, in_channels=spec_channels).eval()


@pytest.mark.parametrize("layout", ["nested_state_dict", "nested_model_prefixed", "torchscript", "torch_export",
                                    "pickle_trusted", "onnx"])
def test_every_teacher_format_loads_and_gives_the_same_logits(tmp_path, layout):
    from compress.export import export_onnx

    model = _small()
    x = torch.randn(3, 1, 28, 28)
    want = model(x)
    path = tmp_path / ("model.onnx" if layout == "onnx" else "model.pt2" if layout == "torch_export" else "model.pt")
    if layout == "nested_state_dict":
        torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    elif layout == "nested_model_prefixed":  # DataParallel / Lightning style
        torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    elif layout == "torchscript":
        torch.jit.trace(model, x).save(str(path))
    elif layout == "torch_export":
        torch.export.save(torch.export.export(model, (x,)), str(path))
    elif layout == "pickle_trusted":
        torch.save(model, path)
    else:
        export_onnx(model, path)
    weights_only = layout.startswith("nested")  # the others carry their architecture: teacher.model left out
    cfg = TeacherConfig(model="cnn" if weights_only else None, model_kwargs={"width": 4, "depth": 1},
                        checkpoint=str(path), trust_pickle=layout == "pickle_trusted")
    loaded, info = load_teacher(cfg)
    assert torch.allclose(loaded(x), want, atol=1e-4)
    assert info["prunable"] == (layout in ("nested_state_dict", "nested_model_prefixed", "pickle_trusted"))


def test_a_pickled_module_needs_the_recipe_to_trust_it(tmp_path):
    torch.save(_small(), tmp_path / "m.pt")
    with pytest.raises(TeacherError, match="unpickling runs code from the file.*teacher.trust_pickle: true"):
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "m.pt")))


def test_a_checkpoint_without_weights_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "m.pt")
    with pytest.raises(TeacherError, match=r"no state_dict found \(top-level keys: epoch, optimizer\)"):
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "m.pt")))


def test_a_teacher_with_the_wrong_number_of_classes_names_both_numbers(tmp_path):
    from compress.models import create_model

    torch.save(create_model("cnn", width=4, depth=1, num_classes=5).state_dict(), tmp_path / "m.pt")
    cfg = TeacherConfig(model="cnn", model_kwargs={"width": 4, "depth": 1, "num_classes": 5}, checkpoint=str(tmp_path / "m.pt"))
    with pytest.raises(RecipeError, match="num_classes=5, but the data have 10"):
        load_teacher(cfg)


@pytest.mark.parametrize("layout", ["torchscript", "onnx", "ours"])
def test_a_checkpoint_that_contradicts_teacher_model_names_both(tmp_path, layout):
    """A recipe naming resnet_small given a file that holds another model: an error, never the file's model
    in silence."""
    from compress.export import export_onnx

    model, path = _small(), tmp_path / ("m.onnx" if layout == "onnx" else "m.pt")
    if layout == "torchscript":
        torch.jit.trace(model, torch.randn(1, 1, 28, 28)).save(str(path))
    elif layout == "onnx":
        export_onnx(model, path)
    else:
        torch.save({"model": "cnn", "model_kwargs": {"width": 4, "depth": 1}, "state_dict": model.state_dict()}, path)
    with pytest.raises(TeacherError, match=r"teacher.model .*resnet_small.*leave teacher.model out"):
        load_teacher(TeacherConfig(model="resnet_small", checkpoint=str(path)))
    assert load_teacher(TeacherConfig(checkpoint=str(path)))[0] is not None


def test_a_state_dict_without_teacher_model_asks_for_it(tmp_path):
    torch.save(_small().state_dict(), tmp_path / "m.pt")
    with pytest.raises(TeacherError, match="holds weights only .*name their architecture in teacher.model"):
        load_teacher(TeacherConfig(checkpoint=str(tmp_path / "m.pt")))


def test_teacher_warnings_name_the_cause_and_the_setting():
    from compress.data.fashion_mnist import SPEC
    from compress.spec import InputSpec
    from compress.teacher import teacher_warnings

    vec = InputSpec("vector", (4,), ("a", "b"), (1.0, 2.0, 3.0, 4.0), (1.0, 1.0, 2.0, 2.0), 1.0)
    assert teacher_warnings(0.93, {"val_accuracy": 0.95}, vec) == []  # within a few points: noise between splits
    far = teacher_warnings(0.57, {"val_accuracy": 0.95}, vec)
    assert "57.00% on this validation split, where its teacher.json records 95.00%" in far[0]
    assert "set data.mean: [0] and data.std: [1]" in far[0]
    chance = teacher_warnings(0.11, {}, SPEC)
    assert "near chance (10.0% with 10 classes)" in chance[0] and "data.mean and data.std" in chance[0]
