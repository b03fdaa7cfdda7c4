"""Knowledge distillation (Hinton, Vinyals & Dean 2015).

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
Without augmentation every epoch sees the same training images, so the teacher's logits come from the cache
(compress.data.teacher_logits): a student's training never runs the teacher again.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.data import Dataset
from compress.data.teacher_logits import cached_teacher_logits
from compress.recipe import DistillConfig, TrainConfig
from compress.train import LossFn, hard_label_loss, model_device


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


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
