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
                                  pruning_ratio=cfg.ratio, ignored_layers=ignored, global_pruning=False)
    pruner.step()
    return model


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else -1
