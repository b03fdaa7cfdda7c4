"""The one training loop every technique uses (teacher training, distillation, pruning fine-tune).

SGD with momentum, linear warm-up then cosine decay per step; a tqdm bar per epoch; validation accuracy
after every epoch, passed to ``on_epoch`` so a search can prune a hopeless trial.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress.data import Split, augment, batches
from compress.errors import RecipeError, TargetError
from compress.recipe import TrainConfig

# loss(student_logits, labels, batch_index, batch_inputs) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


_threads: Callable[[], int] | None = None


@contextlib.contextmanager
def threads_from(fn: Callable[[], int]):
    """Within the block every training step first gives this process ``fn()`` torch threads: a training started
    on a share of the cores takes them all once the other trainings are done (``search.finish``)."""
    global _threads
    before, _threads = _threads, fn
    try:
        yield
    finally:
        _threads = before


def hard_label_loss(logits, labels, idx, x):
    return F.cross_entropy(logits, labels)


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``auto``: a CUDA GPU when this machine has one, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TargetError("train.device = 'cuda', but PyTorch sees no CUDA GPU on this machine; use auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU oneDNN runs bf16 on
    (AVX-512 and up). Elsewhere autocast emulates bf16, several times slower than fp32 (measured:
    results/README.md, bf16_cpu.json)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


_told: set[tuple[str, object]] = set()


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """``bf16: auto`` resolved on ``device``: bf16 autocast where it is native, fp32 elsewhere. ``true`` is
    bf16 anyway, with a warning where it is emulated. Each case is said once per process."""
    native = native_bf16(device)
    on = native if setting == "auto" else bool(setting)
    key = (device.type, setting)
    if setting == "auto" and key not in _told:
        tqdm.write(f"bf16: auto -> {'bf16 autocast' if on else 'fp32'} on this {device.type.upper()} "
                   f"({'native bf16' if native else 'no native bf16, which would be emulated and slower'})")
    elif setting is True and not native and key not in _told:
        tqdm.write(f"warning: bf16: true on a {device.type.upper()} without native bf16: autocast emulates it, and "
                   "training ran 7-8x slower than fp32 on an AVX2 CPU; set bf16: auto (bf16 only where native)")
    _told.add(key)
    return on


_formats: dict[tuple, torch.memory_format] = {}


def training_format(model: nn.Module, batch_shape: tuple[int, ...], device: torch.device) -> torch.memory_format:
    """The memory format a CPU fp32 training step of ``model`` runs faster in, timed on a copy once per
    architecture, batch shape and thread count in this process, so every model of one architecture trains
    alike. Neither format wins everywhere (measured: results/README.md, bf16_cpu.json). Feature vectors and
    GPUs: contiguous."""
    import statistics

    if len(batch_shape) != 4 or device.type != "cpu":
        return torch.contiguous_format
    sig = (type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()), batch_shape,
           torch.get_num_threads())
    if sig in _formats:
        return _formats[sig]
    x = torch.randn(batch_shape, generator=torch.Generator().manual_seed(0))
    times: dict[torch.memory_format, list[float]] = {torch.contiguous_format: [], torch.channels_last: []}
    try:
        with torch.random.fork_rng(devices=[]):  # the training's random stream is left as it was
            _time_steps(model, x, times)
    except Exception:  # a model this probe cannot drive (odd outputs, not copyable): train it as it is
        _formats[sig] = torch.contiguous_format
        return torch.contiguous_format
    n = min(len(t) for t in times.values())
    med = {fmt: statistics.median(t[1:n]) for fmt, t in times.items()}
    best = min(med, key=med.get)
    _formats[sig] = best
    if best == torch.channels_last:
        tqdm.write(f"training {type(model).__name__} in channels_last: {med[torch.contiguous_format] / med[best]:.2f}x "
                   "faster a step than contiguous on this CPU")
    return best


def _time_steps(model: nn.Module, x: torch.Tensor, times: dict) -> None:
    """Alternating steps per format: 1 to warm up, then 3 timed (1 when a step takes over a second)."""
    import copy

    setups = []
    for fmt in times:
        m = copy.deepcopy(model).to(memory_format=fmt).train()
        setups.append((fmt, m, torch.optim.SGD(m.parameters(), lr=1e-3), x.contiguous(memory_format=fmt)))
    rounds, rnd = 4, 0
    while rnd < rounds:
        for fmt, m, opt, xb in setups:
            t0 = time.perf_counter()
            out = m(xb)
            loss = F.cross_entropy(out, torch.zeros(len(out), dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times[fmt].append(time.perf_counter() - t0)
            if not rnd and times[fmt][0] > 1.0:
                rounds = 2
        rnd += 1


@torch.no_grad()
def iter_logits(model: nn.Module, split: Split, batch_size: int = 1000, bf16: bool = False):
    """(index, logits on the CPU) batch by batch, computed on the model's device. Images go through a CPU
    model in channels_last, faster than contiguous for the same arithmetic (measured: results/README.md,
    inference_format.json); the model is contiguous again afterwards. ``bf16``: in bf16 autocast (the
    teacher's soft targets, where native), never for accuracy."""
    model.eval()
    device = model_device(model)
    fmt = torch.channels_last if device.type == "cpu" and split.raw.dim() == 4 else torch.contiguous_format
    try:
        model.to(memory_format=fmt)
    except Exception:  # a module that cannot change format (some scripted ones): as it is
        fmt = torch.contiguous_format
    try:
        for idx, x, _ in batches(split, batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x.to(device).contiguous(memory_format=fmt))
            yield idx, logits.float().cpu()
    finally:
        if fmt is torch.channels_last:
            model.to(memory_format=torch.contiguous_format)


def predict_logits(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """Logits for every sample of ``split``, in order, on the CPU."""
    return torch.cat([logits for _, logits in iter_logits(model, split, batch_size)])


def accuracy(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    return float((predict_logits(model, split, batch_size).argmax(1) == split.labels).float().mean())


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """LR factor per step: linear warm-up, then cosine to zero; with ``restart_epochs``, two such cycles,
    the first exactly the schedule of a ``restart_epochs``-epoch run."""
    cut = (cfg.restart_epochs or 0) * steps_per_epoch
    total = max(1, cfg.epochs * steps_per_epoch)

    def cycle(step: int, length: int) -> float:
        warm = min(int(cfg.warmup_epochs * steps_per_epoch), length)
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, length - warm)))

    def factor(step: int) -> float:
        return cycle(step, cut) if step < cut else cycle(step - cut, total - cut)

    return factor


def train_(
    model: nn.Module,
    train: Split,
    cfg: TrainConfig,
    *,
    loss_fn: LossFn = hard_label_loss,
    val: Split | None = None,
    seed: int = 0,
    desc: str = "train",
    on_epoch: Callable[[int, float], None] | None = None,
    at_restart: Callable[[float, float], bool] | None = None,
    state: Path | None = None,
) -> list[float]:
    """Train ``model`` in place on ``cfg.device``; returns the validation accuracy after each epoch (empty
    without ``val``). The model is back on the CPU, in eval mode, when this returns.

    With ``cfg.restart_epochs`` and ``at_restart``, the first cycle's validation accuracy and training seconds
    go to ``at_restart`` when that cycle ends; if it returns False training stops there, with the model a
    ``restart_epochs``-epoch schedule makes (same seed, batches and learning rates).

    ``state`` is that stop's file: everything the rest of the schedule needs is saved there, and a later call
    that finds a state fitting this model and schedule resumes from the restart instead of retraining the
    first cycle. One that does not fit, or cannot be read, is reported and ignored."""
    device = resolve_device(cfg.device)
    if cfg.augmentations and train.raw.dim() != 4:
        raise RecipeError(f"augment = {cfg.augment!r}: augmentation (shift, hflip) is for images, and these data are "
                          "feature vectors; set augment: false")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train) / cfg.batch_size)
    opt, sched = _optimizer(model, cfg, steps)
    bf16 = use_bf16(cfg.bf16, device)
    if bf16 and train.raw.dim() == 4:
        fmt = torch.channels_last
    else:
        fmt = training_format(model, (min(cfg.batch_size, len(train)), *train.raw.shape[1:]), device)
    model.to(device=device, memory_format=fmt)
    history: list[float] = []
    first = _resume(state, model, opt, sched, gen, cfg, steps, history) if state is not None else 0
    started = time.perf_counter()
    for epoch in range(first, cfg.epochs):
        loss, train_acc = _epoch(model, train, cfg, gen, (opt, sched), loss_fn, (device, fmt, bf16),
                                 f"{desc} {epoch + 1}/{cfg.epochs}")
        msg = f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} train_acc {train_acc:.4f}"
        if val is not None:
            acc = accuracy(model, val)  # leaves the model contiguous
            model.to(memory_format=fmt)
            history.append(acc)
            msg += f" val_acc {acc:.4f}"
            if on_epoch is not None:
                on_epoch(epoch, acc)
        tqdm.write(msg)
        if at_restart is not None and epoch + 1 == cfg.restart_epochs and val is not None \
                and not at_restart(history[-1], time.perf_counter() - started):
            if state is not None:
                _save_restart(state, model, opt, sched, gen, cfg, steps, history)
            break
    model.to(device="cpu", memory_format=torch.contiguous_format)
    model.eval()
    return history


def _optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """SGD with Nesterov momentum (no weight decay on BN and biases) and its per-step LR schedule."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg, steps))


def _epoch(model: nn.Module, train: Split, cfg: TrainConfig, gen: torch.Generator, optim: tuple, loss_fn: LossFn,
           placement: tuple, title: str) -> tuple[float, float]:
    """One pass over the training split (``optim``: optimizer and schedule; ``placement``: device, memory
    format, bf16); its mean loss and training accuracy."""
    (opt, sched), (device, fmt, bf16) = optim, placement
    model.train()
    bar = tqdm(batches(train, cfg.batch_size, gen), total=math.ceil(len(train) / cfg.batch_size), desc=title,
               leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=None)  # None: drawn on a terminal only; a log file gets the one line per epoch
    seen = correct = 0
    loss_sum = 0.0
    for idx, x, y in bar:
        if _threads is not None and (n := _threads()) != torch.get_num_threads():
            torch.set_num_threads(n)
        if cfg.augmentations:
            x = augment(x, gen, kinds=cfg.augmentations)
        x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y, idx, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def _restart_signature(model: nn.Module, cfg: TrainConfig, steps: int) -> dict:
    return {"schedule": cfg.model_dump(mode="json"), "steps_per_epoch": steps,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def _save_restart(path: Path, model, opt, sched, gen, cfg: TrainConfig, steps: int, history: list[float]) -> None:
    """The training's state at its restart, written whole or not at all (see ``train_``'s ``state``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"signature": _restart_signature(model, cfg, steps), "epoch": cfg.restart_epochs,
                "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "batches": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "history": history}, tmp)
    tmp.replace(path)


def _resume(path: Path, model, opt, sched, gen, cfg: TrainConfig, steps: int, history: list[float]) -> int:
    """The epoch training goes on from: the restart, with everything as it was there, when ``path`` holds a
    state saved at this model's and schedule's restart; else 0 (said why, unless there is no file)."""
    if not Path(path).is_file():
        return 0
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        fits = saved["signature"] == _restart_signature(model, cfg, steps)
    except Exception as err:  # torn, truncated, or not ours: the schedule from the start is always right
        tqdm.write(f"{path}: cannot read the saved restart state ({type(err).__name__}: {err}); training from the start")
        return 0
    if not fits:
        tqdm.write(f"{path}: saved for another model or schedule than this one; training from the start")
        return 0
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    gen.set_state(saved["batches"])
    torch.set_rng_state(saved["torch_rng"])
    history.extend(saved["history"])
    tqdm.write(f"resuming at epoch {saved['epoch'] + 1}/{cfg.epochs} from the state saved at the restart ({path})")
    return saved["epoch"]
