"""The main job (``make distill``): search, baselines, an exact final measurement, report and artifact.

1. ``search.optimize`` runs or resumes the Optuna study (trial-time latency: cheap, one model at a time).
2. The Pareto front is taken over complete trials; the chosen candidate is the most accurate feasible one.
3. The baselines and, where the search kept it short, the chosen candidate's full schedule are trained
   side by side (once per study, cached; ``search.finish_processes``).
4. Teacher, front and baselines are re-measured ("exact late") *interleaved in one process*, which every
   speed-up comes from, and then each alone, which the percentiles and the service-level verdict come from.
5. trials.csv, pareto.csv/json/html/png, summary.json and artifact/ are written; summary.json last.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress import baselines as bl
from compress import deadline
from compress.capacity import capacity_markdown, plan_for
from compress.errors import CompressError
from compress.export import export_onnx, onnx_accuracy, onnx_correct
from compress.io import sha256_file, write_json_atomic, write_text_atomic
from compress.latency import compare, measure
from compress.pipeline import (RESTART_STATE, Stage, build_student, evaluated, machine_info, model_metrics, prepare,
                               removes_channels, summarize, trains)
from compress.recipe import Recipe, RecipeError, public_dict, public_yaml, space_leaf, with_values
from compress.report import (pareto_indices, plot_pareto_html, plot_pareto_png, summary_table,
                             write_csv, write_csv_rows)
from compress.search import constraint_values, constraints, first_schedule, storage_url
from compress.storage import mask
from compress.workers import artifact_store, claim_finisher, open_study, optimize
from compress.teacher import model_size
from compress.train import threads_from
from compress.techniques.quantize import FORMAT_NAMES
from compress.verdicts import (accuracy_ci95, baseline_verdict, compare as paired_test, front_hypervolume,
                               test_accuracy_fields)


def _fetch_model(rec: dict, artifact: str | None, store) -> bool:
    """Make the trial's model file local, from the artifact store when this machine did not train it (or its
    copy differs from the one measured); False when it is nowhere."""
    path = Path(rec["artifact_path"]) if rec["artifact_path"] else None
    # model_sha256: recorded when the trial measured it
    return _fetch(path, rec.get("model_sha256"), artifact, store, f"trial {rec['trial']}: its model")


def _fetch(path: Path | None, want: str | None, artifact: str | None, store, what: str) -> bool:
    """``path`` as it was uploaded (sha256 ``want``), downloaded from the artifact store when this machine
    lacks it or holds another copy; False when it is nowhere (said when the download fails)."""
    if path is not None and path.is_file() and (want is None or sha256_file(path) == want):
        return True
    if path is None or artifact is None:
        return False
    from optuna.artifacts import download_artifact

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.download")
    try:
        download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact)
    except Exception as err:  # noqa: BLE001 - reported as missing, with the store named in the error
        tqdm.write(f"{what}: could not fetch {artifact} from the artifact store: {err}")
        return False
    tmp.replace(path)
    return True


def _trial_record(t: optuna.trial.FrozenTrial, out: Path) -> dict:
    m = t.user_attrs.get("metrics", {})
    constraint = constraints(t)
    return {"trial": t.number, "state": t.state.name, "params_": dict(t.params), **m, "constraint": constraint,
            "feasible": t.state == TrialState.COMPLETE and max(constraint) <= 0,
            "pareto": False,
            "artifact_path": str(out / t.user_attrs["artifact_path"]) if "artifact_path" in t.user_attrs else None,
            "latency_measured": "trial" if m else "untrained" if "untrained" in t.user_attrs else None,
            "untrained": t.user_attrs.get("untrained"),
            # search.halving: the short schedule's epochs (not promoted) or its restart (promoted); quantize.enabled
            # false where the int8 copy failed its parity gate (int8_rejected)
            "overrides": t.user_attrs.get("overrides", {}),
            "schedule": ("short" if t.user_attrs["halving"]["promoted"] is False else "full")
            if "halving" in t.user_attrs else None,
            "probe_latency_p95_ms": t.user_attrs.get("probe", {}).get("latency_p95_ms"),
            "int8_rejected": t.user_attrs.get("int8_rejected")}


def _trained(records: list[dict]) -> list[dict]:
    """The complete trials' records, less those left untrained as too slow (search.skip_slow)."""
    return [r for r in records if r["state"] == "COMPLETE" and not r["untrained"]]


def recipe_of(recipe: Recipe, rec: dict) -> Recipe:
    """The recipe that made a trial's model: the study's, its parameters, and (search.halving) the short
    schedule's epochs when it had only those, or the restart that the promoted one went on from."""
    return with_values(recipe, {**rec["params_"], **rec.get("overrides", {})})


def _judge(r: dict, teacher_val: float, recipe: Recipe) -> None:
    """The record's constraint values and feasibility, from its (re-)measured accuracy and latency."""
    r["constraint"] = constraint_values(r["val_accuracy"], r["latency_p95_ms"], r["throughput_sps"], teacher_val, recipe)
    r["feasible"] = max(r["constraint"]) <= 0


def _twin(recipe: Recipe, r: dict) -> tuple:
    """What a model's latency depends on: its architecture and int8 format, not its weights (dense kernels
    take as long whatever the weights are). Candidates that differ only in training are twins."""
    return r["params"], r["macs"], bool(r["int8"]), recipe_of(recipe, r).quantize.format if r["int8"] else None


def _still_pareto(front: list[dict], recipe: Recipe, chosen: dict | None = None) -> list[dict]:
    """The members not dominated after their numbers changed (and the chosen one, which stays); the others
    leave the reported front. Of twins (``_twin``) only the most accurate one (the first of equals) is judged
    and can stay: measured apart, four copies of the default study's 0.65-pruned teacher had p50
    within 2% but p95 0.161-0.220 ms, which put a short-schedule copy 1.4 pp less accurate on the front beside
    the artifact as "faster"; three equally accurate copies of fashion_folder's 0.7-pruned ResNet-18 stood on
    its front side by side."""
    lead: dict[tuple, dict] = {}
    for r in front:
        k = _twin(recipe, r)
        if k not in lead or r["val_accuracy"] > lead[k]["val_accuracy"]:
            lead[k] = r
    leads = list(lead.values())
    keep = {id(leads[i]) for i in pareto_indices([(r["val_accuracy"], r["latency_p95_ms"]) for r in leads])}
    for r in front:
        r["pareto"] = id(r) in keep or r is chosen
    return [r for r in front if r["pareto"]]


@dataclasses.dataclass
class FullPlan:
    """The chosen candidate's full schedule, to be built with the baselines (``bl.build_all``)."""

    build: bl.Build
    trial_schedule: dict  # the epochs the trial had, where halving kept it short
    restart: dict  # what the model is made with, as a promoted trial's recipe says it (when resumed)
    resumed: bool


def _needs_full(recipe: Recipe, rec: dict) -> bool:
    """Whether the trial's model had less than the recipe's schedule or training split (``_full_plan``)."""
    return rec.get("schedule") == "short" or recipe.search.train_fraction < 1


def _full_plan(recipe: Recipe, chosen: dict, saved_state: dict | None = None, store=None) -> FullPlan | None:
    """Cheap early, exact late: search.halving leaves most candidates on their short schedule, and a promoted
    one too when its full schedule would overrun search.timeout_s; search.train_fraction trains every candidate
    on part of the training split. The model handed over gets what the recipe asks for: its full schedule, on
    the whole split. None when the chosen trial had its full schedule on the whole split already.
    ``saved_state`` (the trial's ``restart_state`` attribute) and ``store`` fetch its restart state where
    another machine ran it."""
    if not _needs_full(recipe, chosen):
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
    resumed = short and fraction >= 1 and _fetch(state, saved_state.get("sha256"), saved_state.get("artifact"), store,
                                                 f"trial {chosen['trial']}: its restart state")
    restart = dict(fp32)
    if resumed:
        first = first_schedule(full)
        restart[f"{first}.restart_epochs"] = trial_schedule[f"{first}.epochs"]
        full = with_values(full, restart)
    tqdm.write(f"chosen trial #{chosen['trial']} was trained on {', '.join(cut)}: training it on its full schedule "
               "and the whole training split, the model handed over"
               + (f" (the rest of it, from the state its short schedule saved in {state})" if resumed else ""))
    return FullPlan(bl.full_schedule(full, f"trial_{chosen['trial']}_full", recipe.out_path / "full_schedule",
                                     state=state if resumed else None), trial_schedule, restart, bool(resumed))


def _full_result(recipe: Recipe, chosen: dict, plan: FullPlan, stage, data, teacher_val: float, target,
                 seconds: float) -> dict:
    """The fully trained model replaces the trial's when at least as accurate on the validation split and
    meeting what that one met; summary.json's ``full_schedule`` says what happened."""
    alone = measure(stage.onnx, recipe.latency, *target)
    rec = {**{k: v for k, v in chosen.items() if k != "model_sha256"},  # the trial's file's; this one is new
           **model_metrics(stage, data, alone, evaluated(stage.onnx, data, keep=True)),
           "artifact_path": str(stage.onnx), "latency_measured": "final"}
    _judge(rec, teacher_val, recipe)
    better = rec["val_accuracy"] >= chosen["val_accuracy"] and rec["feasible"] >= chosen["feasible"]
    result = {"trial": chosen["trial"], "trial_schedule": plan.trial_schedule,
              "trial_train_fraction": recipe.search.train_fraction, "trial_val_accuracy": chosen["val_accuracy"],
              "full_val_accuracy": rec["val_accuracy"], "full_latency_p95_ms": rec["latency_p95_ms"],
              "full_feasible": rec["feasible"], "handed_over": "full" if better else "trial",
              "resumed_from_short": plan.resumed, "seconds": round(seconds, 1)}
    tqdm.write(f"trial #{chosen['trial']} on its full schedule: val {100 * rec['val_accuracy']:.2f}% (the trial's "
               f"{100 * chosen['val_accuracy']:.2f}%), p95 {rec['latency_p95_ms']:.3f} ms: handing over "
               f"{'the fully trained model' if better else 'the trial model'}")
    if better:
        chosen.clear()
        chosen.update(rec, overrides=plan.restart, schedule="full (after the search)")
    chosen["full_schedule"] = result
    return result


def _baseline_rank(name: str) -> int:
    """Reports list the baselines as before: teacher int8, pruned teacher, student without KD."""
    return {"teacher_int8": 0, "student_no_kd": 2}.get(name, 1)


def finish_processes(recipe: Recipe, threads: int | None = None) -> int:
    """How many models train at once after the search (search.finish_processes); auto: 2 where training
    runs on a CPU with at least 2 threads (``threads``: this process's then, if not its own now), else 1 (one
    GPU trains one model at a time well)."""
    n = recipe.search.finish_processes
    if n is not None:
        return n
    import torch

    from compress.train import resolve_device

    on_cpu = all(resolve_device(c.device).type == "cpu" for c in (recipe.distill.train, recipe.prune.finetune))
    return 2 if on_cpu and (threads or torch.get_num_threads()) >= 2 else 1


# How much faster at trial time another, as accurate trial must have been for a trial to be left out of the final
# measurement: the same model's p95 moved 0.23 <-> 0.36 ms (1.57x) between minutes of one study on the reference
# machine, a small CNN's 0.040 <-> 0.058 ms.
NEAR_FRONT = 1.6


def _with_latency(rec: dict, alone, interleaved) -> dict:
    """Percentiles from the model measured alone (as a serving replica runs it); the interleaved statistics,
    which the speed-up ratios come from, under ``latency_interleaved``."""
    return {**rec, "latency_measured": "final", **alone.record_fields(), "latency_interleaved": interleaved.to_dict()}


class Phases:
    """Where this process's wall time went, phase by phase: summary.json's ``phases_s``."""

    def __init__(self):
        self.start = self._last = time.time()
        self.seconds: dict[str, float] = {}
        self.searched: float | None = None  # when this process's search ended
        self.predicted: dict | None = None  # then: the rest of the run's predicted seconds (compress.deadline)

    def lap(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 1)
        self._last = now


def run_study(recipe: Recipe, report_only: bool = False, report: bool = True, workers=None) -> dict | None:
    """One worker of the study: its share of the trials, then the report when this worker is the finisher
    (see compress.workers). Returns summary.json's content, or None when another process writes the report.
    ``report_only`` (``compress report``): no trials, the report (again). ``report`` False: trials only (a
    worker started by another one's ``search.workers``). ``workers``: the ``LocalWorkers`` this process
    started; when its own trials are done, it starts a baseline while they finish theirs (the no-KD student
    of the trial the search's numbers choose: ``_baselines_while_waiting``), then waits for them before it
    claims the report."""
    clock = Phases()
    study = open_study(recipe)  # first: a wrong storage or a changed recipe is named before minutes of loading
    if report_only or not report:
        return _run_study(recipe, study, clock, report_only, report, workers)
    # This run's search, then its report: its own time budget (compress.deadline), set first too, before any
    # worker's first claim, so that none reads one a run before left; cleared when the report is written (a
    # worker that joins the study later is not held to it) or the run fails, not when another process
    # writes the report (workers elsewhere still run under it).
    deadline.begin(study, recipe, clock.start)
    with deadline.cleared_on_error(study):
        summary = _run_study(recipe, study, clock, report_only, report, workers)
    if summary is not None:
        deadline.end(study)
    return summary


def _run_study(recipe: Recipe, study, clock: Phases, report_only: bool, report: bool, workers) -> dict | None:
    runs = report and not report_only  # this run's search, then its report: held to search.wall_time_s
    data, teacher, tinfo = prepare(recipe)
    out = recipe.out_path
    out.mkdir(parents=True, exist_ok=True)
    teacher_onnx = export_onnx(teacher, out / "teacher.onnx", recipe.export.opset, data.spec.shape)  # never stale
    macs, params = model_size(teacher, data.spec)
    teacher_rec = {"name": "teacher", "val_accuracy": onnx_accuracy(teacher_onnx, data.val), "params": params,
                   "macs": macs, "size_bytes": teacher_onnx.stat().st_size, "int8": False}
    if runs and recipe.search.wall_time_s is not None:
        _plan_after_search(recipe, study, data, teacher, tinfo, workers.cores if workers is not None else None)
    clock.lap("setup")  # data, teacher, its ONNX and validation accuracy (the accuracy bound)

    if not report_only:
        optimize(recipe, study, data, teacher, tinfo, teacher_rec["val_accuracy"])
        clock.lap("search")  # this worker's trials (the teacher's cached logits the first time)
        if runs:
            clock.searched, clock.predicted = time.time(), deadline.predict_tail(study, recipe)
    early = None  # the baseline(s) started while the other workers finish
    if workers is not None:
        if report and recipe.search.baselines and workers.running():
            early = _baselines_while_waiting(recipe, study, data, tinfo, workers.per_worker)
        workers.wait()
        clock.lap("waiting_for_workers")
    if not report:
        return None
    claim = claim_finisher(recipe, study, explicit=report_only)
    if claim is None:
        return None
    with claim:
        clock.lap("waiting_for_workers")  # for the other workers' trials, when this one finishes the study
        return _finish(recipe, study, data, teacher, tinfo, teacher_rec, teacher_onnx, clock, early)


def _plan_after_search(recipe: Recipe, study, data, teacher, tinfo, cores: int | None) -> None:
    """What the run's budget (search.wall_time_s) needs to know that the trials do not tell: the baselines the
    search does not decide that are not kept from before, with their epochs and MACs, how many models train at
    once after the search, and how many baselines the final measurement measures."""
    builds, _ = _search_independent(recipe, recipe.out_path / "baselines") if recipe.search.baselines else ([], {})
    todo = []
    for b in builds:
        if bl.kept(b, data, tinfo) is not None:
            continue
        macs, _ = model_size(build_student(b.recipe, teacher, data.spec), data.spec)
        todo.append({"name": b.name, "epochs": deadline.epochs_of(b.recipe) if trains(b.recipe) else 0, "macs": macs,
                     "family": b.recipe.student.model})
    deadline.plan(study, todo, finish_processes(recipe, cores), len(builds) + 1 if recipe.search.baselines else 0)


def _search_independent(recipe: Recipe, root: Path) -> tuple[list[bl.Build], dict[str, CompressError]]:
    """The baselines whatever the search finds: the pruned teacher (fine-tuned), the int8 teacher (none where
    the latency target cannot run int8 graphs: the error, by name)."""
    builds, unbuilt = [bl.teacher_pruned(recipe, root)], {}
    try:
        builds.append(bl.teacher_int8(recipe, root))
    except CompressError as err:
        unbuilt["teacher_int8"] = err
    return builds, unbuilt


def _adopted(builds: list[bl.Build], complete: list[dict], recipe: Recipe, frozen, store, data, tinfo
             ) -> dict[str, Stage]:
    """The baselines a trial made already, copied from it instead of made again: the int8 teacher (a trial of
    the teacher as it is, quantized with the same settings), and the student without KD of such a trial (KD
    changes nothing where nothing is trained)."""
    adopted = {}
    for b in builds:
        if bl.kept(b, data, tinfo) is not None:
            continue  # made, copied or adopted before (while waiting): build_all finds it
        for r in complete:
            if bl.same_untrained(b.recipe, recipe_of(recipe, r)) and _fetch_model(
                    r, frozen[r["trial"]].user_attrs.get("model_artifact"), store):
                adopted[b.name] = bl.adopt(b, Path(r["artifact_path"]), r, data, tinfo)
                tqdm.write(f"baseline {b.name}: the same model as trial {r['trial']} (nothing trained), copied from it")
                break
    return adopted


def _baselines_while_waiting(recipe: Recipe, study, data, tinfo, threads: int) -> bl.SideBySide | None:
    """A baseline started while the other workers of this machine finish their last trials, in a process of its
    own on this worker's share of the cores, which would otherwise wait: the no-KD student of the trial the
    search's numbers choose, else the baselines the search does not decide; the report trains the rest beside
    it and waits for it (``_finish``). Those a trial made already are copied from it; those kept from before
    are not made again. One that cannot be made is left for the report to try and name."""
    out = recipe.out_path
    frozen = study.get_trials(deepcopy=False)
    complete = _trained([_trial_record(t, out) for t in frozen])
    builds, _ = _search_independent(recipe, out / "baselines")
    # The longest baseline is the chosen candidate's student without KD, which waited for the final measurement
    # to decide which candidate that is: 3.0 of the default study's 15.0 minutes in the run of e209029. The trial
    # the search's own numbers choose is the one the final measurement chooses unless a p95 near the service
    # level moves across it: its no-KD student starts now (stopped if another trial is chosen, ``_finish``), and
    # the others after the final measurement, beside it.
    guess = _choose(complete) if complete else None
    no_kd = None
    if guess is not None and not _needs_full(recipe, guess):
        no_kd = bl.student_without_kd(recipe_of(recipe, guess), out / "baselines")
        builds.insert(0, no_kd)
    adopted = _adopted(builds, complete, recipe, frozen, artifact_store(recipe, study), data, tinfo)
    todo = [b for b in builds if b.name not in adopted and bl.kept(b, data, tinfo) is None]
    if todo and todo[0] is no_kd:
        todo = todo[:1]
        tqdm.write(f"{todo[0].name}: of trial #{guess['trial']}, the one the numbers measured in the search choose "
                   "(the final measurement decides)")
    if not todo:
        return None
    tqdm.write(f"while the other workers finish their last trials: {', '.join(b.name for b in todo)}, in a process "
               f"of its own with {threads} thread(s)")
    return bl.SideBySide(todo, data, tinfo, 1, threads)


def _finish(recipe, study, data, teacher, tinfo, teacher_rec, teacher_onnx, clock,
            early: bl.SideBySide | None = None) -> dict:
    out = recipe.out_path
    (out / "summary.json").unlink(missing_ok=True)  # present only once this report is complete
    write_text_atomic(out / "recipe.yaml", public_yaml(recipe))
    store = artifact_store(recipe, study)
    frozen = study.get_trials(deepcopy=False)
    trials = [_trial_record(t, out) for t in frozen]
    complete = _trained(trials)
    if not complete:
        slow = sum(bool(r["untrained"]) for r in trials)
        if slow:
            raise RecipeError(
                f"study {recipe.name!r}: all {slow} candidate(s) missed the service level's p95 ({recipe.slo.p95_ms} ms) "
                "before training, so none was trained. Widen search.space toward smaller models (more pruning, "
                "int8, narrower students), relax slo.p95_ms, or set search.skip_slow: false to train them anyway.")
        raise RuntimeError(f"study {recipe.name!r} has no complete trial; see the trial lines above for why")
    for r in complete:  # trials recorded before model_metrics carried it: from the accuracy (the front's are
        if "test_accuracy_ci95" not in r:  # recomputed per image below)
            r["test_accuracy_ci95"] = accuracy_ci95(round(r["test_accuracy"] * len(data.test)), len(data.test))
    # The front comes from the final measurement, so it measures every trial that could be on it: those no other
    # trial beats at trial time by being as accurate and NEAR_FRONT times as fast. (At trial time, a small CNN's
    # p95 read 0.040 ms, alone afterwards 0.058; it had kept a faster CNN off the front measured at the end.)
    for i in pareto_indices([(r["val_accuracy"], r["latency_p95_ms"]) for r in complete], margin=NEAR_FRONT):
        complete[i]["pareto"] = True
    front = [r for r in complete if r["pareto"]]
    missing = [r for r in front if not _fetch_model(r, frozen[r["trial"]].user_attrs.get("model_artifact"), store)]
    if missing:
        raise RecipeError(
            f"study {recipe.name!r}: the model files of Pareto trial(s) {[r['trial'] for r in missing]} are neither "
            f"here (e.g. {missing[0]['artifact_path']}) nor in the artifact store; the study cannot be finished from "
            f"its database alone. Restore them, point --artifacts at the store the workers used, or delete "
            f"{mask(storage_url(recipe))} (and {out / 'trials'}) to search again.")
    target = (recipe.target.batch_size, recipe.target.threads, recipe.target.device)
    # Interleaving makes ratios fair, but on a shared machine it also inflated the p95 of sub-millisecond
    # models by 30-85% against the same models alone (p50 unchanged). A replica serves one model, so the
    # percentiles that meet or miss the service level come from each model measured alone: first, since
    # they decide the front and the artifact, which the student-without-KD baseline is built for.
    tqdm.write(f"final measurement: the teacher and {len(front)} trial(s) on or near the front, each alone, for the "
               "percentiles a serving replica would see")
    models = {"teacher": teacher_onnx, **{f"trial_{r['trial']}": Path(r["artifact_path"]) for r in front}}
    alone = {k: measure(p, recipe.latency, *target) for k, p in models.items()}
    for r in front:
        r.update(alone[f"trial_{r['trial']}"].record_fields(), latency_measured="final")
        _judge(r, teacher_rec["val_accuracy"], recipe)
    measured = {r["trial"] for r in front}  # their files stay: a report run again measures these same trials
    front = _still_pareto(front, recipe)  # the exact numbers can reorder close neighbours
    chosen = _choose(front)
    chosen["chosen"] = True
    clock.lap("final_latency")
    # Everything trained after the search, side by side where there are cores for it (search.finish_processes):
    # the chosen candidate's full schedule and the baselines. Latency is measured only once they are all made.
    plan = _full_plan(recipe, chosen, frozen[chosen["trial"]].user_attrs.get("restart_state"), store)
    root = out / "baselines"
    # In the order they start, the longest first: the no-KD student (the chosen one's whole schedule), the rest of
    # the chosen one's full schedule, the pruned teacher (2 epochs), the int8 teacher (no training).
    builds = [plan.build] if plan else []
    no_kd_of = recipe_of(recipe, {**chosen, "overrides": plan.restart} if plan else chosen)  # as if handed over
    unbuilt: dict[str, CompressError] = {}
    adopted: dict[str, Stage] = {}
    if recipe.search.baselines:
        tqdm.write("baselines: teacher int8, pruned teacher, student without KD "
                   "(each kept per study and in .cache/baselines/)")
        no_kd = bl.student_without_kd(no_kd_of, root)
        if early and no_kd.name in early.futures and not early.makes(no_kd, data, tinfo):
            tqdm.write(f"{no_kd.name}: the final measurement chose trial #{chosen['trial']}, not the trial whose "
                       f"no-KD student started while waiting; that one is stopped, #{chosen['trial']}'s trained "
                       "instead")
            early.stop()  # what it finished is kept and found by build_all; the rest is made here
            early = None
        builds.insert(0, no_kd)
        independent, unbuilt = _search_independent(recipe, root)  # kept already when made while waiting
        builds = [b for b in builds + independent if not (early and b.name in early.futures)]  # not started then
        adopted = _adopted(builds, complete, recipe, frozen, store, data, tinfo)
        builds = [b for b in builds if b.name not in adopted]
    teacher_correct = None
    ready = [s for s in [*adopted.values(), *(bl.kept(b, data, tinfo) for b in builds)] if s is not None]

    def for_the_paired_tests() -> None:
        """What the paired tests need and no build's process computes (each evaluates its own model): the
        teacher's per-image correctness (13 s on one core for the default teacher; only the report needs it, so
        a worker that leaves the report to another skips it) and that of the models adopted or kept from before.
        On a core a finished build leaves while another trains on: the default study's no-KD student (4 epochs
        of the teacher pruned by 0.65) trains on after the pruned teacher beside it (2 epochs) is done."""
        nonlocal teacher_correct
        teacher_correct = onnx_correct(teacher_onnx, data.test)
        teacher_rec.update(test_accuracy_fields(teacher_correct))
        for s in ready:
            evaluated(s.onnx, data, keep=True)

    started = time.time()
    # Beside those started while waiting, on the cores their process leaves (each training step asks again).
    cores = torch.get_num_threads()
    with threads_from(lambda: max(1, cores - early.threads) if early and early.running() else cores):
        made = {**bl.build_all(builds, data, teacher, tinfo, finish_processes(recipe),
                               meanwhile=None if early else for_the_paired_tests), **adopted}
    trained_s = time.time() - started
    if early:
        for_the_paired_tests()  # while the one started before still trains
        made.update(early.results())
    full_schedule = None
    if plan:
        stage = made.pop(plan.build.name)
        if isinstance(stage, CompressError):
            raise stage
        full_schedule = _full_result(recipe, chosen, plan, stage, data, teacher_rec["val_accuracy"], target,
                                     trained_s)
        front = _still_pareto(front, recipe, chosen)  # the fully trained model may dominate a neighbour
        if recipe.search.baselines and full_schedule["handed_over"] == "trial":  # the no-KD baseline of that one
            made.update(bl.build_all([bl.student_without_kd(recipe_of(recipe, chosen), root)], data, teacher, tinfo))
    # e.g. int8 failing its parity gate or unmeasurable on the target, a teacher that cannot be pruned
    unbuilt.update({k: s for k, s in made.items() if isinstance(s, CompressError)})
    refs_failed = {name: f"{type(err).__name__}: {err}" for name, err in unbuilt.items()}
    for name, why in refs_failed.items():
        tqdm.write(f"baseline {name} could not be built, left out of the comparison: {why}")
    refs_stages = dict(sorted(((k, s) for k, s in made.items() if k not in refs_failed),
                              key=lambda kv: _baseline_rank(kv[0])))
    clock.lap("training_after_search")

    tqdm.write(f"final measurement: teacher, {len(front)} Pareto trial(s) and {len(refs_stages)} baseline(s), "
               "interleaved in one process (for the speed-ups), then each baseline alone")
    models = {"teacher": teacher_onnx, **{f"trial_{r['trial']}": Path(r["artifact_path"]) for r in front},
              **{k: s.onnx for k, s in refs_stages.items()}}
    lat = compare(models, recipe.latency, *target)
    alone.update({k: measure(s.onnx, recipe.latency, *target) for k, s in refs_stages.items()})
    teacher_rec = _with_latency(teacher_rec, alone["teacher"], lat["teacher"])
    for r in front:
        r["latency_interleaved"] = lat[f"trial_{r['trial']}"].to_dict()
    clock.lap("final_latency")
    # Accuracy verdicts come from paired tests on the same test images (compress.verdicts), so each model's
    # per-image correctness is computed once here; the recorded accuracies are the same numbers.
    tqdm.write(f"paired accuracy tests on {len(data.test):,} test samples: front, baselines, teacher")
    correct = {r["trial"]: evaluated(Path(r["artifact_path"]), data, keep=True)[1] for r in front}
    for r in front:
        r.update(test_accuracy_fields(correct[r["trial"]]))
    refs = {}
    for k, s in refs_stages.items():
        evaluation = evaluated(s.onnx, data, keep=True)
        base_correct = evaluation[1]
        r = {"name": k, "latency_measured": "final", **model_metrics(s, data, alone[k], evaluation),
             "latency_interleaved": lat[k].to_dict()}
        r["versus_front"] = baseline_verdict(r, base_correct, front, correct)
        r["dominated_by_front"] = r["versus_front"]["verdict"] == "dominated"
        r["dominated_by_trial"] = r["versus_front"]["trial"] if r["dominated_by_front"] else None
        refs[k] = r
    comparisons = _comparisons(chosen, front, correct, teacher_rec, teacher_correct)
    clock.lap("paired_tests")

    plans, sweep_rows = _capacity(recipe, out, teacher_rec, teacher_onnx, front) if recipe.capacity.enabled else ([], [])
    clock.lap("capacity")
    summary = _summary(recipe, study, teacher_rec, chosen, front, refs, tinfo, data, clock)
    summary.update(comparisons)
    summary["baselines_failed"] = refs_failed
    summary["full_schedule"] = full_schedule  # null: the chosen trial had its full schedule during the search
    summary["capacity"] = next((p for p in plans if p.get("chosen")), None)
    summary["capacity_teacher"] = next((p for p in plans if p["model"] == "teacher"), None)
    chosen_rows = [r for r in sweep_rows if r["model"] == f"trial_{chosen['trial']}"]
    _write_outputs(recipe, out, trials, front, teacher_rec, refs, chosen, summary, data, chosen_rows, measured)
    _attach(study, store, out)
    return summary


def _attach(study: optuna.Study, store, out: Path) -> None:
    """The report's files as study artifacts: optuna-dashboard shows (and serves) what the report shows."""
    from optuna.artifacts import upload_artifact

    ids = {}
    for name in ("pareto.png", "pareto.html", "pareto.csv", "summary.json", "artifact/MODEL_CARD.md",
                 "artifact/model.onnx"):
        if (out / name).is_file():
            ids[name] = upload_artifact(artifact_store=store, file_path=str(out / name), study_or_trial=study)
    study.set_user_attr("report_artifacts", ids)


def _comparisons(chosen: dict, front: list[dict], correct: dict, teacher_rec: dict, teacher_correct) -> dict:
    """The chosen artifact against the teacher and against the runner-up (the next most accurate front
    member it was chosen over: feasible ones first), by McNemar's test on the same test images."""
    def vs(other: dict, other_correct, name: str) -> dict:
        t = paired_test(correct[chosen["trial"]], other_correct)
        verdict = {"a more accurate": "artifact more accurate", "b more accurate": f"{name} more accurate"}.get(
            t["verdict"], t["verdict"])
        return {"test_accuracy": other["test_accuracy"], "latency_p95_ms": other["latency_p95_ms"],
                "verdict": verdict, "p_value": t["p_value"], "only_artifact_right": t["only_a_right"],
                "only_other_right": t["only_b_right"]}

    out = {"artifact_vs_teacher": vs(teacher_rec, teacher_correct, "teacher"), "artifact_vs_runner_up": None}
    others = [r for r in front if r is not chosen]
    if others:
        runner = max(others, key=lambda r: (r["feasible"] == chosen["feasible"], r["val_accuracy"], -r["latency_p95_ms"]))
        out["artifact_vs_runner_up"] = {"trial": runner["trial"], **vs(runner, correct[runner["trial"]], "runner-up")}
    return out


def _capacity(recipe: Recipe, out: Path, teacher_rec: dict, teacher_onnx: Path,
              front: list[dict]) -> tuple[list[dict], list[dict]]:
    tqdm.write(f"capacity sweep: teacher and {len(front)} Pareto model(s) over batch sizes "
               f"{recipe.capacity.batch_sizes} and threads {recipe.capacity.threads or 'all'}")
    plans, rows = [], []
    cores = os.cpu_count() or 1
    for name, onnx, rec in [("teacher", teacher_onnx, teacher_rec)] + [
            (f"trial_{r['trial']}", Path(r["artifact_path"]), r) for r in front]:
        plan, sweep_rows = plan_for(name, onnx, rec, recipe, cores)
        plan["chosen"] = bool(rec.get("chosen"))
        plans.append(plan)
        rows += sweep_rows
    write_csv_rows(out / "capacity.csv", rows)
    write_text_atomic(out / "capacity.md", capacity_markdown(plans, recipe))
    return plans, rows


def _choose(front: list[dict]) -> dict:
    """Most accurate feasible front member; when none is feasible, the fastest within the accuracy bound
    (or, when none is within it either, the most accurate)."""
    feasible = [r for r in front if r["feasible"]]
    if feasible:
        return max(feasible, key=lambda r: (r["val_accuracy"], -r["latency_p95_ms"]))
    accurate = [r for r in front if r["constraint"][1] <= 0]
    if accurate:
        return min(accurate, key=lambda r: r["latency_p95_ms"])
    return max(front, key=lambda r: r["val_accuracy"])


def _summary(recipe, study, teacher_rec, chosen, front, refs, tinfo, data, clock: Phases) -> dict:
    states = [t.state for t in study.trials]
    untrained = sum(t.state == TrialState.COMPLETE and "untrained" in t.user_attrs for t in study.trials)
    p50s = [r["latency_p50_ms"] for r in front]
    slo_met = bool(chosen["feasible"])
    summary = {
        "study": recipe.name,
        **summarize(teacher_rec, chosen),
        "slo_met": slo_met,
        "slo_p95_ms": recipe.slo.p95_ms,
        "slo_max_accuracy_drop_pp": recipe.slo.max_accuracy_drop_pp,
        "chosen_trial": chosen["trial"],
        "chosen_because": ("most accurate trial meeting the service level" if chosen["feasible"] else
                           "no trial meets the service level: fastest within the accuracy bound"
                           if chosen["constraint"][1] <= 0 else
                           "no trial meets the service level nor the accuracy bound: most accurate trial"),
        "chosen_params": chosen["params_"],
        "n_trials_complete": states.count(TrialState.COMPLETE) - untrained,
        "n_trials_untrained_too_slow": untrained,  # timed before training, missed the p95 bound, not trained
        "n_trials_pruned": states.count(TrialState.PRUNED),
        # search.halving: trials whose model had the short schedule only, and those promoted to the full one
        "n_trials_short_schedule": sum(t.user_attrs.get("halving", {}).get("promoted") is False for t in study.trials),
        "n_trials_promoted": sum(t.user_attrs.get("halving", {}).get("promoted") is True for t in study.trials),
        # ... of the short ones, those that won their rung but whose full schedule would have overrun search.timeout_s
        "n_trials_short_for_budget": sum(bool(t.user_attrs.get("halving", {}).get("late")) for t in study.trials),
        # ... and those that won their rung but could not reach the front (search.halving.front)
        "n_trials_short_behind_front": sum(bool(t.user_attrs.get("halving", {}).get("behind")) for t in study.trials),
        # int8 copies that failed their parity gate: those candidates were finished in fp32
        "n_trials_int8_rejected": sum("int8_rejected" in t.user_attrs for t in study.trials),
        "n_trials_failed": states.count(TrialState.FAIL),
        "pareto_size": len(front),
        "pareto_latency_span": max(p50s) / min(p50s),
        # How far the front reaches toward fast and accurate, in machine-independent units (compress.verdicts).
        "hypervolume": front_hypervolume(front, teacher_rec["latency_p95_ms"]),
        "baselines": {k: {"test_accuracy": r["test_accuracy"], "test_accuracy_ci95": r["test_accuracy_ci95"],
                          "val_accuracy": r["val_accuracy"],
                          "latency_p50_ms": r["latency_p50_ms"], "latency_p95_ms": r["latency_p95_ms"],
                          "params": r["params"], "macs": r["macs"], "size_bytes": r["size_bytes"],
                          "latency_p95_ci95_ms": r["latency"]["p95_ci95_ms"],
                          "dominated_by_front": r["dominated_by_front"], "dominated_by_trial": r["dominated_by_trial"],
                          "versus_front": r["versus_front"]}
                      for k, r in refs.items()},
        "target": recipe.target.model_dump(),
        "teacher_sha256": tinfo["sha256"],
        "data_fingerprint": data.fingerprint,
        "spec": data.spec.to_dict(),
        "storage": mask(storage_url(recipe)),
        "machine": machine_info(recipe.target.device),
        "wall_time_s": round(time.time() - clock.start, 1),
        "phases_s": dict(clock.seconds),  # this process's wall time by phase: where a time budget went
        # search.wall_time_s: the rest of the run as predicted when this process's search ended, and as it went
        "wall_time_budget": {"wall_time_s": recipe.search.wall_time_s,
                             "predicted_after_search_s": round(clock.predicted["seconds"], 1),
                             "predicted_parts_s": {k: round(v, 1) for k, v in clock.predicted["parts"].items()},
                             "after_search_s": round(time.time() - clock.searched, 1)}
        if clock.predicted and clock.searched else None,
    }
    return summary


def _write_outputs(recipe, out: Path, trials, front, teacher_rec, refs, chosen, summary, data, sweep_rows,
                   keep_files: set[int]) -> None:
    keys = list(dict.fromkeys(k for r in trials for k in r["params_"]))  # branch parameters included
    front_ids = {r["trial"] for r in front}
    for r in trials:
        r["pareto"] = r["trial"] in front_ids
    by_id = {r["trial"]: r for r in front}
    trials = [by_id.get(r["trial"], r) for r in trials]
    write_csv(out / "trials.csv", trials, keys)
    write_csv(out / "pareto.csv", front, keys)
    clean = [{k: v for k, v in r.items() if k != "params_"} | {"params": r["params_"]} for r in front]
    write_json_atomic(out / "pareto.json", {"objectives": ["max val_accuracy", "min latency_p95_ms"], "front": clean,
                                            "teacher": teacher_rec, "baselines": refs})
    complete = _trained(trials)  # untrained: no accuracy
    title = (f"{recipe.name}: {len(complete)} trials, front of {len(front)}; batch {recipe.target.batch_size}, "
             f"{recipe.target.threads} thread(s), {recipe.target.device}")
    all_refs = {"teacher": teacher_rec, **refs}
    plot_pareto_png(out / "pareto.png", complete, all_refs, recipe.slo.p95_ms, title)
    plot_pareto_html(out / "pareto.html", complete, all_refs, recipe.slo.p95_ms, title)
    _write_artifact(recipe, out, chosen, teacher_rec, summary, data, sweep_rows)
    if not recipe.search.keep_dominated_models:
        for r in trials:
            if r["trial"] not in keep_files and r.get("artifact_path"):
                shutil.rmtree(Path(r["artifact_path"]).parent, ignore_errors=True)
    write_json_atomic(out / "summary.json", summary)


def _write_artifact(recipe, out: Path, chosen, teacher_rec, summary, data, sweep_rows) -> None:
    from compress.handoff import spec_fields, write_bundle

    model = Path(chosen["artifact_path"])
    made = recipe_of(recipe, chosen)
    lat = chosen["latency"]
    parity = chosen.get("parity", {})
    manifest = {
        "name": recipe.name, **spec_fields(data.spec),
        "compression": ", ".join(k for k, on in [("knowledge distillation", made.distill.enabled and trains(made)),
                                                  ("structured pruning", removes_channels(made)),
                                                  ("int8 static quantization", chosen["int8"])] if on) or "architecture only",
        "format_note": (f"int8, {FORMAT_NAMES[made.quantize.format]} static quantization"
                        + (", per-channel weights" if made.quantize.per_channel else "")
                        + (", 7-bit weights (reduce_range: no saturation on CPUs without VNNI)"
                           if parity.get("reduce_range") else "")) if chosen["int8"] else "fp32",
        "metrics": {"val_accuracy": chosen["val_accuracy"], "test_accuracy": chosen["test_accuracy"],
                    "teacher_val_accuracy": teacher_rec["val_accuracy"],
                    "teacher_test_accuracy": teacher_rec["test_accuracy"], "test_size": len(data.test),
                    "test_accuracy_ci95": chosen.get("test_accuracy_ci95"),
                    "teacher_test_accuracy_ci95": teacher_rec.get("test_accuracy_ci95"),
                    "params": chosen["params"], "macs": chosen["macs"]},
        "paired_tests": {"vs_teacher": summary.get("artifact_vs_teacher"),
                         "vs_runner_up": summary.get("artifact_vs_runner_up")},
        "latency": lat, "teacher_latency": teacher_rec["latency"], "speedup_p50": summary["speedup_p50"],
        "machine": summary["machine"],
        "service_level": {"p95_ms": recipe.slo.p95_ms, "max_accuracy_drop_pp": recipe.slo.max_accuracy_drop_pp,
                          "batch": recipe.slo.batch.model_dump() if recipe.slo.batch else None, "met": summary["slo_met"]},
        "capacity": summary.get("capacity"), "currency": recipe.cost.currency,
        "trial": {"number": chosen["trial"], "params": chosen["params_"],
                  **({"int8_rejected": chosen["int8_rejected"]} if chosen.get("int8_rejected") else {})},
        "recipe": public_dict(made),
        "lineage": {"teacher_sha256": summary["teacher_sha256"], "dataset_fingerprint": summary["data_fingerprint"],
                    "calibration_fingerprint": parity.get("calibration_fingerprint"), "seed": recipe.seed,
                    "model_sha256_before_metadata": sha256_file(model)},
    }
    # The raw test split: the bundle's samples are its first rows, and it travels whole when small enough.
    write_bundle(out / "artifact", model, manifest, (data.test.raw, data.test.labels.numpy()), sweep_rows)


def verdict_text(v: dict | None, b: dict) -> str:
    """One baseline's verdict in words; older summaries carry only ``dominated_by_front``."""
    if v is None:
        return f"dominated by trial {b['dominated_by_trial']}" if b["dominated_by_front"] else "NOT dominated by the front"
    if v["verdict"] == "dominated":
        return f"dominated by trial {v['trial']}: {v.get('why') or 'more accurate'} (McNemar p = {v['p_value']:.3g})"
    if v["verdict"] == "not distinguishable":
        return f"not distinguishable from trial {v['trial']} in accuracy at equal latency (McNemar p = {v['p_value']:.3g})"
    if v["trial"] is not None:
        return f"NOT dominated: more accurate than trial {v['trial']}, the best as fast (McNemar p = {v['p_value']:.3g})"
    return "NOT dominated: faster than every front member"


def print_study_summary(summary: dict) -> None:
    print()
    print(summary_table(summary))
    slow = summary.get("n_trials_untrained_too_slow")
    short, late = summary.get("n_trials_short_schedule"), summary.get("n_trials_short_for_budget")
    behind, rejected = summary.get("n_trials_short_behind_front"), summary.get("n_trials_int8_rejected")
    why = [f"{late} for the time budget"] * bool(late) + [f"{behind} as they could not reach the front"] * bool(behind)
    print(f"trials: {summary['n_trials_complete']} complete, {summary['n_trials_pruned']} pruned"
          + (f", {slow} too slow to train (timed untrained)" if slow else "")
          + (f", {rejected} finished in fp32 (int8 failed its parity gate)" if rejected else "")
          + (f"; {short} kept their short schedule" + (f" (of them: {', '.join(why)})" if why else "")
             + f", {summary['n_trials_promoted']} promoted to the full one"
             if short or summary.get("n_trials_promoted") else "") + "; "
          f"Pareto front: {summary['pareto_size']} spanning {summary['pareto_latency_span']:.1f}x in p50")
    for k, b in summary["baselines"].items():
        print(f"baseline {k:<20} test {100 * b['test_accuracy']:.2f}%  p95 {b['latency_p95_ms']:.3f} ms  "
              f"{verdict_text(b.get('versus_front'), b)}")
    for k, why in summary.get("baselines_failed", {}).items():
        print(f"baseline {k:<20} NOT BUILT: {why.splitlines()[0][:160]}")
    for key, who in (("artifact_vs_runner_up", "runner-up"), ("artifact_vs_teacher", "teacher")):
        c = summary.get(key)
        if c:
            name = f"runner-up trial {c['trial']}" if "trial" in c else who
            print(f"artifact vs {name} (test {100 * c['test_accuracy']:.2f}%): {c['verdict']} "
                  f"(McNemar p = {c['p_value']:.3g})")
    if summary.get("phases_s"):
        phases = (f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in summary["phases_s"].items() if v >= 3)
        print(f"wall time {summary['wall_time_s'] / 60:.1f} min: {', '.join(phases)} (minutes)")
    budget = summary.get("wall_time_budget")
    if budget:
        print(f"run budget {budget['wall_time_s'] / 60:.1f} min (search.wall_time_s): after the search, "
              f"{budget['predicted_after_search_s'] / 60:.1f} min predicted, {budget['after_search_s'] / 60:.1f} taken")
    if "hypervolume" in summary:
        print(f"front hypervolume: {summary['hypervolume']['value']:.4f} "
              f"({summary['hypervolume']['x']} x {summary['hypervolume']['y']})")
    cap, tcap = summary.get("capacity"), summary.get("capacity_teacher")
    if cap and tcap and "batch" in cap:
        print(f"batch requirement: teacher needs {tcap['batch']['cores']} cores ({tcap['batch']['cost_per_run']:.2f} "
              f"per run), the artifact {cap['batch']['cores']} ({cap['batch']['cost_per_run']:.2f} per run); "
              "see capacity.md")
    if summary["slo_met"]:
        print(f"service level met: p95 {summary['artifact']['latency_p95_ms']:.3f} ms <= {summary['slo_p95_ms']} ms")
    else:
        print("!" * 78)
        print(f"!! NO TRIAL MEETS THE SERVICE LEVEL (p95 <= {summary['slo_p95_ms']} ms, accuracy drop <= "
              f"{summary['slo_max_accuracy_drop_pp']} pp).")
        print(f"!! The artifact is the {summary['chosen_because'].split(': ')[-1]}; slo_met is false.")
        print("!! Widen the search space, allow more trials, or relax the service level.")
        print("!" * 78)
