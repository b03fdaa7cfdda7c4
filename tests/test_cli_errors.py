"""Every bad input gets a message naming the cause and a non-zero exit, never a traceback (issue 11, point 10)."""

import torch
import pytest

from compress.cli import main

TINY = ["run", "recipes/tiny.yaml"]


def _err(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_unknown_student_family(capsys, tmp_path):
    code, err = _err(capsys, TINY + ["--set", "student.model=nosuch", "--set", f"output_dir={tmp_path}"])
    assert code == 2 and "student.model = 'nosuch': unknown model family; registered: cnn, mlp, resnet_small" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_torchvision_student_ignores_the_cnn_shorthands_and_takes_its_own_kwargs(capsys, tmp_path):
    from compress.models import takes_argument
    from compress.pipeline import student_kwargs
    from compress.recipe import load_recipe

    r = load_recipe("recipes/tiny.yaml", ["student.model=tv:resnet18"])
    assert r.student.width == 8 and student_kwargs(r) == {}  # width/depth mean nothing to a ResNet
    assert takes_argument("cnn", "width") and not takes_argument("tv:resnet18", "width")
    code, err = _err(capsys, TINY + ["--set", "student.model=tv:resnet18", "--set", "student.kwargs={widht: 3}",
                                     "--set", f"output_dir={tmp_path}"])
    assert code == 2 and "'tv:resnet18' could not be built with {'widht': 3}" in err


def test_data_factory_that_cannot_be_imported(capsys):
    code, err = _err(capsys, TINY + ["--set", "data.source=import", "--set", "data.factory=no_such_pkg.data:load"])
    assert code == 2 and "could not import module 'no_such_pkg.data'" in err and "ModuleNotFoundError" in err


def test_teacher_with_the_wrong_output_size(capsys, tmp_path):
    from compress.models import create_model

    torch.save(create_model("cnn", width=4, depth=1, num_classes=7).state_dict(), tmp_path / "t.pt")
    code, err = _err(capsys, TINY + ["--set", "teacher.model=cnn", "--set", f"teacher.checkpoint={tmp_path}/t.pt",
                                     "--set", "teacher.model_kwargs={width: 4, depth: 1, num_classes: 7}"])
    assert code == 2 and "num_classes=7, but the data have 10" in err


def test_teacher_that_does_not_take_the_data_shape(capsys, tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), tmp_path / "t.pt")
    code, err = _err(capsys, TINY + ["--set", f"teacher.checkpoint={tmp_path}/t.pt", "--set", "teacher.trust_pickle=true",
                                     "--set", "teacher.model=null"])
    assert code == 2 and "fails on inputs of shape [2, 1, 28, 28]" in err


def test_unsupported_checkpoint_format(capsys, tmp_path):
    (tmp_path / "t.pt").write_bytes(b"\x00garbage")
    code, err = _err(capsys, TINY + ["--set", f"teacher.checkpoint={tmp_path}/t.pt"])
    assert code == 2 and "could not be loaded" in err and "supported: a state_dict, TorchScript" in err


def test_bench_on_a_file_that_is_not_onnx(capsys, tmp_path):
    (tmp_path / "m.onnx").write_text("not a model")
    code, err = _err(capsys, ["bench", str(tmp_path / "m.onnx")])
    assert code == 2 and "not a loadable ONNX model" in err and str(tmp_path / "m.onnx") in err
    code, err = _err(capsys, ["bench", str(tmp_path / "none.onnx")])
    assert code == 2 and "no such ONNX file" in err


@pytest.mark.parametrize("argv, message", [
    (["predict", "results/fashion_mnist/artifact", "README.md"], "unsupported input type '.md'"),
])
def test_predict_on_a_file_it_cannot_read(capsys, argv, message):
    code, err = _err(capsys, argv)
    assert code != 0 and message in err


def test_run_and_teacher_take_train_threads(monkeypatch, capsys):
    """A shared machine: `compress run --train-threads 1` trains on one thread; 0 is refused by name."""
    from compress import pipeline, report

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda recipe: seen.append(torch.get_num_threads()) or {})
    monkeypatch.setattr(report, "print_summary", lambda summary: None)
    before = torch.get_num_threads()
    try:
        assert main(["run", "recipes/tiny.yaml", "--train-threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
    for cmd in ("run", "teacher"):
        with pytest.raises(SystemExit):
            main([cmd, "recipes/tiny.yaml", "--train-threads", "0"])
        assert "'0': give a whole number of threads, at least 1" in capsys.readouterr().err


def test_an_error_inside_the_teachers_factory_blames_the_factory(capsys, tmp_path, monkeypatch):
    """Not "the checkpoint could not be loaded": the user's own code raised, and the message says where."""
    (tmp_path / "boom_models.py").write_text("def teacher(num_classes, in_channels):\n"
                                             "    raise RuntimeError('CUDA out of memory in my factory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "t.pt")
    code, err = _err(capsys, TINY + ["--set", "teacher.model=boom_models:teacher", "--set", "teacher.model_kwargs={}",
                                     "--set", f"teacher.checkpoint={tmp_path}/t.pt"])
    assert code == 2 and "teacher.model = 'boom_models:teacher': building it raised RuntimeError: CUDA out of " \
                         "memory in my factory (inside boom_models:teacher" in err
    assert "could not be loaded" not in err
