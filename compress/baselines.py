"""What a user would otherwise do, measured in the same run so the front is judged against it.

(a) the teacher quantized to int8 alone; (b) the teacher with a fraction of its channels pruned and
fine-tuned; (c) the chosen student architecture trained on hard labels, without distillation.
Each is built once per study and kept under ``results/<study>/baselines/<name>/`` so a resumed study
does not rebuild it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch.nn as nn

from compress.data import Dataset, calibration_inputs
from compress.export import check_parity, export_onnx
from compress.io import read_json, write_json_atomic
from compress.pipeline import TEACHER_FAMILY, Stage, compress_student
from compress.recipe import Recipe, with_values
from compress.techniques.quantize import quantize_int8


def _cached(folder: Path, key: dict, build) -> Stage:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    meta = folder / "stage.json"
    if meta.is_file() and (folder / "model.onnx").is_file():
        m = read_json(meta)
        if m.get("key") == digest:
            return Stage(m["name"], folder / "model.onnx", m["macs"], m["params"], m["int8"], m["parity"])
    folder.mkdir(parents=True, exist_ok=True)
    stage = build(folder)
    stage = dataclasses.replace(stage, onnx=stage.onnx.replace(folder / "model.onnx"))
    write_json_atomic(meta, {"key": digest, "name": stage.name, "macs": stage.macs, "params": stage.params,
                             "int8": stage.int8, "parity": stage.parity})
    return stage


def teacher_int8(recipe: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    q = recipe.quantize.model_copy(update={"enabled": True})

    def build(folder: Path) -> Stage:
        fp32 = export_onnx(teacher, folder / "fp32.onnx", recipe.export.opset)
        calib, fp = calibration_inputs(data.train, q.calibration_size, recipe.seed)
        path = quantize_int8(fp32, folder / "int8.onnx", calib, q)
        fp32.unlink()
        parity = check_parity(teacher, path, data.val, int8=True, min_agreement=recipe.export.int8_min_agreement)
        return Stage.of("teacher_int8", path, teacher, True, {**parity, "calibration_fingerprint": fp})

    return _cached(root / "teacher_int8", {"teacher": tinfo["sha256"], "q": q.model_dump(), "data": data.fingerprint}, build)


def teacher_pruned(recipe: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The teacher with ``search.baseline_prune_ratio`` of its channels pruned, distilled for
    ``search.baseline_finetune``; fp32, as a user who only prunes would ship it."""
    s = recipe.search
    name = f"teacher_pruned{int(round(100 * s.baseline_prune_ratio))}"
    r = with_values(recipe, {"student.model": TEACHER_FAMILY, "distill.enabled": True, "prune.enabled": True,
                             "prune.ratio": s.baseline_prune_ratio, "prune.finetune": s.baseline_finetune.model_dump(),
                             "quantize.enabled": False})

    def build(folder: Path) -> Stage:
        return dataclasses.replace(compress_student(r, data, teacher, tinfo, folder)[-1], name=name)

    return _cached(root / name, {"recipe": r.fingerprint(), "data": data.fingerprint, "teacher": tinfo["sha256"]}, build)


def student_without_kd(chosen: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The chosen candidate's recipe with distillation off: same architecture, pruning and quantization."""
    r = with_values(chosen, {"distill.enabled": False})

    def build(folder: Path) -> Stage:
        stage = compress_student(r, data, teacher, tinfo, folder)[-1]
        return dataclasses.replace(stage, name="student_no_kd")

    return _cached(root / "student_no_kd", {"recipe": r.fingerprint(), "data": data.fingerprint, "teacher": tinfo["sha256"]}, build)
