"""The teacher: train it once (``compress teacher``), then load it, verified by hash, on every run.

A checkpoint is a dict with the model family, its kwargs, the state dict and the resolved recipe that
made it (nanoGPT style), so it can be rebuilt without the recipe. ``teacher.json`` beside it records its
sha256, metrics and the command that produced it.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from compress.data import Dataset
from compress.io import read_json, sha256_file, write_json_atomic
from compress.models import create_model, macs_and_params
from compress.recipe import Recipe, TeacherConfig
from compress.errors import TeacherError


def info_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_name("teacher.json")


def build_teacher(cfg: TeacherConfig) -> nn.Module:
    return create_model(cfg.model, **cfg.model_kwargs)


def _retrain_hint(cfg: TeacherConfig) -> str:
    return (f"re-create it with `compress teacher RECIPE` (for the default: `compress teacher "
            f"recipes/teacher_fashion_mnist.yaml`), or restore it with `git checkout -- {cfg.checkpoint}`")


def load_teacher(cfg: TeacherConfig) -> tuple[nn.Module, dict]:
    """Load the checkpoint named by ``cfg``, verifying its sha256; returns (model in eval mode, info)."""
    ckpt = Path(cfg.checkpoint)
    if not ckpt.is_file():
        raise TeacherError(f"teacher.checkpoint {ckpt} does not exist; {_retrain_hint(cfg)}")
    digest = sha256_file(ckpt)
    info = read_json(info_path(ckpt)) if info_path(ckpt).is_file() else {}
    expected = cfg.sha256 or info.get("sha256")
    if expected and digest != expected:
        src = "teacher.sha256 in the recipe" if cfg.sha256 else str(info_path(ckpt))
        raise TeacherError(f"teacher.checkpoint {ckpt} has sha256 {digest[:16]}..., but {src} expects "
                           f"{expected[:16]}...: the file was altered or is a different teacher; {_retrain_hint(cfg)}")
    try:
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        if "state_dict" in blob:  # ours: it names its own family and kwargs
            model = create_model(blob["model"], **blob["model_kwargs"])
            model.load_state_dict(blob["state_dict"])
        else:  # a plain state_dict from the user's own training: the recipe names the architecture
            model = create_model(cfg.model, **cfg.model_kwargs)
            model.load_state_dict(blob)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise TeacherError(f"teacher.checkpoint {ckpt} could not be loaded ({type(err).__name__}: "
                           f"{str(err)[:200]}); {_retrain_hint(cfg)}") from None
    info = {**info, "sha256": digest, "checkpoint": str(ckpt)}
    return model.eval(), info


def train_teacher(recipe: Recipe, data: Dataset) -> dict:
    """Train the recipe's teacher and write checkpoint, ONNX and teacher.json; returns teacher.json."""
    from compress.export import check_parity, export_onnx
    from compress.latency import measure
    from compress.train import accuracy, train_

    cfg = recipe.teacher
    ckpt = Path(cfg.checkpoint)
    t0 = time.time()
    model = build_teacher(cfg)
    history = train_(model, data.train, cfg.train, val=data.val, seed=recipe.seed, desc="teacher")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"model": cfg.model, "model_kwargs": cfg.model_kwargs, "state_dict": model.state_dict(),
                "recipe": recipe.to_dict()}, tmp)
    tmp.replace(ckpt)
    onnx_path = export_onnx(model, ckpt.with_name("model.onnx"), recipe.export.opset)
    parity = check_parity(model, onnx_path, data.val, int8=False, max_abs_diff=recipe.export.fp32_max_abs_diff)
    lat = measure(onnx_path, recipe.latency, recipe.target.batch_size, recipe.target.threads)
    macs, params = macs_and_params(model)
    info = {
        "sha256": sha256_file(ckpt),
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
        "train_wall_time_s": round(time.time() - t0, 1),
        "command": "compress " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "torch": torch.__version__,
    }
    write_json_atomic(info_path(ckpt), info)
    return info
