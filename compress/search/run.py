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

import time

from tqdm.auto import tqdm

from compress.export import export_onnx, onnx_accuracy
from compress.pipeline import prepare
from compress.recipe import Recipe
from compress.search import baselines as bl
from compress.search import budget
from compress.search.finish import (
    adopted_from_trials,
    finish,
    search_independent,
)
from compress.search.records import choose, needs_full, recipe_of, trained, trial_record
from compress.search.study import artifact_store, open_study
from compress.search.workers import claim_finisher, optimize
from compress.teacher import model_size, teacher_warnings


class Phases:
    """Where this process's wall time went, phase by phase: summary.json's ``phases_s``."""

    def __init__(self):
        self.start = self._last = time.time()
        self.seconds: dict[str, float] = {}
        self.searched: float | None = None  # when this process's search ended
        self.predicted: dict | None = None  # then: the rest of the run's predicted seconds (search.budget)

    def lap(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 1)
        self._last = now


def run_study(recipe: Recipe, report_only: bool = False, report: bool = True, workers=None) -> dict | None:
    """One worker of the study: its share of the trials, then the report when this worker is the finisher
    (``workers.claim_finisher``). Returns summary.json's content, or None when another process writes it.
    ``report_only`` (``compress report``): no trials, the report (again). ``report`` False: trials only (a
    worker started by another one's ``search.workers``). ``workers``: the ``LocalWorkers`` this process
    started; it starts a baseline while they finish their trials, then waits for them before the report."""
    clock = Phases()
    study = open_study(recipe)  # first: a wrong storage or a changed recipe is named before minutes of loading
    if report_only or not report:
        return _run_study(recipe, study, clock, report_only, report, workers)
    # This run's time budget, set before any worker's first claim so none reads one a run before left; cleared
    # when the report is written or the run fails, not when another process writes the report (workers
    # elsewhere still run under it).
    budget.begin(study, recipe, clock.start)
    with budget.cleared_on_error(study):
        summary = _run_study(recipe, study, clock, report_only, report, workers)
    if summary is not None:
        budget.end(study)
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
    for warning in teacher_warnings(teacher_rec["val_accuracy"], tinfo, data.spec, teacher, data.val):
        tqdm.write(warning)
    clock.lap("setup")  # data, teacher, its ONNX and validation accuracy (the accuracy bound)

    if not report_only:
        optimize(recipe, study, data, teacher, tinfo, teacher_rec["val_accuracy"])
        clock.lap("search")  # this worker's trials (the teacher's cached logits the first time)
        if runs and recipe.search.wall_time_s is not None:
            clock.searched, clock.predicted = time.time(), budget.tail(study.get_trials(deepcopy=False), recipe)
    early = None  # the baseline(s) started while the other workers finish
    try:
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
            return finish(recipe, study, data, teacher, tinfo, teacher_rec, teacher_onnx, clock, early)
    except KeyboardInterrupt:
        if early is not None:
            early.stop()  # its processes ignore Ctrl-C
        raise


def _baselines_while_waiting(recipe: Recipe, study, data, tinfo, threads: int) -> bl.SideBySide | None:
    """A baseline trained on this worker's idle share of the cores while the other workers finish: the no-KD
    student of the trial the search's numbers choose, else the baselines the search does not decide. The
    report trains the rest beside it; ones a trial made or kept from before are not made again."""
    out = recipe.out_path
    frozen = study.get_trials(deepcopy=False)
    complete = trained([trial_record(t, out) for t in frozen])
    builds, _ = search_independent(recipe, out / "baselines")
    # The no-KD student is the longest baseline. The search's own choice is usually the final one, so its no-KD
    # student starts now (``finish`` stops it if another trial is chosen) and the others after the final
    # measurement, beside it.
    guess = choose(complete) if complete else None
    no_kd = None
    if guess is not None and not needs_full(recipe, guess):
        no_kd = bl.student_without_kd(recipe_of(recipe, guess), out / "baselines")
        builds.insert(0, no_kd)
    adopted = adopted_from_trials(builds, complete, recipe, frozen, artifact_store(recipe, study), data, tinfo)
    todo = [b for b in builds if b.name not in adopted and bl.kept(b, data, tinfo) is None]
    if todo and todo[0] is no_kd:
        todo = todo[:1]  # of the trial the search's numbers choose; the final measurement decides
    if not todo:
        return None
    tqdm.write(f"while the other workers finish: {', '.join(b.name for b in todo)} ({threads} thread(s))")
    return bl.SideBySide(todo, data, tinfo, 1, threads)
