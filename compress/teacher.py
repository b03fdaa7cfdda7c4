"""The teacher: train it once (``compress teacher``), then load it, verified by hash, on every run.

A checkpoint is a dict with the model family, its kwargs, the state dict and the resolved recipe that
made it (nanoGPT style), so it can be rebuilt without the recipe. ``teacher.json`` beside it records its
sha256, metrics and the command that produced it.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from compress.data import Dataset, Split
from compress.data.fashion_mnist import SPEC
from compress.errors import CompressError, RecipeError, TeacherError
from compress.export import check_parity, export_onnx
from compress.io import read_json, sha256_file, write_json_atomic
from compress.measure.latency import measure
from compress.models import build_model, check_output, macs_and_params
from compress.models.checkpoints import PRUNABLE, OnnxTeacher, read_checkpoint
from compress.recipe import Recipe, TeacherConfig
from compress.spec import InputSpec
from compress.train import accuracy, train_


def info_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_name("teacher.json")


DEMO_CHECKPOINT = "teachers/fashion_mnist_resnet/model.pt"


def _spec(spec: InputSpec | None) -> InputSpec:
    return spec or SPEC


def build_teacher(cfg: TeacherConfig, spec: InputSpec | None = None) -> nn.Module:
    if cfg.model is None:
        raise RecipeError("teacher.model: name the architecture to train (a family, tv:<arch> or "
                          "package.module:factory)")
    return build_model(cfg.model, _spec(spec), cfg.model_kwargs, "teacher.model")


def _retrain_hint(cfg: TeacherConfig) -> str:
    if Path(cfg.checkpoint) == Path(DEMO_CHECKPOINT):
        return ("re-create it with `compress teacher recipes/teacher_fashion_mnist.yaml`, or restore it with "
                f"`git checkout -- {cfg.checkpoint}`")
    return ("point teacher.checkpoint at your trained model (see `compress teacher --help` to train one on "
            "your data with `compress teacher RECIPE`)")


def load_teacher(cfg: TeacherConfig, spec: InputSpec | None = None) -> tuple[nn.Module, dict]:
    """Load the checkpoint named by ``cfg`` for inputs described by ``spec`` (the demo's when None),
    verifying its sha256 and its output shape; returns (model in eval mode, info)."""
    spec = _spec(spec)
    ckpt = Path(cfg.checkpoint)
    if not ckpt.is_file():
        raise TeacherError(f"teacher.checkpoint {ckpt} does not exist; {_retrain_hint(cfg)}")
    digest = sha256_file(ckpt)
    info = read_json(info_path(ckpt)) if info_path(ckpt).is_file() else {}
    if info.get("checkpoint_name", ckpt.name) != ckpt.name:
        info = {}  # teacher.json describes another file of the folder
    expected = cfg.sha256 or info.get("sha256")
    if expected and digest != expected:
        src = "teacher.sha256 in the recipe" if cfg.sha256 else str(info_path(ckpt))
        raise TeacherError(f"teacher.checkpoint {ckpt} has sha256 {digest[:16]}..., but {src} expects "
                           f"{expected[:16]}...: the file was altered or is a different teacher; {_retrain_hint(cfg)}")
    try:
        model, fmt = read_checkpoint(ckpt, cfg, spec)
    except CompressError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise TeacherError(f"teacher.checkpoint {ckpt} could not be loaded ({type(err).__name__}: "
                           f"{str(err)[:200]}); supported: a state_dict, TorchScript, torch.export (.pt2), a pickled "
                           f"module (with teacher.trust_pickle) or ONNX (.onnx); {_retrain_hint(cfg)}") from None
    check_output(model, spec, f"teacher.checkpoint {ckpt}")
    info = {**info, "sha256": digest, "checkpoint": str(ckpt), "format": fmt, "prunable": fmt in PRUNABLE}
    return model.eval(), info


# The teacher's validation accuracy this far below what its teacher.json records says the data are not what it
# was trained on (preprocessing, above all), rather than noise between splits.
FAR_BELOW_PP = 5.0


def teacher_warnings(val_accuracy: float, tinfo: dict, spec: InputSpec, teacher: nn.Module | None = None,
                     val: Split | None = None) -> list[str]:
    """Why the teacher's accuracy on this validation split looks wrong, with the setting to check, or []. For
    feature vectors, given the teacher and the split, the other normalisation is tried and its accuracy said."""
    recorded, chance = tinfo.get("val_accuracy"), 1 / spec.num_classes
    if recorded is not None and 100 * (recorded - val_accuracy) > FAR_BELOW_PP:
        why = f"{100 * val_accuracy:.2f}% on this validation split, where its teacher.json records {100 * recorded:.2f}%"
    elif val_accuracy < 1.5 * chance:
        why = f"{100 * val_accuracy:.2f}% on this validation split, near chance ({100 * chance:.1f}% with {spec.num_classes} classes)"
    else:
        return []
    if spec.kind == "vector":
        identity = all(m == 0 for m in spec.mean) and all(s == 1 for s in spec.std)
        fix = ("if it was trained on standardised features, leave data.mean and data.std out" if identity else
               "if it was trained on the raw features, set data.mean: [0] and data.std: [1]")
        if teacher is not None and val is not None and not val.streamed:
            x = val.raw.float()
            other = (dataclasses.replace(val, mean=x.mean(0), std=x.std(0).clamp_min(1e-6)) if identity else
                     dataclasses.replace(val, mean=torch.zeros(()), std=torch.ones(())))
            fix += f" (so normalised, it scores {100 * accuracy(teacher, other):.2f}% here)"
    else:
        fix = "check data.mean and data.std, the image size (data.image_size, data.resize) and the channels"
    return [f"WARNING: the teacher scores {why}: the data may not be preprocessed as in its training; {fix}"]


def model_size(model: nn.Module, spec: InputSpec) -> tuple[int | None, int]:
    """(MACs or None when they cannot be counted, parameters) of any model, every teacher format included."""
    if isinstance(model, OnnxTeacher):
        return None, model.count_params()
    try:
        return macs_and_params(model, spec.batch_shape(1))
    except Exception:  # noqa: BLE001 - TorchScript / exported graphs the op counter cannot trace
        return None, int(sum(p.numel() for p in model.parameters()))


def train_teacher(recipe: Recipe, data: Dataset) -> dict:
    """Train the recipe's teacher and write checkpoint, ONNX and teacher.json; returns teacher.json."""

    cfg = recipe.teacher
    ckpt = Path(cfg.checkpoint)
    t0 = time.time()
    model = build_teacher(cfg, data.spec)
    history = train_(model, data.train, cfg.train, val=data.val, seed=recipe.seed, desc="teacher")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"model": cfg.model, "model_kwargs": cfg.model_kwargs, "state_dict": model.state_dict(),
                "recipe": recipe.to_dict(), "spec": data.spec.to_dict()}, tmp)
    tmp.replace(ckpt)
    onnx_path = export_onnx(model, ckpt.with_name("model.onnx"), recipe.export.opset, data.spec.shape)
    parity = check_parity(model, onnx_path, data.val, int8=False, max_abs_diff=recipe.export.fp32_max_abs_diff)
    lat = measure(onnx_path, recipe.latency, recipe.target.batch_size, recipe.target.threads)
    macs, params = macs_and_params(model, data.spec.batch_shape(1))
    info = {
        "sha256": sha256_file(ckpt),
        "checkpoint_name": ckpt.name,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "val_accuracy": accuracy(model, data.val),
        "test_accuracy": accuracy(model, data.test),
        "val_accuracy_per_epoch": history,
        "params": params,
        "macs": macs,
        "size_bytes_checkpoint": ckpt.stat().st_size,
        "onnx_size_bytes": onnx_path.stat().st_size,
        "latency": lat.to_dict(),
        "parity": parity,
        "data_fingerprint": data.fingerprint,
        "spec": data.spec.to_dict(),
        "train_wall_time_s": round(time.time() - t0, 1),
        "command": "compress " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "torch": torch.__version__,
    }
    write_json_atomic(info_path(ckpt), info)
    return info
