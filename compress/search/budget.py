"""The run's time budget (``search.wall_time_s``): the whole ``compress search``, report included, within it.

``search.timeout_s`` bounds the search alone; what comes after it (the baselines and, where the search kept it
short, the chosen candidate's full schedule, trained side by side; the final latency measurement; the capacity
sweep) takes minutes that vary with the machine's speed (results/README.md, fashion_mnist/). With a budget for
the whole run, no worker starts a trial (and no short schedule is promoted) that is predicted to end after the
time the rest of the run needs: the search gets what is left, in a slow hour as in a fast one. The prediction
comes from the study's own trials, timed where they ran:

- the chosen candidate's student without KD trains its schedule: as long as that trial took (the trial
  ``records.choose`` picks from the search's numbers);
- a baseline the search does not decide (the pruned teacher) trains ``epochs`` at the per-epoch pace of the
  study's trial of its family nearest in MACs, scaled by the MACs ratio to the power ``PACE_EXPONENT``;
- the builds share ``search.finish_processes`` processes, longest first; the final measurement's first pass
  runs beside them;
- each latency measurement takes up to ``latency.max_seconds`` (fewer where ``max_runs`` runs end sooner) and
  ``MEASURE_OVERHEAD_S``; the capacity sweep bounds each setting to ``capacity.max_seconds`` (warm-up and timed).

The deadline is the study's (a user attribute), set by the process that writes the report when it starts, so
the workers it starts and those on other machines stop with it; each run sets its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from compress.measure.capacity import default_threads
from compress.measure.verdicts import pareto_indices
from compress.pipeline import from_teacher, trains
from compress.recipe import Recipe
from compress.search import baselines as bl
from compress.search.records import (
    NEAR_FRONT,
    choose,
    needs_full,
    recipe_of,
    trained,
    trial_record,
)

# Per-epoch training seconds grow about as MACs ** 0.6 among pruned teachers (fitted on two trained side by side).
PACE_EXPONENT = 0.6


# An ONNX Runtime session, its warm-up windows and the teacher's test pass between measurements.
MEASURE_OVERHEAD_S = 1.0


# The int8 teacher baseline where no trial made it: calibration, parity check and accuracy (about a minute).
UNTRAINED_BUILD_S = 60.0


# Writing the outputs, the paired tests on per-image results kept by the processes that made the models.
REPORT_S = 10.0


def begin(study: optuna.Study, recipe: Recipe, start: float) -> None:
    """Set (or, without ``search.wall_time_s``, clear) the study's deadline: ``start`` + the budget. What comes
    after the search is added by ``plan`` once the teacher is loaded."""
    w = recipe.search.wall_time_s
    study.set_user_attr("deadline", None if w is None else {
        "at": start + w, "wall_time_s": w, "builds": [], "processes": 1, "n_baselines": 0})


def plan(study: optuna.Study, builds: list[dict], processes: int, n_baselines: int) -> None:
    """``builds``: the baselines the search does not decide that are not kept from before, each {name, epochs,
    macs, family} (epochs 0: nothing trained); ``processes``: how many train at once after the search;
    ``n_baselines``: how many the final measurement measures."""
    d = study.user_attrs.get("deadline")
    if d:
        study.set_user_attr("deadline", {**d, "builds": builds, "processes": processes, "n_baselines": n_baselines})


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
    """The epochs the recipe's model trains: a pruned teacher's fine-tuning, a student's distillation and, when
    it is pruned, its fine-tuning."""

    return r.prune.finetune.epochs if from_teacher(r) else r.distill.train.epochs + (
        r.prune.finetune.epochs if r.prune.enabled else 0)


def predict_tail(study: optuna.Study, recipe: Recipe, trials=None) -> dict | None:
    """Seconds the run needs after its search, by part, or None while no trial has trained (or no deadline)."""

    d = study.user_attrs.get("deadline")
    if not d:
        return None
    frozen = {t.number: t for t in (trials or study.get_trials(deepcopy=False))}
    complete = trained([trial_record(t, Path(".")) for t in frozen.values()])
    if not complete:
        return None
    guess = choose(complete)
    seconds = {r["trial"]: duration(frozen[r["trial"]]) for r in complete}
    made_by = {r["trial"]: recipe_of(recipe, r) for r in complete}
    # The student without KD: the guessed trial's schedule again; with its full schedule where halving kept it
    # short, which the chosen one then also gets (the rest of it, from its restart state).
    no_kd = seconds[guess["trial"]]
    jobs = []
    if needs_full(recipe, guess):
        short, full = epochs_of(made_by[guess["trial"]]), epochs_of(recipe_of(recipe, {**guess, "overrides": {}}))
        no_kd *= full / short
        jobs.append(seconds[guess["trial"]] * (full - short) / short)
    if recipe.search.baselines:
        jobs.append(no_kd)
    paced = [(r, seconds[r["trial"]] / epochs_of(made_by[r["trial"]])) for r in complete
             if trains(made_by[r["trial"]]) and r.get("macs")]
    for b in d["builds"]:
        if not b["epochs"]:  # the int8 teacher: copied from the search's trial of the teacher as it is, if any
            made = bl.teacher_int8(recipe, Path(".")).recipe
            if not any(bl.same_untrained(made, made_by[r["trial"]]) for r in complete):
                jobs.append(UNTRAINED_BUILD_S)
            continue
        same = [p for p in paced if p[0]["params_"].get("student.model") == b["family"]] or paced
        if not same:
            continue
        ref, pace = min(same, key=lambda p: (abs(math.log(p[0]["macs"] / b["macs"])),
                                             -epochs_of(made_by[p[0]["trial"]])))
        jobs.append(b["epochs"] * pace * (b["macs"] / ref["macs"]) ** PACE_EXPONENT)
    # The final measurement: the teacher and the trials near the front, each alone, beside the trainings; then,
    # once they are made, the teacher, the front and the baselines interleaved, and each baseline alone.
    lat = recipe.latency
    points = [(r["val_accuracy"], r["latency_p95_ms"]) for r in complete]
    near = [complete[i] for i in pareto_indices(points, margin=NEAR_FRONT)]
    front = [complete[i] for i in pareto_indices(points)]

    def measured(p50_ms: float) -> float:
        return min(lat.max_seconds, lat.max_runs * p50_ms / 1e3) + MEASURE_OVERHEAD_S

    teacher = measured(max(r["latency_p50_ms"] for r in complete))  # slower than every trial, or about as slow
    n_baselines = d["n_baselines"]
    slots = [teacher + sum(measured(r["latency_p50_ms"]) for r in near)] + [0.0] * (max(d["processes"], 1) - 1)
    for j in sorted(jobs, reverse=True):  # longest first, each on the slot that frees first
        slots[slots.index(min(slots))] += j
    second = teacher + sum(measured(r["latency_p50_ms"]) for r in front) + 2 * n_baselines * measured(math.inf)
    cap = recipe.capacity
    capacity = 0.0
    if cap.enabled:


        threads = cap.threads or default_threads(os.cpu_count() or 1)
        capacity = (len(front) + 1) * len(cap.batch_sizes) * len(threads) * 2 * cap.max_seconds
    parts = {"training": max(slots), "final_measurement": second, "capacity": capacity, "report": REPORT_S}
    return {"seconds": sum(parts.values()), "parts": parts, "guess": guess["trial"]}


def search_left(study: optuna.Study, recipe: Recipe, trials=None) -> tuple[float, dict | None] | None:
    """Seconds left for the search before the run's deadline, after what the rest of the run is predicted to
    need (``predict_tail``), and that prediction; None without a deadline."""
    d = study.user_attrs.get("deadline")
    if not d:
        return None
    tail = predict_tail(study, recipe, trials)
    return d["at"] - time.time() - (tail["seconds"] if tail else 0.0), tail


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
    if left is None:
        return None
    seconds, tail = left
    if tail is None:  # nothing to predict from before a trial has trained: the study gets its first one anyway
        return None
    typical = typical_trial_s(trials)
    if seconds >= typical:
        return None
    rest = (f"the {tail['seconds'] / 60:.1f} min predicted for the rest of the run ("
            + ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in tail["parts"].items()) + ")")
    w = study.user_attrs["deadline"]["wall_time_s"]
    return (f"the run's time budget (search.wall_time_s {w:.0f} s): {max(seconds, 0) / 60:.1f} "
            f"min left for trials after {rest}, less than this study's typical trial ({typical / 60:.1f} min)")
