"""Baselines are cached by what makes their model, so another study that needs the same one copies it."""

import pytest

from compress.search import baselines as bl
from compress.recipe import load_recipe
from compress.teacher import load_teacher


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """The shared cache in a folder of this test's own, and a count of the baselines really trained."""
    monkeypatch.setattr(bl, "CACHE_DIR", tmp_path / "cache")
    made = []
    real = bl.compress_student

    def counting(r, *args, **kwargs):
        made.append(r.search.baseline_finetune.epochs)
        return real(r, *args, **kwargs)

    monkeypatch.setattr(bl, "compress_student", counting)
    return made


def _recipe(*overrides):
    return load_recipe("recipes/tiny_search.yaml", ["search.baseline_finetune.epochs=1", "data.train_subset=300",
                                                    *overrides])


def test_another_study_with_the_same_model_copies_it_instead_of_training(tiny_data, tmp_path, builds, capsys):
    r = _recipe()
    teacher, tinfo = load_teacher(r.teacher)
    first = bl.build(bl.teacher_pruned(r, tmp_path / "a" / "baselines"), tiny_data, teacher, tinfo)
    assert builds == [1]
    # Another study: its name, service level, budget and latency protocol do not change the model.
    other = _recipe("name=other", "slo.p95_ms=0.5", "search.n_trials=7", "latency.min_runs=10")
    again = bl.build(bl.teacher_pruned(other, tmp_path / "b" / "baselines"), tiny_data, teacher, tinfo)
    assert builds == [1]
    assert again.onnx != first.onnx and again.onnx.read_bytes() == first.onnx.read_bytes()
    assert (again.name, again.macs, again.params, again.parity) == (first.name, first.macs, first.params, first.parity)
    assert "baseline teacher_pruned50: the same model as in" in capsys.readouterr().out
    # What makes the model does: another fine-tuning schedule is trained.
    bl.build(bl.teacher_pruned(_recipe("search.baseline_finetune.epochs=2"), tmp_path / "c"), tiny_data, teacher, tinfo)
    assert builds == [1, 2]


def test_a_baseline_kept_under_another_key_is_made_again(tiny_data, tmp_path, builds):
    """A kept model whose key is not the one this code computes (other settings, or an older version of
    compress keying it otherwise) is a cache miss: not used, made again."""
    import json
    import shutil

    r = _recipe()
    teacher, tinfo = load_teacher(r.teacher)
    b = bl.teacher_pruned(r, tmp_path / "study" / "baselines")
    bl.build(b, tiny_data, teacher, tinfo)
    assert bl.kept(b, tiny_data, tinfo) is not None
    meta = tmp_path / "study" / "baselines" / "teacher_pruned50" / "stage.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "key": "0123456789abcdef"}))
    shutil.rmtree(tmp_path / "cache")  # and nothing in the shared cache to fall back on
    assert bl.kept(b, tiny_data, tinfo) is None


def test_the_int8_teacher_is_left_out_where_the_target_cannot_run_int8(monkeypatch):
    """CUDA without onnxruntime-gpu: PyTorch measures, fp32 only, so the int8 teacher is not built (on an
    H200 it was built and then failed the final measurement, after all the study's work)."""
    from compress.recipe import recipe_from_dict

    recipe = recipe_from_dict({"name": "x", "quantize": {"enabled": False}})
    assert bl.unmeasurable(recipe) == {}
    monkeypatch.setattr(bl, "backend_for", lambda device: "torch")
    assert set(bl.unmeasurable(recipe)) == {"teacher_int8"}
    assert "onnxruntime-gpu" in bl.unmeasurable(recipe)["teacher_int8"]
    # Raised before any work (no teacher, data or folder needed), so the study reports it in baselines_failed.
    from compress.errors import TargetError

    with pytest.raises(TargetError, match="cannot run int8 ONNX graphs"):
        bl.teacher_int8(recipe, None)


def test_the_cache_key_resolves_bf16_on_each_schedules_own_device(monkeypatch):
    """bf16: auto depends on where a schedule trains: training pinned to the CPU of a machine whose GPU has
    native bf16 (and whose CPU has not) makes an fp32 model, and its key must not say bf16."""
    import types

    import torch

    from compress.recipe import recipe_from_dict

    monkeypatch.setattr(bl, "resolve_device", lambda name: torch.device("cpu" if name == "cpu" else "cuda"))
    monkeypatch.setattr(bl, "native_bf16", lambda device: device.type == "cuda")
    data, tinfo = types.SimpleNamespace(fingerprint="d"), {"sha256": "t"}

    def key(**train):
        return bl.model_key(recipe_from_dict({"name": "x", "distill": {"train": train},
                                              "prune": {"finetune": train}}), data, tinfo)["native_bf16"]

    assert key(device="auto") == [True]
    assert key(device="cpu") == [False]  # not resolve_device("auto")'s answer
    mixed = recipe_from_dict({"name": "x", "distill": {"train": {"device": "cpu"}}})
    assert bl.model_key(mixed, data, tinfo)["native_bf16"] == [False, True]


def test_models_trained_side_by_side_are_the_ones_one_process_makes(tiny_data, tmp_path, monkeypatch, capfd):
    """search.finish_processes: the models after the search train in processes of their own, this process's
    threads shared out (2 here: 1 each). Each is the model one 1-thread process makes, bit for bit; each one's
    lines carry its name; one that fails comes back as its error while the others finish; kept ones are not
    trained again."""
    import numpy as np
    import torch

    from compress.errors import TeacherError
    from compress.export import onnx_logits

    # On the CPU: CUDA's kernels are not bit-reproducible run to run (on an H200 the two copies' logits differed
    # in the second decimal), so on a GPU "the same model" holds only where training is pinned to the CPU.
    r = _recipe("distill.train.epochs=1", "distill.train.device=cpu", "prune.finetune.device=cpu",
                "search.baseline_finetune.device=cpu")
    teacher, tinfo = load_teacher(r.teacher)

    def builds(root):
        monkeypatch.setattr(bl, "CACHE_DIR", root / "cache")
        broken = bl.with_values(r, {"teacher.checkpoint": str(tmp_path / "missing.pt")})
        return [bl.student_without_kd(r, root), bl.teacher_pruned(r, root), bl.Build("broken", broken, root)]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        side = bl.build_all(builds(tmp_path / "side"), tiny_data, teacher, tinfo, processes=2)
        torch.set_num_threads(1)
        alone = {b.name: bl.build(b, tiny_data, teacher, tinfo) for b in builds(tmp_path / "alone")[:2]}
    finally:
        torch.set_num_threads(threads)
    out = capfd.readouterr().out
    assert "training 3 models side by side, 2 at a time with 1 thread(s) each" in out
    assert "[student_no_kd] " in out
    assert isinstance(side["broken"], TeacherError) and "missing.pt" in str(side["broken"])
    x = tiny_data.val.inputs().numpy()
    for name, stage in alone.items():
        assert side[name].onnx.parent == tmp_path / "side" / name
        np.testing.assert_array_equal(onnx_logits(side[name].onnx, x), onnx_logits(stage.onnx, x))
    # Run again (a report written again): both kept, nothing trained, no processes started.
    again = bl.build_all(builds(tmp_path / "side")[:2], tiny_data, teacher, tinfo, processes=2)
    assert "side by side" not in capfd.readouterr().out
    assert {k: v.onnx for k, v in again.items()} == {k: side[k].onnx for k in again}


def _ended(pid: int) -> bool:
    """The process is gone or a zombie, by the kernel's own table (``Process.is_alive`` can read a reaped child
    as alive when another thread reaped it first)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_build_started_side_by_side_can_be_stopped_and_its_model_made_again(tiny_data, tmp_path, monkeypatch):
    """The no-KD student started while waiting belongs to the trial the search's numbers chose; when the final
    measurement chooses another, its process is ended at once (not left to hold a core for minutes), and no
    half-made model is taken for a kept one: the folder's model is the one made afterwards."""
    import time

    monkeypatch.setattr(bl, "CACHE_DIR", tmp_path / "cache")
    r = _recipe("distill.train.epochs=100000", "distill.train.device=cpu")  # hours: still running when stopped
    teacher, tinfo = load_teacher(r.teacher)
    b = bl.student_without_kd(r, tmp_path)
    side = bl.SideBySide([b], tiny_data, tinfo, 1, 1)
    procs = list(side.pool._processes.values())
    deadline = time.time() + 120
    while not side.futures[b.name].running() and time.time() < deadline:
        time.sleep(0.2)
    assert side.futures[b.name].running()
    assert side.makes(b, tiny_data, tinfo)
    assert not side.makes(bl.student_without_kd(_recipe("student.width=4"), tmp_path), tiny_data, tinfo)
    side.stop()  # (waiting for the build instead would meet the test's timeout)
    assert procs and all(_ended(p.pid) for p in procs)
    assert bl.kept(b, tiny_data, tinfo) is None  # ended half-way: nothing kept
    short = bl.student_without_kd(_recipe("distill.train.device=cpu"), tmp_path)
    stage = bl.build(short, tiny_data, teacher, tinfo)
    assert stage.onnx == tmp_path / "student_no_kd" / "model.onnx"
    assert bl.kept(short, tiny_data, tinfo) is not None


def test_the_callers_work_runs_when_the_first_side_by_side_build_ends(tiny_data, tmp_path, monkeypatch):
    """``meanwhile`` (the report's teacher pass and evaluations) runs on the cores a finished build leaves, while
    the others still train, once; in one process, after its builds."""
    monkeypatch.setattr(bl, "CACHE_DIR", tmp_path / "cache")
    r = _recipe("distill.train.device=cpu", "prune.finetune.device=cpu", "search.baseline_finetune.device=cpu")
    teacher, tinfo = load_teacher(r.teacher)
    endless = bl.student_without_kd(bl.with_values(r, {"distill.train.epochs": 100000}), tmp_path)
    short = bl.teacher_pruned(bl.with_values(r, {"search.baseline_finetune.epochs": 0}), tmp_path)
    side = bl.SideBySide([endless, short], tiny_data, tinfo, 2, 1)
    seen = []

    def meanwhile():
        seen.append((side.futures[short.name].done(), side.futures[endless.name].done()))
        side.stop()  # the endless one would never end

    with pytest.raises(RuntimeError, match="student_no_kd"):
        side.results(meanwhile)
    assert seen == [(True, False)]
    assert bl.kept(short, tiny_data, tinfo) is not None
    calls = []
    made = bl.build_all([short], tiny_data, teacher, tinfo, processes=2, meanwhile=lambda: calls.append(1))
    assert calls == [1] and made[short.name].onnx.is_file()
