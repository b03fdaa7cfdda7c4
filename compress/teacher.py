"""The teacher: train it once (``compress teacher``), then load it, verified by hash, on every run.

A checkpoint is a dict with the model family, its kwargs, the state dict and the resolved recipe that
made it (nanoGPT style), so it can be rebuilt without the recipe. ``teacher.json`` beside it records its
sha256, metrics and the command that produced it.
"""

from __future__ import annotations

import pickle
import shlex
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compress.data import Dataset
from compress.errors import CompressError, TeacherError
from compress.io import read_json, sha256_file, write_json_atomic
from compress.models import build_model, check_output, macs_and_params
from compress.recipe import Recipe, TeacherConfig
from compress.spec import InputSpec
from compress.data.fashion_mnist import SPEC
from compress.export import check_parity, export_onnx
from compress.measure.latency import make_session
from compress.measure.latency import measure
from compress.train import accuracy, train_


def info_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_name("teacher.json")


DEMO_CHECKPOINT = "teachers/fashion_mnist_resnet/model.pt"
PRUNABLE = ("compress", "state_dict", "pickle")  # formats that are an nn.Module Torch-Pruning can reshape


def _spec(spec: InputSpec | None) -> InputSpec:

    return spec or SPEC


def build_teacher(cfg: TeacherConfig, spec: InputSpec | None = None) -> nn.Module:
    return build_model(cfg.model, _spec(spec), cfg.model_kwargs, "teacher.model")


def _retrain_hint(cfg: TeacherConfig) -> str:
    if Path(cfg.checkpoint) == Path(DEMO_CHECKPOINT):
        return ("re-create it with `compress teacher recipes/teacher_fashion_mnist.yaml`, or restore it with "
                f"`git checkout -- {cfg.checkpoint}`")
    return ("point teacher.checkpoint at your trained model (see `compress teacher --help` to train one on "
            "your data with `compress teacher RECIPE`)")


class OnnxTeacher(nn.Module):
    """A teacher given as an ONNX file: ONNX Runtime computes its logits, so it can teach any student.
    It has no PyTorch weights: it cannot be pruned or trained."""

    def __init__(self, path: Path):
        super().__init__()

        self.path = Path(path)
        self.session = make_session(self.path, threads=0)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_dims = inp.name, inp.shape
        fixed = self.input_dims[0] if self.input_dims and isinstance(self.input_dims[0], int) else None
        self.chunk = fixed or 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().float().contiguous().numpy()
        out = [self.session.run(None, {self.input_name: arr[i : i + self.chunk]})[0] for i in range(0, len(arr), self.chunk)]
        return torch.from_numpy(np.concatenate(out)).to(x.device)

    def count_params(self) -> int:
        import onnx

        return int(sum(np.prod(t.dims) for t in onnx.load(str(self.path), load_external_data=False).graph.initializer))

    def __deepcopy__(self, memo):
        raise TeacherError(f"teacher.checkpoint {self.path} is an ONNX file: a student made from the teacher "
                           "(student.model: teacher, or a pruned-teacher baseline) needs a PyTorch teacher; use a "
                           "student family, or give the teacher as a state_dict with teacher.model")


class ExportedTeacher(nn.Module):
    """A ``torch.export`` program's module: it is always in inference mode (it refuses eval()/train())."""

    def __init__(self, program):
        super().__init__()
        self.graph = program.module()
        # A program exported with a fixed batch size (the usual torch.export.export(model, (one_sample,)))
        # is run in chunks of that size, the last one padded.
        shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder"
                  and n.name in program.graph_signature.user_inputs and "val" in n.meta]
        self.batch = shapes[0][0] if shapes and isinstance(shapes[0][0], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or len(x) == self.batch:
            return self.graph(x)
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = x[i : i + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros(pad, *chunk.shape[1:])])
            outs.append(self.graph(chunk)[: self.batch - pad])
        return torch.cat(outs)

    def train(self, mode: bool = True):
        self.training = mode  # not passed down: the exported graph has no train mode
        return self


def _strip_prefix(sd: dict, want: set[str]) -> dict:
    """``module.conv.weight`` -> ``conv.weight`` (DataParallel, torch.compile, Lightning's ``model.``)."""
    while sd and not (set(sd) & want):
        heads = {k.split(".", 1)[0] for k in sd}
        if len(heads) != 1 or not all("." in k for k in sd):
            break
        sd = {k.split(".", 1)[1]: v for k, v in sd.items()}
    return sd


def _load_state_dict(model: nn.Module, sd: dict, ckpt: Path) -> None:
    want = list(model.state_dict())
    sd = _strip_prefix(sd, set(want))
    missing, unexpected = [k for k in want if k not in sd], [k for k in sd if k not in set(want)]
    if not missing and not unexpected:
        try:
            model.load_state_dict(sd)
        except RuntimeError as err:  # shape mismatches
            raise TeacherError(f"teacher.checkpoint {ckpt}: the weights do not fit teacher.model: "
                               f"{str(err).strip().splitlines()[-1].strip()[:300]}; check teacher.model and "
                               "teacher.model_kwargs") from None
    else:
        def first(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"

        raise TeacherError(f"teacher.checkpoint {ckpt} does not match teacher.model: missing keys {first(missing)}; "
                           f"unexpected keys {first(unexpected)}. Check teacher.model / teacher.model_kwargs, or "
                           "whether the checkpoint nests its weights under another key")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read(ckpt: Path, cfg: TeacherConfig, spec: InputSpec) -> tuple[nn.Module, str]:
    """The teacher module and its checkpoint format."""
    if ckpt.suffix.lower() == ".onnx":
        return OnnxTeacher(ckpt), "onnx"
    if ckpt.suffix.lower() == ".pt2":
        return ExportedTeacher(torch.export.load(str(ckpt))), "torch.export"
    try:
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    except RuntimeError as err:
        if "TorchScript" not in str(err):
            raise
        return torch.jit.load(str(ckpt), map_location="cpu"), "torchscript"
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(ckpt):
            raise  # not a torch.save file at all: reported as unreadable
        if not cfg.trust_pickle:
            raise TeacherError(f"teacher.checkpoint {ckpt} is a pickled Python object (a whole module?), and "
                               "unpickling runs code from the file. If you trust it, set teacher.trust_pickle: true; "
                               "otherwise save model.state_dict() and name the architecture in teacher.model") from None
        obj = torch.load(ckpt, map_location="cpu", weights_only=False)
        if not isinstance(obj, nn.Module):
            raise TeacherError(f"teacher.checkpoint {ckpt} unpickles to {type(obj).__name__}, not a torch.nn.Module") from None
        return obj, "pickle"
    if isinstance(blob, dict) and isinstance(blob.get("model"), str) and "state_dict" in blob:
        # ours (`compress teacher`): it names its own family and kwargs
        model = build_model(blob["model"], spec, blob.get("model_kwargs", {}), f"teacher.checkpoint {ckpt} (model)")
        _load_state_dict(model, blob["state_dict"], ckpt)
        return model, "compress"
    for key in ("state_dict", "model", "model_state_dict", "weights"):
        if isinstance(blob, dict) and _is_state_dict(blob.get(key)):
            blob = blob[key]
            break
    if not _is_state_dict(blob):
        keys = ", ".join(map(str, list(blob)[:8])) if isinstance(blob, dict) else type(blob).__name__
        raise TeacherError(f"teacher.checkpoint {ckpt}: no state_dict found (top-level keys: {keys}); save "
                           "model.state_dict(), or a dict with it under 'state_dict' or 'model'")
    model = build_model(cfg.model, spec, cfg.model_kwargs, "teacher.model")
    _load_state_dict(model, blob, ckpt)
    return model, "state_dict"


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
        model, fmt = _read(ckpt, cfg, spec)
    except CompressError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise TeacherError(f"teacher.checkpoint {ckpt} could not be loaded ({type(err).__name__}: "
                           f"{str(err)[:200]}); supported: a state_dict, TorchScript, torch.export (.pt2), a pickled "
                           f"module (with teacher.trust_pickle) or ONNX (.onnx); {_retrain_hint(cfg)}") from None
    check_output(model, spec, f"teacher.checkpoint {ckpt}")
    info = {**info, "sha256": digest, "checkpoint": str(ckpt), "format": fmt, "prunable": fmt in PRUNABLE}
    return model.eval(), info


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
