"""The search space: the conditional walk that samples it, and the covering grid of first trials."""

from __future__ import annotations

import random
from typing import Any

import optuna

from compress.models import takes_argument
from compress.pipeline import from_teacher, removes_channels, trains
from compress.recipe import (
    BRANCH_SEP,
    Branches,
    Range,
    Recipe,
    range_is_int,
    space_leaf,
    space_spec,
    with_values,
)


def covering_startup(recipe: Recipe) -> list[dict[str, Any]]:
    """Partial parameters for the first ``search.startup_trials`` trials so that every choice of every
    categorical parameter is tried: each choice appears about n/k times, in a seeded order per parameter
    (a Latin hypercube over the categories). Numeric parameters are left to the sampler. With a dozen
    trials, independent random draws can leave a whole choice (a student family, a format) untried.
    A branch's own categorical parameters are covered among the trials that take that branch. The
    candidates of ``search.enqueue`` come first and count as covering their choices, so the grid gives the
    choices they leave out first."""
    n = recipe.search.startup_trials
    rng = random.Random(recipe.seed)
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    enqueued = [dict(p) for p in recipe.search.enqueue]

    def cover(space: dict, idx: list[int], prefix: str, given: list[dict]) -> None:
        for key, raw in space.items():
            spec = space_spec(raw)
            choices = list(spec) if isinstance(spec, (Branches, list)) else []
            if len(choices) < 2:
                continue
            count = [sum(1 for g in given if g.get(prefix + key) == c) for c in choices]
            column = []
            for _ in idx:  # the least covered choice next (ties: in the space's order): i % k without enqueue
                j = count.index(min(count))
                count[j] += 1
                column.append(choices[j])
            rng.shuffle(column)
            for i, value in zip(idx, column):
                rows[i][prefix + key] = value
            if isinstance(spec, Branches):
                for choice, sub in spec.items():
                    cover(sub, [i for i, v in zip(idx, column) if v == choice], f"{choice}{BRANCH_SEP}",
                          [g for g in given if g.get(prefix + key) == choice])

    cover(recipe.search.space, list(range(n)), "", enqueued)
    return enqueued + (rows if any(rows) else [])  # search.enqueue's first


def _switches_first(key: str) -> tuple[int, str]:
    """Sampling order: the switches, then the pruning ratio (0 leaves a teacher copy untrained), then the rest."""
    return (0 if key == "student.model" or key.endswith(".enabled") else 1 if key == "prune.ratio" else 2, key)


def applies(key: str, recipe: Recipe) -> bool:
    """Whether ``key`` shapes the model under ``recipe``'s other values: a width means nothing to a student
    made from the teacher, an int8 format nothing when int8 is off, a KD temperature nothing without KD or
    without training (a teacher copy that loses no channels is not trained)."""
    section, field = key.split(".", 1)
    if section == "student" and field in ("width", "depth"):
        return not from_teacher(recipe) and takes_argument(recipe.student.model, field)
    if section == "student" and field != "model":  # student.kwargs.*
        return not from_teacher(recipe)
    if field == "enabled":
        return section != "distill" or trains(recipe)
    if section == "distill":
        return recipe.distill.enabled and trains(recipe)
    if section == "prune" and field != "ratio" and from_teacher(recipe):
        return removes_channels(recipe)
    if section in ("prune", "quantize"):
        return bool(getattr(recipe, section).enabled)
    return True


def _suggest_one(trial: optuna.Trial, name: str, spec: Any, current: Any) -> Any:
    if isinstance(spec, Range):
        if range_is_int(spec, current):
            return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, (list, Branches)):
        return trial.suggest_categorical(name, list(spec))
    # A one-choice categorical: fixed, yet recorded in trial.params with the rest.
    return trial.suggest_categorical(name, [spec])


def suggest(trial: optuna.Trial, recipe: Recipe) -> dict[str, Any]:
    """Sample the recipe's space; returns ``key.path -> value``.

    A conditional space: a parameter that does not apply given the switches already drawn is neither
    sampled nor recorded, so the sampler does not model noise. A branch's parameters are sampled only
    when its choice is drawn, under the name ``<choice>/<key.path>``, so each branch keeps its own ranges.
    """
    values: dict[str, Any] = {}

    def walk(space: dict, prefix: str) -> None:
        for key in sorted(space, key=_switches_first):
            if not applies(key, with_values(recipe, values)):
                continue
            spec = space_spec(space[key])
            values[key] = _suggest_one(trial, prefix + key, spec, space_leaf(recipe, key))
            if isinstance(spec, Branches):  # the chosen branch's sub-space, before the rest of this level
                walk(spec[values[key]], f"{values[key]}{BRANCH_SEP}")

    walk(recipe.search.space, "")
    return values
