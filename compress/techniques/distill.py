"""Knowledge distillation (Hinton, Vinyals & Dean 2015).

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
Without augmentation every epoch sees the same training images, so the teacher's logits are computed
once per (teacher, data) pair and cached on disk: a student's training never runs the teacher again.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress.data import Dataset, Split
from compress.recipe import DistillConfig, TrainConfig
from compress.train import LossFn, hard_label_loss, predict_logits

CACHE_DIR = Path(".cache/teacher_logits")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def cached_teacher_logits(teacher: nn.Module, split: Split, teacher_sha256: str, data_fingerprint: str,
                          cache_dir: Path = CACHE_DIR) -> torch.Tensor:
    """Teacher logits for every image of ``split``, computed once and kept under ``.cache/``."""
    path = cache_dir / f"{teacher_sha256[:16]}-{data_fingerprint[:16]}-{len(split)}.pt"
    if path.is_file():
        logits = torch.load(path, weights_only=True)
        if logits.shape == (len(split), logits.shape[1]):
            return logits
    tqdm.write(f"teacher logits for {len(split):,} training images: computing them once (about a minute for the "
               f"default teacher on 2 cores), cached as {path}")
    logits = predict_logits(teacher, split, batch_size=500)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(logits, tmp)
    tmp.replace(path)
    return logits


def make_loss(cfg: DistillConfig, train_cfg: TrainConfig, teacher: nn.Module | None,
              teacher_logits: torch.Tensor | None) -> LossFn:
    """The training loss for a student: KD against cached or live teacher logits, or hard labels."""
    if not cfg.enabled:
        return hard_label_loss
    if train_cfg.augment or teacher_logits is None:
        if teacher is None:
            raise ValueError("distillation with augmentation needs the teacher model itself")
        teacher.eval()

        def live(logits, labels, idx, x):
            with torch.no_grad():
                t = teacher(x.contiguous())
            return kd_loss(logits, t, labels, cfg.temperature, cfg.alpha)

        return live

    def cached(logits, labels, idx, x):
        return kd_loss(logits, teacher_logits[idx], labels, cfg.temperature, cfg.alpha)

    return cached


def teacher_logits_for(cfg_list: list[tuple[DistillConfig, TrainConfig]], teacher: nn.Module, data: Dataset,
                       teacher_sha256: str) -> torch.Tensor | None:
    """Cached train-split logits when any of the given trainings distils without augmentation."""
    if any(d.enabled and not t.augment for d, t in cfg_list):
        return cached_teacher_logits(teacher, data.train, teacher_sha256, data.fingerprint)
    return None
