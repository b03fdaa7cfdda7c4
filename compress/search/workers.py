"""Many workers, one study: the trial budget, the covering grid, retries and the finisher are the study's.

Each ``compress search`` process is a worker. Under the study lock (``compress.storage.StudyLock``) a
worker fails the trials of dead workers (its own host: the recorded process is gone; any host: Optuna's
heartbeat is stale), queues each failed trial's parameters again once, counts the study's complete,
pruned and running trials against ``search.n_trials`` (and the study's busy time against
``search.timeout_s``), queues the next covering-grid point when one is left, and creates its trial. The
lock is released as soon as the trial exists, so training runs in parallel.

The report is written once per set of trials: by the worker that finds the budget spent and no trial
running, or by ``compress report``. Its claim is a study attribute holding the finisher's identity and a
beat refreshed every few seconds; another process takes over only a claim whose process is gone (same
host) or whose beat is stale (any host).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
import warnings

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress.errors import ParityError
from compress.recipe import Recipe
from compress.search.budget import busy_seconds, deadline_near, search_left
from compress.search.objective import Objective
from compress.search.records import DONE, constraints
from compress.search.study import artifact_store, sampler, storage_url
from compress.storage import (
    GRACE_S,
    HOST,
    StudyLock,
    alive,
    is_connection_error,
    mask,
    me,
    retrying,
)

MAX_RETRIES = 2  # a trial whose worker died is run again at most this often (one that kills its worker would loop)


FINISHER_BEAT_S = 10.0


# Optuna's heartbeat fails another host's dead worker's trial after its grace period; on this host the
# process table says at once (tests/test_workers.py: kill -9 mid-training).
def fail_dead(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker is dead: on this host at once (its process is gone), on others when
    Optuna's heartbeat is stale. Returns their numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op on storages without heartbeats (journal)
    failed = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        # This process runs no trial while it claims one: a RUNNING trial of its own lost its database
        # connection on the way (a server restart) and could not be told.
        mine = worker is not None and worker.get("host") == HOST and worker.get("pid") == os.getpid()
        if mine or alive(worker) is False:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # a finished trial is read-only
                storage.set_trial_user_attr(t._trial_id, "died", (
                    "its database connection was lost" if mine else
                    f"worker {worker['pid']} on {HOST} was gone when another worker looked"))
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    failed.append(t.number)
    return failed


# Not RetryHeartbeatStaleTrialCallback: it retries only trials failed by a stale heartbeat, not those of a
# worker killed on this host or interrupted (tests/test_search.py: test_interrupted_trial_is_failed_...).
def requeue_failed(study: optuna.Study) -> list[int]:
    """Queue the parameters of each trial that failed without an error of its own (its worker died, or was
    interrupted) once more; a trial that raised (e.g. int8 parity) would only fail again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for t in trials:
        depth = t.user_attrs.get("retry_depth", 0)
        if (t.state == TrialState.FAIL and t.number not in retried and t.params and "failed" not in t.user_attrs
                and depth < MAX_RETRIES):
            keep = {k: t.user_attrs[k] for k in ("covering_index", "startup") if k in t.user_attrs}
            study.enqueue_trial(t.params, user_attrs={**keep, "retry_of": t.number, "retry_depth": depth + 1})
            queued.append(t.number)
    return queued


def queue_covering(study: optuna.Study) -> None:
    """The next unused covering-grid point, unless a trial is already waiting (a retry goes first)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    grid = study.user_attrs.get("covering", [])
    used = {t.user_attrs.get("covering_index") for t in trials}
    for i, params in enumerate(grid):
        if i not in used and params:
            study.enqueue_trial(params, user_attrs={"startup": "covering", "covering_index": i})
            return


# Not MaxTrialsCallback: it stops a worker after its trial ends, not before one starts, so each other worker's
# running trial would overshoot search.n_trials (tests/test_workers.py: two workers, exactly n_trials trials).
def budget_left(study: optuna.Study, recipe: Recipe) -> str | None:
    """None while this worker may start a trial; otherwise why not."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in DONE for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if done + running >= recipe.search.n_trials:
        return (f"{done}/{recipe.search.n_trials} trials done" + (f", {running} running on other workers"
                                                                    if running else ""))
    if recipe.search.timeout_s is not None and busy_seconds(trials) >= recipe.search.timeout_s:
        return f"the study's time budget ({recipe.search.timeout_s:.0f} s of trials) is spent"
    return deadline_near(study, recipe, trials)


class Progress:
    """One line per finished trial with the study-wide count (every worker's trials), its accuracy and p95,
    the best feasible trial so far, the workers running, and an ETA from the study's rate."""

    def __init__(self, target: int, timeout_s: float | None = None, recipe: Recipe | None = None):
        self.target, self.timeout_s, self.recipe = target, timeout_s, recipe

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in DONE]
        running = sum(t.state == TrialState.RUNNING for t in trials)
        busy = busy_seconds(trials)
        per_trial = busy / max(len(done), 1)  # the study's rate: all workers together
        eta = per_trial * max(self.target - len(done), 0)
        if self.timeout_s is not None:  # no new trial after the time budget: the search ends by then
            eta = min(eta, max(self.timeout_s - busy, 0.0))

        left = search_left(study, self.recipe, trials) if self.recipe is not None else None
        if left is not None:  # nor after the run's (search.wall_time_s)
            eta = min(eta, max(left[0], 0.0))
        if trial.state == TrialState.COMPLETE and "untrained" in trial.user_attrs:
            what = f"p95 {trial.values[1]:.3f} ms untrained: too slow, not trained"
        elif trial.state == TrialState.COMPLETE:
            m = trial.user_attrs["metrics"]
            h = trial.user_attrs.get("halving")
            notes = [n for n, on in (("infeasible", max(constraints(trial)) > 0),
                                     ("fp32: int8 failed its gate", "int8_rejected" in trial.user_attrs),
                                     ("full schedule" if h and h["promoted"] else "short schedule", h)) if on]
            what = f"val {100 * m['val_accuracy']:.2f}% p95 {m['latency_p95_ms']:.3f} ms" + (
                f" ({', '.join(notes)})" if notes else "")
        else:
            what = trial.state.name.lower()
        feas = [t for t in done if t.state == TrialState.COMPLETE and max(constraints(t)) <= 0]
        best = max(feas, key=lambda t: t.values[0], default=None)
        best_s = f"best #{best.number} {100 * best.values[0]:.2f}% @ {best.values[1]:.3f} ms" if best else "none feasible"
        others = f", {running} running" if running else ""
        tqdm.write(f"[study {len(done)}/{self.target}{others}] #{trial.number} {what} | {best_s} | "
                   f"study ETA {eta / 60:.1f} min")  # why a trial stopped short: its "halving" attribute


class QuietInterrupt(logging.Filter):
    """Ctrl-C mid-trial: Optuna fails the trial (the next claim queues its parameters again) and logs the
    interrupt with a traceback; the command says it in one line instead, so Optuna's lines from then on go."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.interrupted |= bool(record.exc_info and record.exc_info[0] is KeyboardInterrupt)
        return not self.interrupted


@contextlib.contextmanager
def quiet_interrupt():
    handlers, quiet = logging.getLogger("optuna").handlers, QuietInterrupt()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


def optimize(recipe: Recipe, study: optuna.Study, full, teacher, teacher_info: dict,
             teacher_val_accuracy: float) -> optuna.Study:
    """Run trials of the study (shared with any other worker) until its budget is spent."""
    with quiet_interrupt():
        return _optimize(recipe, study, full, teacher, teacher_info, teacher_val_accuracy)


def _optimize(recipe: Recipe, study: optuna.Study, full, teacher, teacher_info: dict,
              teacher_val_accuracy: float) -> optuna.Study:

    url = storage_url(recipe)
    lock = StudyLock(url, recipe.name)
    n_train = max(1, int(len(full.train) * recipe.search.train_fraction))
    data = dataclasses.replace(full, train=full.train.head(n_train))
    objective = Objective(recipe, data, full, teacher, teacher_info, teacher_val_accuracy, study,
                          store=artifact_store(recipe, study), claimed=lock.release)
    progress = Progress(recipe.search.n_trials, recipe.search.timeout_s, recipe)
    attempts, first = 0, True
    while attempts < 2 * recipe.search.n_trials:  # trials that fail with an error do not count toward the budget
        with lock:
            died = retrying(fail_dead, study)
            queued = retrying(requeue_failed, study)
            if died or queued:
                tqdm.write(f"trial(s) {died or queued} of a worker that died or was interrupted: failed, and "
                           "their parameters queued again")
            spent = retrying(budget_left, study, recipe)
            if first:
                done = sum(t.state in DONE for t in study.get_trials(deepcopy=False))
                if done:
                    tqdm.write(f"study {recipe.name!r} in {mask(url)}: {done}/{recipe.search.n_trials} trials done")
                first = False
            if spent:
                tqdm.write(f"no new trial from this worker: {spent}")
                break
            retrying(queue_covering, study)
            study.sampler = sampler(recipe, offset=len(study.get_trials(deepcopy=False)))  # see study.sampler
            try:
                study.optimize(objective, n_trials=1, catch=(ParityError,), callbacks=[progress])
            except Exception as err:
                if not is_connection_error(err):
                    raise
                # The database went away mid-trial (a server restart): wait for it, then the next claim fails
                # this trial and queues its parameters again.
                tqdm.write(f"lost the study's database during a trial ({str(err).strip().splitlines()[0][:120]})")
                retrying(study.get_trials, deepcopy=False)
        attempts += 1
    return study


class FinisherClaim:
    """This process holds the right to write the study's report; a thread keeps the claim's beat fresh."""

    def __init__(self, study: optuna.Study):
        self.study, self._stop = study, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(FINISHER_BEAT_S):
            try:
                self.study.set_user_attr("finisher", {**me(), "beat": time.time()})
            except Exception:  # a database restart: the next beat tries again
                pass

    def __enter__(self) -> "FinisherClaim":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            done = sum(t.state in DONE for t in self.study.get_trials(deepcopy=False))
            retrying(self.study.set_user_attr, "report", {"trials_done": done, "at": time.time(), "by": me()})
        retrying(self.study.set_user_attr, "finisher", None)


def _claim_live(claim: dict | None) -> bool:
    if not claim:
        return False
    here = alive(claim)
    if here is not None:
        return here
    return time.time() - claim.get("beat", 0) < max(GRACE_S, 6 * FINISHER_BEAT_S)


def claim_finisher(recipe: Recipe, study: optuna.Study, explicit: bool) -> FinisherClaim | None:
    """The claim to write the report, or None (with the reason printed) when another process has it, when
    trials still run elsewhere (the last worker to finish writes it), or when it is already written for
    exactly these trials. ``explicit`` (``compress report``) writes it again in the last two cases."""
    url = storage_url(recipe)
    with StudyLock(url, recipe.name):
        retrying(fail_dead, study)
        trials = study.get_trials(deepcopy=False)
        claim = study.user_attrs.get("finisher")
        if _claim_live(claim) and claim.get("pid") != me()["pid"]:
            tqdm.write(f"the report is being written by process {claim['pid']} on {claim['host']}; nothing to do here")
            return None
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        done = sum(t.state in DONE for t in trials)
        if not explicit:
            if running:
                tqdm.write(f"trial(s) {running} still run on other workers: the last worker to finish writes the "
                           f"report (or run `compress report` with the same recipe and --storage)")
                return None
            report = study.user_attrs.get("report")
            if report and report.get("trials_done") == done:
                where = "" if (recipe.out_path / "summary.json").is_file() else " (not on this machine)"
                tqdm.write(f"the report for these {done} trials was written by process {report['by']['pid']} on "
                           f"{report['by']['host']}{where}; `compress report` writes it (again) here")
                return None
        elif running:
            tqdm.write(f"warning: trial(s) {running} are still running; the report covers the {done} done")
        study.set_user_attr("finisher", {**me(), "beat": time.time()})
    return FinisherClaim(study)


class LocalWorkers:
    """``search.workers`` > 1: this command starts the study's other workers on this machine, each a plain
    ``compress search`` of the same recipe, study and overrides that leaves the report to this process
    (``--no-report``), and shares the cores out: every worker, this one included, trains with cores /
    workers threads until the search ends, as 1-thread trainings side by side make more steps than one
    2-thread training (measured: results/README.md, train_threads_vnni.json). Their lines are shown here,
    prefixed ``[worker k]``. ``wait()`` waits for their last trials and takes the threads back; an error or
    Ctrl-C stops them (their running trials are failed and queued again by the next claim). ``env``: what they
    get through the environment, not argv (a storage URL that holds a password: any user can read argv)."""

    def __init__(self, argv: list[str], n: int, env: dict[str, str] | None = None):
        self.n, self.argv, self.env, self.procs, self.threads = n, argv, env or {}, [], []
        self.cores = torch.get_num_threads()
        self.per_worker = max(1, self.cores // n)

    def __enter__(self) -> "LocalWorkers":
        if self.n <= 1:
            return self
        tqdm.write(f"search.workers = {self.n}: {self.n} worker processes on this study, {self.per_worker} training "
                   f"thread(s) each; the others' lines are prefixed [worker k]")
        torch.set_num_threads(self.per_worker)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for k in range(2, self.n + 1):
            cmd = [sys.executable, "-m", "compress", *self.argv, "--set", "search.workers=1",
                   "--train-threads", str(self.per_worker), "--no-report"]
            # A session of its own: Ctrl-C at the terminal reaches this process only, which stops the others.
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 start_new_session=True)
            t = threading.Thread(target=self._relay, args=(p, k), daemon=True)
            t.start()
            self.procs.append(p)
            self.threads.append(t)
        return self

    @staticmethod
    def _relay(p, k: int) -> None:
        for line in p.stdout:
            tqdm.write(f"[worker {k}] {line.rstrip()}")

    def running(self) -> bool:
        """Whether another worker is still on its last trial."""
        return any(p.poll() is None for p in self.procs)

    def wait(self) -> None:
        """Wait for the other workers to end (each finishes its running trial), then take the cores back."""

        for k, (p, t) in enumerate(zip(self.procs, self.threads), start=2):
            rc = p.wait()
            t.join()
            if rc != 0:
                tqdm.write(f"warning: worker {k} exited with status {rc} (its lines above say why); the report "
                           "covers the trials the study has")
        self.procs, self.threads = [], []
        torch.set_num_threads(self.cores)

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.wait()
            return
        # An error or Ctrl-C here ends the others, quietly: this process says what happened, and the next
        # claim fails their running trials and queues them again.
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs, self.threads = [], []
        torch.set_num_threads(self.cores)
