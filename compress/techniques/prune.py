"""Structured pruning: physically remove channels with Torch-Pruning's dependency graph.

Policy (how much, by which importance) comes from the recipe; the mechanism (which coupled layers
must shrink together) is Torch-Pruning's. The classifier's outputs are never pruned.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from compress.errors import CompressError, RecipeError
from compress.recipe import PruneConfig


class PruneError(CompressError):
    """Torch-Pruning cannot prune this model as asked; the message names the way out."""


def _importance(name: str):
    if name == "random":
        return tp.importance.RandomImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def find_classifier(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The layer that produces the class scores: the last Linear or Conv2d to run whose output has as
    many features as the model has outputs. Its outputs are the classes, so it is never pruned."""
    ran: list[tuple[nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.append((mod, tuple(o.shape))))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    n = out.shape[-1]
    for mod, shape in reversed(ran):
        features = shape[-1] if isinstance(mod, nn.Linear) else shape[1]
        if features == n:
            return mod
    raise PruneError(f"{type(model).__name__}: no Linear or Conv2d layer produces its {n} class scores, so the "
                     "classifier cannot be kept intact; set prune.enabled: false for this model")


def prune_(model: nn.Module, cfg: PruneConfig, input_shape=(1, 1, 28, 28)) -> nn.Module:
    """Remove ``cfg.ratio`` of the channels of every prunable layer, in place; returns the model.
    The classifier and the modules named in ``cfg.ignore`` keep all their channels."""
    if cfg.ratio <= 0:
        return model
    model.eval()
    example = torch.zeros(*input_shape)
    named = dict(model.named_modules())
    unknown = [n for n in cfg.ignore if n not in named]
    if unknown:
        some = ", ".join(n for n in list(named)[1:13] if n)
        raise RecipeError(f"prune.ignore: {type(model).__name__} has no module {unknown[0]!r}; its modules are "
                          f"named like {some}, ...")
    ignored = [find_classifier(model, example)] + [named[n] for n in cfg.ignore]
    before = _widths(model, ignored)
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=_importance(cfg.importance),
                                      pruning_ratio=cfg.ratio, ignored_layers=ignored, global_pruning=False,
                                      round_to=cfg.round_to)
        pruner.step()
        with torch.no_grad():
            model(example)
    except Exception as err:  # noqa: BLE001 - Torch-Pruning's errors name a layer at best
        raise PruneError(f"Torch-Pruning could not prune {type(model).__name__} ({type(err).__name__}: "
                         f"{str(err)[:300]}). Leave the layer it names unpruned with prune.ignore: [<module name>], "
                         "or set prune.enabled: false") from None
    _say_rounding(cfg, type(model).__name__, before, _widths(model, ignored))
    return model


def _widths(model: nn.Module, ignored: list[nn.Module]) -> list[int]:
    """Output channels (features) of every prunable Conv2d and Linear layer, in module order."""
    keep = {id(m) for m in ignored}
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in keep]


_said: set[tuple] = set()


def _say_rounding(cfg: PruneConfig, name: str, before: list[int], after: list[int]) -> None:
    """With round_to, kept channel counts round down: a small layer can lose far more than prune.ratio
    (12 channels pruned by 0.23 with round_to 8 keep 8, a third gone). Said once per model and setting."""
    if not cfg.round_to or not before or (key := (name, tuple(before), cfg.ratio, cfg.round_to)) in _said:
        return
    _said.add(key)
    removed = 1 - sum(after) / sum(before)
    if removed - cfg.ratio > 0.05:
        def short(widths: list[int]) -> str:
            return "-".join(str(w) for i, w in enumerate(widths) if i == 0 or w != widths[i - 1])

        tqdm.write(f"prune.ratio {cfg.ratio:.2f} with round_to {cfg.round_to} removed {removed:.0%} of {name}'s channels "
                   f"({short(before)} -> {short(after)}): kept counts round down to multiples of {cfg.round_to}; "
                   "a smaller round_to (or none) keeps closer to the ratio")


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
