"""What a user would otherwise do, measured in the same run so the front is judged against it.

(a) the teacher quantized to int8 alone; (b) the teacher with a fraction of its channels pruned and
fine-tuned on hard labels; (c) the chosen student architecture trained on hard labels, without distillation.
Each is built once per study and kept under ``results/<study>/baselines/<name>/`` so a resumed study
does not rebuild it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch.nn as nn

from compress.data import Dataset
from compress.io import read_json, write_json_atomic
from compress.pipeline import TEACHER_FAMILY, Stage, compress_student
from compress.recipe import Recipe, with_values


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


def _built(name: str, r: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The last model ``compress_student`` makes of ``r``, cached under ``root/name``."""

    def build(folder: Path) -> Stage:
        return dataclasses.replace(compress_student(r, data, teacher, tinfo, folder)[-1], name=name)

    return _cached(root / name, {"recipe": r.fingerprint(), "data": data.fingerprint, "teacher": tinfo["sha256"]}, build)


def teacher_int8(recipe: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The teacher, unpruned and untrained, quantized with the recipe's own quantize settings."""
    r = with_values(recipe, {"student.model": TEACHER_FAMILY, "prune.enabled": False, "quantize.enabled": True})
    return _built("teacher_int8", r, data, teacher, tinfo, root)


def teacher_pruned(recipe: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The teacher with ``search.baseline_prune_ratio`` of its channels pruned and fine-tuned on hard labels
    for ``search.baseline_finetune``; fp32: what a user who only prunes would ship, without this tool (no
    distillation, none of the study's settings)."""
    s = recipe.search
    r = with_values(recipe, {"student.model": TEACHER_FAMILY, "distill.enabled": False, "prune.enabled": True,
                             "prune.ratio": s.baseline_prune_ratio, "prune.finetune": s.baseline_finetune.model_dump(),
                             "quantize.enabled": False})
    return _built(f"teacher_pruned{int(round(100 * s.baseline_prune_ratio))}", r, data, teacher, tinfo, root)


def student_without_kd(chosen: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The chosen candidate's recipe with distillation off: same architecture, pruning and quantization."""
    return _built("student_no_kd", with_values(chosen, {"distill.enabled": False}), data, teacher, tinfo, root)
