"""Every checkpoint format a teacher may come in: ours (family, kwargs, state dict), a plain state dict (a
``module.`` prefix stripped), TorchScript, ``torch.export`` (.pt2), a pickled module (only when trusted: unpickling
runs code) and ONNX, whose logits ONNX Runtime computes."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compress.errors import TeacherError
from compress.measure.latency import make_session
from compress.models import build_model
from compress.recipe import TeacherConfig
from compress.spec import InputSpec

PRUNABLE = ("compress", "state_dict", "pickle")  # formats that are an nn.Module Torch-Pruning can reshape


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


def read_checkpoint(ckpt: Path, cfg: TeacherConfig, spec: InputSpec) -> tuple[nn.Module, str]:
    """The module a checkpoint holds and the checkpoint's format; teacher.model must not contradict it."""
    model, fmt = _read(ckpt, cfg, spec)
    if cfg.model is not None and fmt in CARRIED:
        raise TeacherError(f"teacher.checkpoint {ckpt} is {CARRIED[fmt]}, which carries its own architecture, but "
                           f"teacher.model names {cfg.model!r}: leave teacher.model out to use the file's, or give "
                           f"{cfg.model}'s weights as a state_dict")
    return model, fmt


# Formats whose file holds the architecture as well as the weights.
CARRIED = {"onnx": "an ONNX model", "torch.export": "a torch.export program", "torchscript": "TorchScript",
           "pickle": "a pickled module"}


def _read(ckpt: Path, cfg: TeacherConfig, spec: InputSpec) -> tuple[nn.Module, str]:
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
    except pickle.UnpicklingError:
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
        kwargs = blob.get("model_kwargs", {})
        if cfg.model is not None and (cfg.model, cfg.model_kwargs or kwargs) != (blob["model"], kwargs):
            raise TeacherError(f"teacher.checkpoint {ckpt} holds {blob['model']} {kwargs}, but teacher.model and "
                               f"model_kwargs name {cfg.model} {cfg.model_kwargs}: leave teacher.model out to use the "
                               "checkpoint's, or name the architecture it holds")
        model = build_model(blob["model"], spec, kwargs, f"teacher.checkpoint {ckpt} (model)")
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
    if cfg.model is None:
        raise TeacherError(f"teacher.checkpoint {ckpt} holds weights only (a state_dict): name their architecture in "
                           "teacher.model (a family, tv:<arch> or package.module:factory)")
    model = build_model(cfg.model, spec, cfg.model_kwargs, "teacher.model")
    _load_state_dict(model, blob, ckpt)
    return model, "state_dict"
