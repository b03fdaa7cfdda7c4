"""Knowledge distillation (Hinton, Vinyals & Dean 2015).

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
Without augmentation every epoch sees the same training images, so the teacher's logits are computed
once per (teacher, data) pair and cached on disk: a student's training never runs the teacher again.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress.data import Dataset, Split
from compress.recipe import DistillConfig, TrainConfig
from compress.train import LossFn, hard_label_loss, iter_logits, model_device, native_bf16

CACHE_DIR = Path(".cache/teacher_logits")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def cached_teacher_logits(teacher: nn.Module, split: Split, teacher_sha256: str, data_fingerprint: str,
                          cache_dir: Path = CACHE_DIR, exact: bool = False) -> np.ndarray:
    """Teacher logits for every sample of ``split``, computed once and kept under ``.cache/`` as a .npy
    file that is memory-mapped, not read: a large training set's logits need not fit in memory. Keyed by
    the teacher's sha256 and the data's fingerprint, so a changed teacher or dataset never reuses them.
    ``exact``: in fp32, never bf16 (the parity reference of the teacher as it is, ``export.reference_logits``)."""
    path = cache_dir / f"{teacher_sha256[:16]}-{data_fingerprint[:16]}-{len(split)}{'-fp32' if exact else ''}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One process computes them; another worker of the study on this machine waits for the file, then reads it.
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"teacher logits: another process on this machine is computing them; waiting for {path}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _read_or_compute(path, teacher, split, exact)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_or_compute(path: Path, teacher: nn.Module, split: Split, exact: bool = False) -> np.ndarray:
    if path.is_file():
        try:
            logits = np.load(path, mmap_mode="r")
            if logits.ndim == 2 and len(logits) == len(split):
                return logits
        except (ValueError, OSError):
            pass  # a damaged cache file is recomputed below
    if not exact:
        tqdm.write(f"teacher logits for {len(split):,} training samples: computing them once (about a minute for "
                   f"the default teacher on 2 cores), cached as {path}")
    tmp = path.with_name(path.name + ".tmp")
    out = None
    # bf16 where this CPU or GPU computes it natively: soft targets need no more digits, and it is over twice
    # as fast (measured: results/README.md, inference_format.json). Accuracy is never measured this way.
    bf16 = not exact and native_bf16(model_device(teacher))
    # Every core: a neighbour worker (search.workers) that needs them waits for them meanwhile. Not for the exact
    # logits, which one trial needs while the neighbours go on (timing their models, say): this process's share.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads if exact else max(threads, len(os.sched_getaffinity(0))))
    try:
        for idx, logits in iter_logits(teacher, split, 500, bf16=bf16):  # written as computed: never all in memory
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(split), logits.shape[1]))
            out[idx.numpy()] = logits.numpy()
    finally:
        torch.set_num_threads(threads)
    out.flush()
    del out
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


def make_loss(cfg: DistillConfig, train_cfg: TrainConfig, teacher: nn.Module | None,
              teacher_logits: torch.Tensor | None) -> LossFn:
    """The training loss for a student: KD against cached or live teacher logits, or hard labels."""
    if not cfg.enabled:
        return hard_label_loss
    if train_cfg.augmentations or teacher_logits is None:
        if teacher is None:
            raise ValueError("distillation with augmentation needs the teacher model itself")
        teacher.eval()

        def live(logits, labels, idx, x):
            with torch.no_grad():  # the teacher stays where it is (the CPU); only its logits travel
                t = teacher(x.to(model_device(teacher)).contiguous()).float().to(logits.device)
            return kd_loss(logits, t, labels, cfg.temperature, cfg.alpha)

        return live

    def cached(logits, labels, idx, x):
        return kd_loss(logits, torch.as_tensor(teacher_logits[idx.numpy()]).to(logits.device), labels,
                       cfg.temperature, cfg.alpha)

    return cached


def teacher_logits_for(cfg_list: list[tuple[DistillConfig, TrainConfig]], teacher: nn.Module, data: Dataset,
                       teacher_sha256: str) -> torch.Tensor | None:
    """Cached train-split logits when any of the given trainings distils without augmentation."""
    if any(d.enabled and not t.augmentations for d, t in cfg_list):
        return cached_teacher_logits(teacher, data.train, teacher_sha256, data.fingerprint)
    return None
