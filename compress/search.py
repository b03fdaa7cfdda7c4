"""The Optuna study: the space comes from the recipe; each trial calls the one-candidate pipeline.

Two objectives: maximise validation accuracy, minimise latency p95 on the target. The service level
(p95 bound, largest accuracy drop) enters as Optuna constraints, so infeasible trials are kept and shown
but never chosen. The study lives in an Optuna storage (SQLite by default), so it resumes, and
optuna-dashboard can watch it live.

Optuna's pruners do not support multi-objective studies (optuna/optuna#3450), so each trial's learning
curve is reported to a companion single-objective study (``<name>:curves:<tier>``) whose pruner decides.
Curves are grouped by student family and cost tier (MACs within 2x): a small, fast student is only
compared with students of its kind and size, never stopped for learning slower than a large one.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress.data import Dataset
from compress.latency import measure
from compress.models import takes_argument
from compress.teacher import model_size
from compress.pipeline import build_student, compress_student, from_teacher, model_metrics, removes_channels, trains
from compress.recipe import (BRANCH_SEP, Branches, Range, Recipe, RecipeError, range_is_int, space_leaf, space_spec,
                             with_values)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_url(recipe: Recipe) -> str:
    if recipe.search.storage:
        return recipe.search.storage
    return f"sqlite:///{(recipe.out_path / 'study.db').as_posix()}"


def search_fingerprint(recipe: Recipe) -> str:
    """What makes two runs the same study: everything but how long to run and where it is kept."""
    data = recipe.to_dict()
    for k in ("n_trials", "timeout_s", "storage"):
        data["search"].pop(k)
    data["output_dir"] = "."
    return Recipe.model_validate(data).fingerprint()


CONSTRAINTS = ("p95_ms_over_slo", "accuracy_drop_pp_over_max", "batch_cores_over_max")


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Named Optuna constraints (``Trial.set_constraint``), <= 0 feasible; unmeasured trials are infeasible."""
    return [trial.constraints.get(k, 1.0) for k in CONSTRAINTS]


def constraint_values(val_accuracy: float, p95_ms: float, throughput_sps: float, teacher_val_accuracy: float,
                      recipe: Recipe) -> list[float]:
    """Online p95 bound, accuracy bound, and (batch form) cores needed at the measured per-core throughput."""
    slo = recipe.slo
    drop_pp = 100.0 * (teacher_val_accuracy - val_accuracy)
    cores_over = -1.0
    if slo.batch and slo.batch.max_cores:
        per_core = throughput_sps / recipe.target.threads
        cores_over = math.ceil(slo.batch.required_sps / per_core) - slo.batch.max_cores
    return [p95_ms - slo.p95_ms if slo.p95_ms is not None else -1.0,
            drop_pp - slo.max_accuracy_drop_pp if slo.max_accuracy_drop_pp is not None else -1.0,
            float(cores_over)]


def _sampler(recipe: Recipe) -> optuna.samplers.BaseSampler:
    s = recipe.search
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=recipe.seed, population_size=max(4, min(50, s.n_trials // 2)))
    # Constraints reach both samplers through Trial.set_constraint in the objective.
    # group=True: multivariate TPE over a conditional space (see ``suggest``) models each subspace on its own.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=recipe.seed, n_startup_trials=s.startup_trials, multivariate=True,
                                          group=True)


def _pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    p = recipe.search.pruner
    if p == "median":
        # Not before 3 curves of the same tier exist, and never on the first epoch (too noisy).
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if p == "hyperband":
        epochs = max(recipe.distill.train.epochs, recipe.prune.finetune.epochs)  # scratch or from-teacher schedule
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def _storage(url: str):
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    # Heartbeats let Optuna mark a trial whose process died as failed; the callback re-queues its
    # parameters, so the slot is re-run rather than lost.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=20, grace_period=60,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))


def open_study(recipe: Recipe) -> optuna.Study:
    """Create the study, or load it to resume; refuses a stored study made by a different recipe."""
    storage = _storage(storage_url(recipe))
    study = optuna.create_study(storage=storage, sampler=_sampler(recipe), study_name=recipe.name,
                                directions=["maximize", "minimize"], load_if_exists=True)
    fp = search_fingerprint(recipe)
    stored = study.user_attrs.get("recipe_fingerprint")
    if stored is None:
        study.set_user_attr("recipe_fingerprint", fp)
        study.set_user_attr("recipe", recipe.to_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_accuracy", "latency_p95_ms"])
    elif stored != fp:
        raise RecipeError(
            f"study {recipe.name!r} in {storage_url(recipe)} was made by a different recipe (fingerprint {stored} "
            f"vs {fp} now); resuming would mix trials of two searches. Rename the recipe (name:), pass another "
            "--storage, or delete the old study file to start again.")
    return study


def _requeue_interrupted(study: optuna.Study) -> int:
    """Trials cut off by Ctrl-C are marked failed by Optuna; queue their parameters again, once each."""
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    n = 0
    for t in study.trials:
        if (t.state == TrialState.FAIL and t.number not in retried and "retry_of" not in t.user_attrs and t.params
                and "failed" not in t.user_attrs):  # a parity failure would only fail again
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    return n


def covering_startup(recipe: Recipe) -> list[dict[str, Any]]:
    """Partial parameters for the first ``search.startup_trials`` trials so that every choice of every
    categorical parameter is tried: each choice appears about n/k times, in a seeded order per parameter
    (a Latin hypercube over the categories). Numeric parameters are left to the sampler. With a dozen
    trials, independent random draws can leave a whole choice (a student family, a format) untried.
    A branch's own categorical parameters are covered among the trials that take that branch."""
    n = recipe.search.startup_trials
    rng = random.Random(recipe.seed)
    rows: list[dict[str, Any]] = [{} for _ in range(n)]

    def cover(space: dict, idx: list[int], prefix: str) -> None:
        for key, raw in space.items():
            spec = space_spec(raw)
            choices = list(spec) if isinstance(spec, (Branches, list)) else []
            if len(choices) < 2:
                continue
            column = [choices[i % len(choices)] for i in range(len(idx))]
            rng.shuffle(column)
            for i, value in zip(idx, column):
                rows[i][prefix + key] = value
            if isinstance(spec, Branches):
                for choice, sub in spec.items():
                    cover(sub, [i for i, v in zip(idx, column) if v == choice], f"{choice}{BRANCH_SEP}")

    cover(recipe.search.space, list(range(n)), "")
    return rows if any(rows) else []


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


@dataclasses.dataclass
class Objective:
    recipe: Recipe
    data: Dataset  # full validation and test splits; training split possibly cut to search.train_fraction
    full: Dataset
    teacher: Any
    teacher_info: dict
    teacher_val_accuracy: float
    study: optuna.Study

    def _curves(self, tier: str) -> optuna.Study:
        # Same database, no heartbeat: curve trials are driven by ask/tell, not by Study.optimize.
        storage = optuna.storages.RDBStorage(storage_url(self.recipe))
        return optuna.create_study(storage=storage, study_name=f"{self.recipe.name}:curves:{tier}",
                                   direction="maximize", pruner=_pruner(self.recipe), load_if_exists=True)

    def __call__(self, trial: optuna.Trial):
        values = suggest(trial, self.recipe)
        r = with_values(self.recipe, values)
        work = self.recipe.out_path / "trials" / f"{trial.number:04d}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        macs, _ = model_size(build_student(r, self.teacher, self.data.spec), self.data.spec)
        curves = self._curves(f"{r.student.model}-{int(math.log2(max(macs or 1, 1)))}")
        curve = curves.ask()
        trial.set_user_attr("curve", f"{curves.study_name}#{curve.number}")
        # After the last epoch of a student's only training, measuring it costs less than pruning would save.
        only = from_teacher(r) or not r.prune.enabled
        last = (r.prune.finetune if from_teacher(r) else r.distill.train).epochs - 1

        def on_epoch(epoch: int, acc: float) -> None:
            curve.report(acc, epoch)
            if not (only and epoch >= last) and curve.should_prune():
                curves.tell(curve, state=TrialState.PRUNED)
                raise optuna.TrialPruned(f"val accuracy {acc:.4f} after epoch {epoch + 1} is below its tier's median")

        try:
            stages = compress_student(r, self.data, self.teacher, self.teacher_info, work, on_epoch)
        except optuna.TrialPruned:
            shutil.rmtree(work, ignore_errors=True)
            raise
        except BaseException as err:
            curves.tell(curve, state=TrialState.FAIL)
            if isinstance(err, Exception):
                trial.set_user_attr("failed", f"{type(err).__name__}: {str(err)[:500]}")
            raise
        final = stages[-1]
        model = work / "model.onnx"
        final.onnx.replace(model)
        for s in stages[:-1]:
            s.onnx.unlink(missing_ok=True)
        lat = measure(model, r.latency, r.target.batch_size, r.target.threads, r.target.device)
        metrics = {**model_metrics(dataclasses.replace(final, onnx=model), self.full, lat), "stage": final.name}
        val = metrics["val_accuracy"]
        curves.tell(curve, val)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("artifact_path", str(model.relative_to(self.recipe.out_path)))  # relocatable study
        for name, value in zip(CONSTRAINTS, constraint_values(val, lat.p95_ms, lat.throughput_sps, self.teacher_val_accuracy, r)):
            trial.set_constraint(name, value)
        return val, lat.p95_ms


class Progress:
    """One line per finished trial: n/N, its accuracy and p95, best feasible so far, elapsed, ETA."""

    def __init__(self, target: int, already: int, timeout_s: float | None = None):
        self.target, self.already, self.start, self.timeout_s = target, already, time.time(), timeout_s

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = [t for t in study.trials if t.state in DONE]
        n, ran = len(done), len(done) - self.already
        elapsed = time.time() - self.start
        per_trial = elapsed / max(ran, 1)
        eta = per_trial * max(self.target - n, 0)
        if self.timeout_s is not None:  # no trial starts after the timeout: the last one started ends ~1 trial later
            eta = min(eta, max(0.0, self.timeout_s - elapsed) + per_trial)
        if trial.state == TrialState.COMPLETE:
            m = trial.user_attrs["metrics"]
            what = f"val {100 * m['val_accuracy']:.2f}% p95 {m['latency_p95_ms']:.3f} ms" + (
                "" if max(constraints(trial)) <= 0 else " (infeasible)")
        else:
            what = trial.state.name.lower()
        feas = [t for t in done if t.state == TrialState.COMPLETE and max(constraints(t)) <= 0]
        best = max(feas, key=lambda t: t.values[0], default=None)
        best_s = (f"best feasible #{best.number} {100 * best.values[0]:.2f}% @ {best.values[1]:.3f} ms"
                  if best else "no feasible trial yet")
        tqdm.write(f"[trial {n}/{self.target}] #{trial.number} {what} | {best_s} | elapsed {elapsed / 60:.1f} min, "
                   f"ETA {eta / 60:.1f} min")


def optimize(recipe: Recipe, full: Dataset, teacher, teacher_info: dict, teacher_val_accuracy: float) -> optuna.Study:
    """Run (or resume) the study until ``search.n_trials`` trials are complete or pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(recipe)
    requeued = _requeue_interrupted(study)
    done = sum(t.state in DONE for t in study.trials)
    target = recipe.search.n_trials
    if done:
        tqdm.write(f"resuming study {recipe.name!r}: {done}/{target} trials done"
                   + (f", {requeued} interrupted trial(s) queued again" if requeued else ""))
    if done >= target:
        return study
    if not study.trials:  # a new study: its first trials cover the categorical choices
        for params in covering_startup(recipe):
            study.enqueue_trial(params, user_attrs={"startup": "covering"})
    n_train = max(1, int(len(full.train) * recipe.search.train_fraction))
    data = dataclasses.replace(full, train=full.train.head(n_train))
    objective = Objective(recipe, data, full, teacher, teacher_info, teacher_val_accuracy, study)
    from compress.export import ParityError

    study.optimize(
        objective, n_trials=2 * (target - done), timeout=recipe.search.timeout_s, catch=(ParityError,),
        callbacks=[optuna.study.MaxTrialsCallback(target, states=DONE), Progress(target, done, recipe.search.timeout_s)],
    )
    return study
