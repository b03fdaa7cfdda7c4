"""The run's time budget (``search.wall_time_s``): the whole ``compress search``, report included, within it.

No worker starts a trial (and no short schedule is promoted) that is predicted to end after the time the rest
of the run needs. That rest is a pure function of the study's own trials, timed where they ran (``tail``), so
the search gets what is left, in a slow hour as in a fast one. The deadline is a study attribute set by the
process that writes the report, so the workers it starts and those on other machines stop with it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import optuna
from optuna.trial import TrialState

from compress.measure.capacity import default_threads
from compress.measure.verdicts import NEAR_FRONT, pareto_indices
from compress.pipeline import from_teacher
from compress.recipe import Recipe, with_values

# An ONNX Runtime session, its warm-up windows and the teacher's test pass between measurements.
MEASURE_OVERHEAD_S = 1.0

# Writing the outputs, the paired tests on per-image results kept by the processes that made the models.
REPORT_S = 10.0

# Baselines the final measurement measures besides the front: the int8 and the pruned teacher, the student
# without KD.
N_BASELINES = 3


def begin(study: optuna.Study, recipe: Recipe, start: float) -> None:
    """Set (or, without ``search.wall_time_s``, clear) the study's deadline: ``start`` + the budget."""
    w = recipe.search.wall_time_s
    study.set_user_attr("deadline", None if w is None else {"at": start + w, "wall_time_s": w})


def end(study: optuna.Study) -> None:
    study.set_user_attr("deadline", None)


@contextlib.contextmanager
def cleared_on_error(study: optuna.Study):
    """The deadline cleared when the block fails (an error, Ctrl-C), so that no later worker reads it; the
    block's own error is the one raised, even where the storage is what failed."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            end(study)
        raise


def duration(t: optuna.trial.FrozenTrial) -> float:
    return (t.datetime_complete - t.datetime_start).total_seconds()


def epochs_of(r: Recipe) -> int:
    """The epochs the recipe's model trains: a pruned teacher's fine-tuning, or a student's distillation and,
    when it is pruned, its fine-tuning."""
    if from_teacher(r):
        return r.prune.finetune.epochs
    return r.distill.train.epochs + (r.prune.finetune.epochs if r.prune.enabled else 0)


def full_seconds(t: optuna.trial.FrozenTrial, recipe: Recipe) -> float:
    """How long the trial's full schedule takes: its duration, scaled up by epochs where halving kept it short."""
    short = t.user_attrs.get("overrides", {})
    if t.user_attrs.get("halving", {}).get("promoted") is not False or not short:
        return duration(t)
    full = with_values(recipe, t.params)
    return duration(t) * epochs_of(full) / max(epochs_of(with_values(full, short)), 1)


def tail(trials: list[optuna.trial.FrozenTrial], recipe: Recipe) -> dict | None:
    """Seconds the run needs after its search, by part, or None before a trial has trained. Any trial within
    the final measurement's reach of the front (``NEAR_FRONT``) may be chosen, so training is the longest full
    schedule among them (its student without KD trains it again, beside the other baselines); the final
    measurement and the capacity sweep are bounded by the recipe's time limits per model."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs]
    if not done:
        return None
    metrics = [t.user_attrs["metrics"] for t in done]
    points = [(m["val_accuracy"], m["latency_p95_ms"]) for m in metrics]
    front, near = pareto_indices(points), pareto_indices(points, margin=NEAR_FRONT)
    lat, cap = recipe.latency, recipe.capacity

    def measured(p50_ms: float) -> float:
        return min(lat.max_seconds, lat.max_runs * p50_ms / 1e3) + MEASURE_OVERHEAD_S

    teacher = measured(float("inf"))
    # Alone: the teacher and every trial on the front; then interleaved with the baselines, and each baseline
    # alone.
    first = teacher + sum(measured(metrics[i]["latency_p50_ms"]) for i in front)
    measurement = 2 * first + 2 * N_BASELINES * teacher * recipe.search.baselines
    capacity = 0.0
    if cap.enabled:
        threads = cap.threads or default_threads(os.cpu_count() or 1)
        capacity = (len(front) + 1) * len(cap.batch_sizes) * len(threads) * 2 * cap.max_seconds
    parts = {"training": max(full_seconds(done[i], recipe) for i in near), "final_measurement": measurement,
             "capacity": capacity, "report": REPORT_S}
    return {"seconds": sum(parts.values()), "parts": parts}


def search_left(study: optuna.Study, recipe: Recipe, trials) -> tuple[float, dict | None] | None:
    """Seconds left for the search before the run's deadline after the rest of the run (``tail``), and that
    prediction; None without a deadline."""
    d = study.user_attrs.get("deadline")
    if not d:
        return None
    rest = tail(trials, recipe)
    return d["at"] - time.time() - (rest["seconds"] if rest else 0.0), rest


def typical_trial_s(trials) -> float:
    """What a trial started now is expected to take: the median duration of the study's complete trials that
    were not promoted (kept their short schedule, or had one schedule only), as its promotion is checked against
    the same deadline when its short schedule ends; of all complete ones before any such trial."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs]
    spans = [duration(t) for t in done if t.user_attrs.get("halving", {}).get("promoted") is not True] or [
        duration(t) for t in done]
    return statistics.median(spans) if spans else 0.0


def busy_seconds(trials: list[optuna.trial.FrozenTrial], now: float | None = None) -> float:
    """Time during which at least one trial ran: the union of the trials' intervals. The study's clock for
    ``search.timeout_s`` and its rate: several workers share it, a pause between two runs is not counted."""
    now = now or time.time()
    spans = sorted((t.datetime_start.timestamp(), t.datetime_complete.timestamp() if t.datetime_complete else now)
                   for t in trials if t.datetime_start is not None)
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def deadline_near(study: optuna.Study, recipe: Recipe, trials) -> str | None:
    """Why no trial starts now under the run's budget (search.wall_time_s), or None: the time left for the
    search is less than a typical trial of this study takes."""
    left = search_left(study, recipe, trials)
    if left is None or left[1] is None:  # before a trial has trained, the study gets its first one anyway
        return None
    seconds, rest = left
    typical = typical_trial_s(trials)
    if seconds >= typical:
        return None
    parts = ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in rest["parts"].items())
    w = study.user_attrs["deadline"]["wall_time_s"]
    return (f"the run's time budget (search.wall_time_s {w:.0f} s): {max(seconds, 0) / 60:.1f} min left for "
            f"trials after the {rest['seconds'] / 60:.1f} min predicted for the rest of the run ({parts}), less "
            f"than this study's typical trial ({typical / 60:.1f} min)")
