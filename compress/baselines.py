"""What a user would otherwise do, measured in the same run so the front is judged against it.

(a) the teacher quantized to int8 alone; (b) the teacher with a fraction of its channels pruned and
fine-tuned on hard labels; (c) the chosen student architecture trained on hard labels, without distillation.
Each is kept under ``results/<study>/baselines/<name>/`` so a resumed study does not rebuild it, and
under ``.cache/baselines/`` by what shapes its model (teacher, data, seed and the model-making sections of
the recipe, not the study's name, service level or budget), so the next study that needs the same model
(the same search with another service level, say) copies it instead of training it again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch.nn as nn
from tqdm.auto import tqdm

from compress.data import Dataset
from compress.errors import TargetError
from compress.io import copy_atomic, read_json, sha256_file, write_json_atomic
from compress.latency import backend_for
from compress.pipeline import TEACHER_FAMILY, Stage, compress_student
from compress.recipe import Recipe, fingerprint_of, with_values


CACHE_DIR = Path(".cache/baselines")
# The recipe sections that make a baseline's model; the rest (name, search budget, service level, latency
# protocol, capacity, cost) only say what is done with it.
MODEL_SECTIONS = ("seed", "data", "teacher", "student", "distill", "prune", "quantize", "export")


def _digest(key: dict) -> str:
    return fingerprint_of(key, 16)


def _stage(folder: Path, m: dict) -> Stage:
    return Stage(m["name"], folder / "model.onnx", m["macs"], m["params"], m["int8"], m["parity"])


def _cached(folder: Path, keys: list[dict], build, label: str = "baseline") -> Stage:
    """The stage in ``folder`` when it was made under one of ``keys`` (the first is current, the others
    what older code keyed it by), else a copy from the shared cache, else ``build(folder)`` (then cached)."""
    digests = [_digest(k) for k in keys]
    meta = folder / "stage.json"
    if meta.is_file() and (folder / "model.onnx").is_file():
        m = read_json(meta)
        if m.get("key") in digests:
            return _stage(folder, m)
    shared = CACHE_DIR / digests[0]
    if (shared / "stage.json").is_file() and (shared / "model.onnx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        copy_atomic(shared / "model.onnx", folder / "model.onnx")
        m = read_json(shared / "stage.json")
        write_json_atomic(meta, m)
        tqdm.write(f"{label} {m['name']}: the same model as in {shared} (same teacher, data and settings), copied")
        return _stage(folder, m)
    folder.mkdir(parents=True, exist_ok=True)
    stage = build(folder)
    stage = dataclasses.replace(stage, onnx=stage.onnx.replace(folder / "model.onnx"))
    m = {"key": digests[0], "name": stage.name, "macs": stage.macs, "params": stage.params, "int8": stage.int8,
         "parity": stage.parity}
    write_json_atomic(meta, m)
    tmp = shared.with_name(f"{shared.name}.{os.getpid()}.tmp")  # whole or absent: two studies may race here
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(folder / "model.onnx", tmp / "model.onnx")
    write_json_atomic(tmp / "stage.json", m)
    try:
        tmp.replace(shared)
    except OSError:  # another study cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return stage


def model_key(r: Recipe, data: Dataset, tinfo: dict) -> dict:
    """What makes the model ``compress_student(r, ...)`` returns: the model-making sections, the data and
    teacher actually loaded, and what this machine resolves (bf16: auto, quantize.reduce_range: None)."""
    from compress.techniques.quantize import reduce_range
    from compress.train import native_bf16, resolve_device

    full = r.to_dict()
    # bf16: auto as each schedule's own device resolves it (one flag, as before, when both train on one device)
    bf16 = sorted({native_bf16(resolve_device(c.device)) for c in (r.distill.train, r.prune.finetune)})
    return {**{k: full[k] for k in MODEL_SECTIONS}, "data_fingerprint": data.fingerprint, "teacher": tinfo["sha256"],
            "native_bf16": bf16[0] if len(bf16) == 1 else bf16,
            "reduce_range": reduce_range(r.quantize) if r.quantize.enabled else None}


def _built(name: str, r: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path,
           label: str = "baseline", state: Path | None = None) -> Stage:
    """The last model ``compress_student`` makes of ``r`` (resumed from ``state``, a restart state), cached
    under ``root/name`` and ``CACHE_DIR``."""

    def build(folder: Path) -> Stage:
        return dataclasses.replace(compress_student(r, data, teacher, tinfo, folder, state=state)[-1], name=name)

    key = {"name": name, **model_key(r, data, tinfo)}
    if state is not None:
        return _cached(root / name, [{**key, "resumed_from": sha256_file(state)}], build, label)
    # What the code before kept them by, per study: the whole recipe's fingerprint, before and after bf16: auto.
    legacy = [{"recipe": r.fingerprint(before_bf16_auto=before), "data": data.fingerprint, "teacher": tinfo["sha256"]}
              for before in (False, True)]
    return _cached(root / name, [key, *legacy], build, label)


def full_schedule(r: Recipe, name: str, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path,
                  state: Path | None = None) -> Stage:
    """``r`` trained on its whole schedule and ``data``'s whole training split: the chosen candidate that
    search.halving kept to its short schedule or that trained on search.train_fraction of the split
    (compress.study), cached like a baseline so that a report run again does not train it again. With
    ``state``, the restart state its short schedule saved, the schedule goes on from there (``train_``)."""
    return _built(name, r, data, teacher, tinfo, root, label="model", state=state)


def unmeasurable(recipe: Recipe) -> dict[str, str]:
    """The baselines the latency target cannot run, each with why: int8 graphs on CUDA without
    onnxruntime-gpu (PyTorch measures there, fp32 only)."""
    if backend_for(recipe.target.device) != "torch":
        return {}
    return {"teacher_int8": f"latency on target.device {recipe.target.device!r} is measured with PyTorch, "
                            "which cannot run int8 ONNX graphs (install onnxruntime-gpu to compare it)"}


def teacher_int8(recipe: Recipe, data: Dataset, teacher: nn.Module, tinfo: dict, root: Path) -> Stage:
    """The teacher, unpruned and untrained, quantized with the recipe's own quantize settings; a TargetError,
    before any work, where the latency target cannot run int8 graphs."""
    why = unmeasurable(recipe).get("teacher_int8")
    if why:
        raise TargetError(why)
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
