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
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress.data import Dataset
from compress.io import sha256_file
from compress.latency import measure
from compress.models import takes_argument
from compress.teacher import model_size
from compress.pipeline import (RESTART_STATE, build_student, compress_student, evaluated, from_teacher, model_metrics,
                               probe_latency, removes_channels, trains)
from compress.recipe import (BRANCH_SEP, Branches, HalvingConfig, Range, Recipe, as_before_bf16_auto,
                             fingerprint_of, range_is_int, space_leaf, space_spec, with_values)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_url(recipe: Recipe) -> str:
    if recipe.search.storage:
        return recipe.search.storage
    return f"sqlite:///{(recipe.out_path / 'study.db').as_posix()}"


def artifact_location(recipe: Recipe) -> str:
    """Where trial models are uploaded (Optuna's artifact store): a folder every worker can reach."""
    return recipe.search.artifacts or str((recipe.out_path / "artifacts").resolve())


def search_fingerprint(recipe: Recipe, before_bf16_auto: bool = False) -> str:
    """What makes two runs the same study: everything but how long to run and where it is kept.
    ``before_bf16_auto``: as the code before ``bf16: auto`` computed it, every auto read as true (what the
    shipped recipes and the defaults said then), so that studies made then still resume."""
    data = recipe.to_dict()
    for k in ("n_trials", "timeout_s", "storage", "artifacts"):
        data["search"].pop(k)
    data["output_dir"] = "."
    resolved = Recipe.model_validate(data).to_dict()  # every default filled in, as Recipe.fingerprint hashes it
    del resolved["search"]["finish_processes"]  # how the models after the search are trained, not which
    del resolved["search"]["wall_time_s"]  # how long to run
    del resolved["search"]["workers"]  # how many processes run the trials, not which
    if not resolved["search"]["enqueue"]:
        del resolved["search"]["enqueue"]  # none, as before it existed: studies made then still resume
    if resolved["search"]["halving"]["front"]:
        del resolved["search"]["halving"]["front"]  # on, its default: studies made before it existed still resume
    if not resolved["search"]["halving"]["bootstrap"]:
        del resolved["search"]["halving"]["bootstrap"]  # 0, its default: studies made before it existed still resume
    if resolved["search"]["halving"] == HalvingConfig().model_dump(mode="json", exclude={"front", "bootstrap"}):
        del resolved["search"]["halving"]  # off, as before it existed: studies made then still resume
    return fingerprint_of(as_before_bf16_auto(resolved) if before_bf16_auto else resolved)


CONSTRAINTS = ("p95_ms_over_slo", "accuracy_drop_pp_over_max", "batch_cores_over_max")


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The trial's constraint values in ``CONSTRAINTS`` order, <= 0 feasible; unmeasured trials are infeasible.
    Studies made before the list form stored them by name (``Trial.set_constraint``)."""
    c = trial.constraints
    for keys in ([str(i) for i in range(len(CONSTRAINTS))], list(CONSTRAINTS)):
        if all(k in c for k in keys):
            return [c[k] for k in keys]
    return [1.0] * len(CONSTRAINTS)


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


def sampler(recipe: Recipe, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The recipe's sampler, seeded with ``recipe.seed + offset``: workers seed it by the number of the trial
    they are about to create, so two workers never draw the same random sequence (identical trials) and one
    worker's study is the same as it always was."""
    s = recipe.search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=recipe.seed + offset,
                                                 population_size=max(4, min(50, s.n_trials // 2)))
        # Both samplers find the constraints on the trials (see Objective). group=True: multivariate TPE
        # over a conditional space (see ``suggest``) models each subspace on its own.
        # constant_liar: workers sharing the study see each other's running trials as bad, not as absent, so
        # two of them do not sample the same region at once.
        return optuna.samplers.TPESampler(seed=recipe.seed + offset, n_startup_trials=s.startup_trials,
                                          multivariate=True, group=True, constant_liar=True)


def _pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    p = recipe.search.pruner
    if p == "median":
        # Not before 3 curves of the same tier exist, and never on the first epoch (too noisy).
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if p == "hyperband":
        epochs = max(recipe.distill.train.epochs, recipe.prune.finetune.epochs)  # scratch or from-teacher schedule
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


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
    """The candidates search.halving compares (and the pruner's curves): one family, MACs within 2x and, when
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
    would not be told apart from that trial. In the fresh-clone runs of 2dd2bb6 and 46417ed, a teacher pruned by
    0.65 beat the enqueued one's short schedule by 0.20 and 0.28 pp, trained its 4 epochs (~3 min of a worker)
    and ended 0.04 pp below and 0.10 pp above it (validation; one standard error there is 0.33 pp); a CNN beat
    the enqueued 8-wide 2-deep one's by 0.30 pp and ended 0.10 pp below it. None as well before any such gain
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
    this, the last candidate of the default study ran 3.5 minutes past its 15 (AVX2 machine). Likewise when it
    would end after the time the run's budget leaves the search (search.wall_time_s, compress.deadline), which
    is predicted from the other trials with the study's recipe, ``study_recipe`` (``recipe`` is this trial's)."""
    from compress.deadline import search_left
    from compress.workers import busy_seconds

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


def covering_startup(recipe: Recipe) -> list[dict[str, Any]]:
    """Partial parameters for the first ``search.startup_trials`` trials so that every choice of every
    categorical parameter is tried: each choice appears about n/k times, in a seeded order per parameter
    (a Latin hypercube over the categories). Numeric parameters are left to the sampler. With a dozen
    trials, independent random draws can leave a whole choice (a student family, a format) untried.
    A branch's own categorical parameters are covered among the trials that take that branch. The
    candidates of ``search.enqueue`` come before them and count as covering their choices: the grid gives
    the choices they leave out first (the enqueued 8- and 4-wide CNNs leave the grid's CNN rows 12 and 16)."""
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


@dataclasses.dataclass
class Objective:
    recipe: Recipe
    data: Dataset  # full validation and test splits; training split possibly cut to search.train_fraction
    full: Dataset
    teacher: Any
    teacher_info: dict
    teacher_val_accuracy: float
    study: optuna.Study
    store: Any = None  # Optuna artifact store: every complete trial's model is uploaded there
    claimed: Any = None  # called once the trial exists in the storage: ends the claim (StudyLock.release)

    def _curves(self, tier: str) -> optuna.Study:
        # Same storage; curve trials are driven by ask/tell, not by Study.optimize.
        return optuna.create_study(storage=self.study._storage, study_name=f"{self.recipe.name}:curves:{tier}",
                                   direction="maximize", pruner=_pruner(self.recipe), load_if_exists=True)

    def __call__(self, trial: optuna.Trial):
        from compress import hostlock
        from compress.storage import me

        trial.set_user_attr("worker", me())  # a rerun on this host fails it at once if this process dies
        if self.claimed:
            self.claimed()
        values = suggest(trial, self.recipe)
        r = with_values(self.recipe, values)
        work = self.recipe.out_path / "trials" / f"{trial.number:04d}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        paused0 = hostlock.paused_s
        slo = r.slo.p95_ms
        probe = None
        # Latency first: is it worth training? A candidate that trains not at all (the teacher as it is, at most
        # quantized) is finished anyway: there is no training to spare (its int8 calibration, parity check and
        # accuracy took ~0.9 min on one core for the default teacher), and the front then shows the slow, accurate
        # end (the int8 teacher at 94.3% and p95 ~0.8 ms in the default study) rather than leaving it to a baseline.
        if r.search.skip_slow and slo is not None and trains(r):
            windows: list[float] = []  # a near miss is timed twice (pipeline.RECHECK_BELOW)
            probe = probe_latency(r, self.data, self.teacher, work, windows=windows)
            lo = probe.p95_ci95_ms[0]
            trial.set_user_attr("probe", {"latency_p50_ms": probe.p50_ms, "latency_p95_ms": probe.p95_ms,
                                          "p95_ci95_ms": list(probe.p95_ci95_ms), "windows_p95_ms": windows})
            if lo > slo:
                shutil.rmtree(work, ignore_errors=True)
                trial.set_user_attr("untrained", f"p95 {probe.p95_ms:.3f} ms untrained (95% CI from {lo:.3f}"
                                    + (f"; the lower of {len(windows)} windows" if len(windows) > 1 else "")
                                    + f") misses the service level's {slo} ms: not trained (search.skip_slow)")
                # Infeasible on latency by its measured margin; accuracy unknown, so infeasible on that too.
                _set_constraints(trial, [probe.p95_ms - slo, 1.0, -1.0])
                return 0.0, probe.p95_ms
        macs, _ = model_size(build_student(r, self.teacher, self.data.spec), self.data.spec)
        tier = tier_of(r.student.model, macs, probe.p50_ms if probe else None)
        short = short_schedule(r)
        at_restart = None
        if short:  # cheap early: the short schedule first; the rest of the full one only when promoted
            first = first_schedule(r)
            restart = {f"{first}.restart_epochs": short[f"{first}.epochs"]}
            r = with_values(r, restart)

            named = trial.user_attrs.get("covering_index", len(self.recipe.search.enqueue)) < len(
                self.recipe.search.enqueue)  # one of search.enqueue (the covering grid's first points)

            def at_restart(acc: float, seconds: float) -> bool:
                promoted, rung = promote(self.study, self.recipe, tier, acc, named)
                trial.set_user_attr("rung", rung)
                behind = promoted and r.search.halving.front and cannot_reach_front(
                    self.study, r.student.model, acc, probe.p95_ms if probe else None, len(self.data.val))
                late = promoted and not behind and rest_overruns(self.study, r, short, seconds, self.recipe)
                goes_on = promoted and not behind and not late
                halving = {"short_schedule": short, "short_val_accuracy": acc, "promoted": goes_on,
                           "family": r.student.model}
                for key, why in (("behind", behind), ("late", late)):
                    if why:
                        halving[key] = why
                trial.set_user_attr("halving", halving)
                # The epochs its model had, so that its recipe says how it was made.
                trial.set_user_attr("overrides", restart if goes_on else short)
                tqdm.write(f"trial {trial.number}: short schedule val_acc {acc:.4f} in tier {tier}: " + (
                    f"{behind}: not promoted, finished as the short schedule" if behind else
                    f"{late}: finished as the short schedule" if late else "promoted, training goes on"
                    if promoted else "not promoted, finished as the short schedule"))
                return goes_on
        curves = self._curves(tier)
        with warnings.catch_warnings():  # ask/tell on a storage with heartbeats: intended, the main study beats
            warnings.simplefilter("ignore", UserWarning)
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
            stages = self._compress(r, work, trial, on_epoch, at_restart, short)
        except optuna.TrialPruned:
            raise
        except BaseException as err:
            from compress.storage import is_connection_error

            if not is_connection_error(err):
                curves.tell(curve, state=TrialState.FAIL)
            raise
        val, p95 = self._measured(trial, r, stages, work, paused0)
        curves.tell(curve, val)
        return val, p95

    def _compress(self, r: Recipe, work, trial: optuna.Trial, on_epoch=None, at_restart=None, short=None) -> list:
        """compress_student, with a failure recorded on the trial (a pruned trial leaves no files). A candidate
        whose int8 copy fails its parity gate is finished in fp32, recorded as such (``int8_rejected``, and
        quantize.enabled false among its overrides, so its recipe makes its model): its training is not lost,
        and the sampler learns what int8 gave there (nothing) instead of proposing it again, as it does a
        failed trial's parameters."""

        def rejected(err: Exception) -> None:
            trial.set_user_attr("int8_rejected", str(err)[:500])
            trial.set_user_attr("overrides", {**trial.user_attrs.get("overrides", {}), "quantize.enabled": False})
            tqdm.write(f"trial {trial.number}: int8 failed its parity gate, finished in fp32: {str(err)[:300]}")

        try:
            return compress_student(r, self.data, self.teacher, self.teacher_info, work, on_epoch, at_restart, short,
                                    state=work / RESTART_STATE if short else None, int8_rejected=rejected)
        except optuna.TrialPruned:
            shutil.rmtree(work, ignore_errors=True)
            raise
        except Exception as err:
            from compress.storage import is_connection_error

            if not is_connection_error(err):  # the database, not the candidate: the trial is run again
                trial.set_user_attr("failed", f"{type(err).__name__}: {str(err)[:500]}")
            raise

    def _measured(self, trial: optuna.Trial, r: Recipe, stages: list, work, paused0: float) -> tuple[float, float]:
        """The trial's final model: measured, evaluated on the full splits, uploaded; its objective values."""
        from compress import hostlock

        final = stages[-1]
        model = work / "model.onnx"
        final.onnx.replace(model)
        for s in stages[:-1]:
            s.onnx.unlink(missing_ok=True)
        lat = measure(model, r.latency, r.target.batch_size, r.target.threads, r.target.device)
        metrics = {**model_metrics(dataclasses.replace(final, onnx=model), self.full, lat,
                                   evaluated(model, self.full, keep=True)),
                   "stage": final.name,
                   "paused_for_neighbours_s": round(hostlock.paused_s - paused0, 2),
                   "model_sha256": sha256_file(model)}
        val = metrics["val_accuracy"]
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("artifact_path", str(model.relative_to(self.recipe.out_path)))  # relocatable study
        if self.store is not None:  # where every worker (and the finisher) can fetch it, and the dashboard shows it
            from optuna.artifacts import upload_artifact

            trial.set_user_attr("model_artifact", upload_artifact(artifact_store=self.store, file_path=str(model),
                                                                  study_or_trial=trial))
            state = work / RESTART_STATE  # kept short: the finisher, on whichever machine, can go on from it
            if state.is_file():
                trial.set_user_attr("restart_state", {
                    "artifact": upload_artifact(artifact_store=self.store, file_path=str(state), study_or_trial=trial),
                    "sha256": sha256_file(state)})
        _set_constraints(trial, constraint_values(val, lat.p95_ms, lat.throughput_sps, self.teacher_val_accuracy, r))
        return val, lat.p95_ms


def _set_constraints(trial: optuna.Trial, values: list[float]) -> None:
    # The list form under "constraints" is what Optuna's samplers and optuna-dashboard both read (the
    # dashboard does not read Trial.set_constraint's named keys); the names are CONSTRAINTS, in order.
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints", values)
    trial.set_user_attr("constraint_names", list(CONSTRAINTS))
