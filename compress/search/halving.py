"""Successive halving: short schedules first, the full one for the candidates that earn it, and
the chosen candidate's full schedule after the search."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress.measure.latency import measure
from compress.pipeline import (
    RESTART_STATE,
    evaluated,
    from_teacher,
    model_metrics,
    trains,
)
from compress.recipe import Recipe, space_leaf, with_values
from compress.search import baselines as bl
from compress.search.budget import busy_seconds, search_left
from compress.search.records import fetch, judged, needs_full


def short_schedule(recipe: Recipe) -> dict[str, int]:
    """The epochs of the candidate's short schedule under ``search.halving`` (see HalvingConfig), as recipe
    overrides; empty when halving is off, the candidate does not train, or no schedule would get shorter."""
    h = recipe.search.halving
    if not h.enabled or not trains(recipe):
        return {}
    keys = [f"{first_schedule(recipe)}.epochs"] + (
        [] if from_teacher(recipe) or not recipe.prune.enabled else ["prune.finetune.epochs"])
    cut = {k: max(1, math.ceil(space_leaf(recipe, k) * h.short_fraction)) for k in keys}
    return cut if cut[keys[0]] < space_leaf(recipe, keys[0]) else {}  # the first is where promotion is decided


def first_schedule(recipe: Recipe) -> str:
    """The recipe section of a candidate's first training schedule: the fine-tuning of a pruned teacher, the
    distillation of a student trained from scratch."""
    return "prune.finetune" if from_teacher(recipe) else "distill.train"


def tier_of(family: str, macs: int | None, p50_ms: float | None = None) -> str:
    """The candidates search.halving compares: one family, MACs within 2x and, when
    timed before training, p50 within one band of 1.5x. The 8-wide 2-deep and the 16-wide 1-deep CNN both have
    ~2 MMACs, but ran at p50 0.06-0.08 and 0.04-0.05 ms: different points of the front, not rivals."""
    tier = f"{family}-{int(math.log2(max(macs or 1, 1)))}"
    if p50_ms is not None:
        tier += f"-t{int(math.log(max(p50_ms, 1e-3) * 1000, 1.5))}"
    return tier


def promote(study: optuna.Study, recipe: Recipe, tier: str, short_val: float, named: bool = False) -> tuple[bool, str]:
    """Whether a short schedule's validation accuracy earns the full schedule: Optuna's SuccessiveHalvingPruner
    over the tier's short-schedule accuracies, kept in the companion study ``<name>:halving:<tier>`` (same
    storage, so every worker sees them). Returns the decision and the companion trial's reference. ``named``:
    a candidate of search.enqueue, which goes on whatever its rank (its accuracy is recorded for the others)."""
    h = recipe.search.halving
    rungs = optuna.create_study(
        storage=study._storage, study_name=f"{recipe.name}:halving:{tier}", direction="maximize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=h.reduction_factor, min_early_stopping_rate=0,
            bootstrap_count=h.bootstrap),
        load_if_exists=True)
    with warnings.catch_warnings():  # ask/tell on a storage with heartbeats: intended, the main study beats
        warnings.simplefilter("ignore", UserWarning)
        rung = rungs.ask()
    rung.report(short_val, 1)
    promoted = not rung.should_prune() or named
    rungs.tell(rung, short_val)
    return promoted, f"{rungs.study_name}#{rung.number}"


def cannot_reach_front(study: optuna.Study, family: str, short_val: float, p95_ms: float | None,
                       n_val: int | None = None) -> str | None:
    """Why a candidate of ``family`` whose short schedule gave ``short_val`` (validation accuracy) and whose
    architecture was timed at ``p95_ms`` before training cannot reach the front with its full schedule, or
    None (search.halving.front): a finished trial as fast is already as accurate as ``short_val`` plus the
    largest gain a trial of the family made from its short schedule to its full one, less one standard error of
    that trial's validation accuracy on ``n_val`` images (when given): a full schedule that could end within it
    would not be told apart from that trial (evidence: results/README.md). None as well before any such gain
    is known, or without a time for the candidate."""
    if p95_ms is None:
        return None
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
    gains = [t.user_attrs["metrics"]["val_accuracy"] - t.user_attrs["halving"]["short_val_accuracy"] for t in done
             if t.user_attrs.get("halving", {}).get("promoted") and t.user_attrs["halving"].get("family") == family]
    if not gains:
        return None
    reach = short_val + max(gains)

    def se(acc: float) -> float:  # one standard error of a validation accuracy
        return math.sqrt(acc * (1 - acc) / n_val) if n_val else 0.0

    better = [t for t in done if t.user_attrs["metrics"]["latency_p95_ms"] <= p95_ms
              and t.user_attrs["metrics"]["val_accuracy"] >= reach - se(t.user_attrs["metrics"]["val_accuracy"])]
    if not better:
        return None
    t = max(better, key=lambda t: t.user_attrs["metrics"]["val_accuracy"])
    m = t.user_attrs["metrics"]
    margin = (f", less one standard error of its accuracy ({100 * se(m['val_accuracy']):.2f} pp on {n_val:,} "
              "validation images)") if n_val else ""
    return (f"trial {t.number} is as fast (p95 {m['latency_p95_ms']:.3f} <= {p95_ms:.3f} ms) and already "
            f"{100 * m['val_accuracy']:.2f}% accurate, at least the {100 * reach:.2f}% this one would reach with the "
            f"largest gain a {family} candidate made from its full schedule ({100 * max(gains):+.2f} pp){margin}")


def rest_overruns(study: optuna.Study, recipe: Recipe, short: dict[str, int], short_s: float,
                  study_recipe: Recipe | None = None) -> str | None:
    """Why a candidate promoted after its short schedule (``short_s`` seconds of training) is finished as that
    schedule anyway, or None: the rest of its full schedule, at the short one's pace per epoch (an overestimate
    for a later, pruned schedule), would end after ``search.timeout_s`` of the study's busy time. Without
    this, a study's last candidate overran its budget by minutes. Likewise when it would end after the time the
    run's budget leaves the search (search.wall_time_s, ``budget.tail``), predicted from the other trials with the
    study's recipe, ``study_recipe`` (``recipe`` is this trial's)."""

    trials = study.get_trials(deepcopy=False)
    budget = recipe.search.timeout_s
    run = search_left(study, study_recipe or recipe, trials)  # search.wall_time_s: what the rest leaves the search
    if budget is None and run is None:
        return None
    first = f"{first_schedule(recipe)}.epochs"
    pace = short_s / short[first]
    # ``recipe`` is the trial's: its epochs are the full schedule's.
    rest = pace * sum(space_leaf(recipe, k) - epochs for k, epochs in short.items())
    left = budget - busy_seconds(trials) if budget is not None else math.inf
    if run is not None and run[0] < left:
        if rest <= run[0]:
            return None
        return (f"the rest of its schedule (~{rest / 60:.1f} min at the short one's pace) would end after the time "
                f"the run's budget leaves the search ({max(run[0], 0) / 60:.1f} min, search.wall_time_s)")
    if rest <= left:
        return None
    return (f"the rest of its schedule (~{rest / 60:.1f} min at the short one's pace) would end after the study's "
            f"time budget ({max(left, 0) / 60:.1f} min left of search.timeout_s)")


@dataclasses.dataclass
class FullPlan:
    """The chosen candidate's full schedule, to be built with the baselines (``bl.build_all``)."""

    build: bl.Build
    trial_schedule: dict  # the epochs the trial had, where halving kept it short
    restart: dict  # what the model is made with, as a promoted trial's recipe says it (when resumed)
    resumed: bool


def full_plan(recipe: Recipe, chosen: dict, saved_state: dict | None = None, store=None) -> FullPlan | None:
    """Cheap early, exact late: search.halving leaves most candidates on their short schedule, and a promoted
    one too when its full schedule would overrun search.timeout_s; search.train_fraction trains every candidate
    on part of the training split. The model handed over gets what the recipe asks for: its full schedule, on
    the whole split. None when the chosen trial had its full schedule on the whole split already.
    ``saved_state`` (the trial's ``restart_state`` attribute) and ``store`` fetch its restart state where
    another machine ran it."""
    if not needs_full(recipe, chosen):
        return None
    fraction, short = recipe.search.train_fraction, chosen.get("schedule") == "short"
    fp32 = {"quantize.enabled": False} if chosen.get("int8_rejected") else {}  # its int8 failed the gate: as the trial
    full = with_values(recipe, {**chosen["params_"], **fp32})
    trial_schedule = {k: v for k, v in chosen["overrides"].items() if k not in fp32} if short else {}
    cut = [f"{k} {v} of {space_leaf(full, k)}" for k, v in trial_schedule.items() if v != space_leaf(full, k)]
    cut += [f"{fraction:g} of the training split"] if fraction < 1 else []
    # Where the trial stopped at its restart on the whole split, its saved state lets the rest of the schedule
    # go on from there: the model a promotion would have made, without its short schedule trained again.
    state = Path(chosen["artifact_path"]).parent / RESTART_STATE if chosen.get("artifact_path") else None
    saved_state = saved_state or {}
    resumed = short and fraction >= 1 and fetch(state, saved_state.get("sha256"), saved_state.get("artifact"), store,
                                                 f"trial {chosen['trial']}: its restart state")
    restart = dict(fp32)
    if resumed:
        first = first_schedule(full)
        restart[f"{first}.restart_epochs"] = trial_schedule[f"{first}.epochs"]
        full = with_values(full, restart)
    tqdm.write(f"chosen trial #{chosen['trial']} had {', '.join(cut)}: training its full schedule"
               + (" (resumed from its short one)" if resumed else ""))
    return FullPlan(bl.full_schedule(full, f"trial_{chosen['trial']}_full", recipe.out_path / "full_schedule",
                                     state=state if resumed else None), trial_schedule, restart, bool(resumed))


def full_result(recipe: Recipe, chosen: dict, plan: FullPlan, stage, data, teacher_val: float, target,
                 seconds: float) -> tuple[dict, dict]:
    """The record handed over and summary.json's ``full_schedule``: the fully trained model replaces the trial's
    when at least as accurate on the validation split and meeting what that one met."""
    alone = measure(stage.onnx, recipe.latency, *target)
    rec = {**{k: v for k, v in chosen.items() if k != "model_sha256"},  # the trial's file's; this one is new
           **model_metrics(stage, data, alone, evaluated(stage.onnx, data, keep=True)),
           "artifact_path": str(stage.onnx), "latency_measured": "final"}
    rec = judged(rec, teacher_val, recipe)
    better = rec["val_accuracy"] >= chosen["val_accuracy"] and rec["feasible"] >= chosen["feasible"]
    result = {"trial": chosen["trial"], "trial_schedule": plan.trial_schedule,
              "trial_train_fraction": recipe.search.train_fraction, "trial_val_accuracy": chosen["val_accuracy"],
              "full_val_accuracy": rec["val_accuracy"], "full_latency_p95_ms": rec["latency_p95_ms"],
              "full_feasible": rec["feasible"], "handed_over": "full" if better else "trial",
              "resumed_from_short": plan.resumed, "seconds": round(seconds, 1)}
    tqdm.write(f"trial #{chosen['trial']} full schedule: val {100 * rec['val_accuracy']:.2f}% (short "
               f"{100 * chosen['val_accuracy']:.2f}%): handing over the {'full' if better else 'trial'} model")
    handed = {**rec, "overrides": plan.restart, "schedule": "full (after the search)"} if better else chosen
    return {**handed, "full_schedule": result}, result
