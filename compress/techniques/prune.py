"""Structured pruning: physically remove channels with Torch-Pruning's dependency graph.

Policy (how much, by which importance) comes from the recipe; the mechanism (which coupled layers
must shrink together) is Torch-Pruning's. The classifier's outputs are never pruned.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from compress.recipe import PruneConfig


def _importance(name: str):
    if name == "random":
        return tp.importance.RandomImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def prune_(model: nn.Module, cfg: PruneConfig, input_shape=(1, 1, 28, 28)) -> nn.Module:
    """Remove ``cfg.ratio`` of the channels of every prunable layer, in place; returns the model."""
    if cfg.ratio <= 0:
        return model
    model.eval()
    example = torch.zeros(*input_shape)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == _num_classes(model)]
    pruner = tp.pruner.MetaPruner(model, example, importance=_importance(cfg.importance),
                                  pruning_ratio=cfg.ratio, ignored_layers=ignored, global_pruning=False,
                                  round_to=cfg.round_to)
    pruner.step()
    return model


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else -1


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, inputs, max_samples: int = 4096) -> nn.Module:
    """Re-estimate BatchNorm statistics on training inputs after pruning ("adaptive BN", Li et al.,
    EagleEye, ECCV 2020): the kept channels' running statistics were measured on the unpruned network."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    seen = 0
    for x in inputs:
        model(x)
        seen += len(x)
        if seen >= max_samples:
            break
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)
    return model
