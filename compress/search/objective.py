"""One trial of the Optuna study: a point of the recipe's space through the one-candidate pipeline.

Two objectives: maximise validation accuracy, minimise latency p95 on the target. The service level
(p95 bound, largest accuracy drop) enters as Optuna constraints, so infeasible trials are kept and shown
but never chosen. The study lives in an Optuna storage (SQLite by default), so it resumes, and
optuna-dashboard can watch it live. Early stopping is successive halving's (compress.search.halving).
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import optuna
from optuna.artifacts import upload_artifact
from tqdm.auto import tqdm

from compress.data import Dataset
from compress.io import sha256_file
from compress.measure import hostlock
from compress.measure.latency import measure
from compress.pipeline import (
    RESTART_STATE,
    build_student,
    compress_student,
    evaluated,
    model_metrics,
    probe_latency,
    trains,
)
from compress.recipe import Recipe, with_values
from compress.search.halving import (
    cannot_reach_front,
    first_schedule,
    promote,
    rest_overruns,
    short_schedule,
    tier_of,
)
from compress.search.records import CONSTRAINTS, constraint_values
from compress.search.space import suggest
from compress.storage import is_connection_error, me
from compress.teacher import model_size


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

    def __call__(self, trial: optuna.Trial):
        trial.set_user_attr("worker", me())  # a rerun on this host fails it at once if this process dies
        if self.claimed:
            self.claimed()
        r = with_values(self.recipe, suggest(trial, self.recipe))
        work = self.recipe.out_path / "trials" / f"{trial.number:04d}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        paused0 = hostlock.paused_s
        probe = self._probe(trial, r, work)
        if probe is not None and probe.p95_ci95_ms[0] > r.slo.p95_ms:
            return self._untrained(trial, r, work, probe)
        macs, _ = model_size(build_student(r, self.teacher, self.data.spec), self.data.spec)
        tier = tier_of(r.student.model, macs, probe.p50_ms if probe else None)
        short = short_schedule(r)
        at_restart = None
        if short:  # cheap early: the short schedule first; the rest of the full one only when promoted
            first = first_schedule(r)
            restart = {f"{first}.restart_epochs": short[f"{first}.epochs"]}
            r = with_values(r, restart)
            at_restart = self._promotion(trial, r, tier, short, restart, probe)
        trial.set_user_attr("tier", tier)  # set as training starts
        stages = self._compress(r, work, trial, at_restart, short)
        return self._measured(trial, r, stages, work, paused0)

    def _probe(self, trial: optuna.Trial, r: Recipe, work):
        """Latency first: the untrained architecture timed, when search.skip_slow may spare its training; None
        otherwise. A candidate that is not trained (the teacher as it is, at most quantized) is finished
        anyway: there is no training to spare, and the front shows its slow, accurate end."""
        if not (r.search.skip_slow and r.slo.p95_ms is not None and trains(r)):
            return None
        windows: list[float] = []  # a near miss is timed twice (pipeline.RECHECK_BELOW)
        probe = probe_latency(r, self.data, self.teacher, work, windows=windows)
        trial.set_user_attr("probe", {"latency_p50_ms": probe.p50_ms, "latency_p95_ms": probe.p95_ms,
                                      "p95_ci95_ms": list(probe.p95_ci95_ms), "windows_p95_ms": windows})
        return probe

    def _untrained(self, trial: optuna.Trial, r: Recipe, work, probe) -> tuple[float, float]:
        """A candidate whose untrained p95 misses the service level: recorded, not trained."""
        shutil.rmtree(work, ignore_errors=True)
        slo, lo, windows = r.slo.p95_ms, probe.p95_ci95_ms[0], trial.user_attrs["probe"]["windows_p95_ms"]
        trial.set_user_attr("untrained", f"p95 {probe.p95_ms:.3f} ms untrained (95% CI from {lo:.3f}"
                            + (f"; the lower of {len(windows)} windows" if len(windows) > 1 else "")
                            + f") misses the service level's {slo} ms: not trained (search.skip_slow)")
        # Infeasible on latency by its measured margin; accuracy unknown, so infeasible on that too.
        set_constraints(trial, [probe.p95_ms - slo, 1.0, -1.0])
        return 0.0, probe.p95_ms

    def _promotion(self, trial: optuna.Trial, r: Recipe, tier: str, short: dict, restart: dict, probe):
        """The callback that decides, when the short schedule ends, whether the trial goes on (search.halving)."""
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
            halving.update({k: why for k, why in (("behind", behind), ("late", late)) if why})
            trial.set_user_attr("halving", halving)
            # The epochs its model had, so that its recipe says how it was made.
            trial.set_user_attr("overrides", restart if goes_on else short)
            tqdm.write(f"trial {trial.number}: short schedule val {100 * acc:.2f}%: " + (
                "kept short (behind the front)" if behind else "kept short (run budget)" if late else
                "promoted" if promoted else "not promoted"))  # why: the trial's "halving" attribute
            return goes_on

        return at_restart

    def _compress(self, r: Recipe, work, trial: optuna.Trial, at_restart=None, short=None) -> list:
        """compress_student, with a failure recorded on the trial. A candidate whose int8 copy fails its parity
        gate is finished in fp32 (``int8_rejected``; quantize.enabled false among its overrides): its training
        is not lost, and the sampler learns that int8 gave nothing there."""

        def rejected(err: Exception) -> None:
            trial.set_user_attr("int8_rejected", str(err)[:500])
            trial.set_user_attr("overrides", {**trial.user_attrs.get("overrides", {}), "quantize.enabled": False})
            tqdm.write(f"trial {trial.number}: int8 failed its parity gate, finished in fp32: {str(err)[:300]}")

        try:
            return compress_student(r, self.data, self.teacher, self.teacher_info, work, None, at_restart, short,
                                    state=work / RESTART_STATE if short else None, int8_rejected=rejected)
        except Exception as err:

            if not is_connection_error(err):  # the database, not the candidate: the trial is run again
                trial.set_user_attr("failed", f"{type(err).__name__}: {str(err)[:500]}")
            raise

    def _measured(self, trial: optuna.Trial, r: Recipe, stages: list, work, paused0: float) -> tuple[float, float]:
        """The trial's final model: measured, evaluated on the full splits, uploaded; its objective values."""

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

            trial.set_user_attr("model_artifact", upload_artifact(artifact_store=self.store, file_path=str(model),
                                                                  study_or_trial=trial))
            state = work / RESTART_STATE  # kept short: the finisher, on whichever machine, can go on from it
            if state.is_file():
                trial.set_user_attr("restart_state", {
                    "artifact": upload_artifact(artifact_store=self.store, file_path=str(state), study_or_trial=trial),
                    "sha256": sha256_file(state)})
        set_constraints(trial, constraint_values(val, lat.p95_ms, lat.throughput_sps, self.teacher_val_accuracy, r))
        return val, lat.p95_ms


def set_constraints(trial: optuna.Trial, values: list[float]) -> None:
    # The list form under "constraints" is what Optuna's samplers and optuna-dashboard both read (the
    # dashboard does not read Trial.set_constraint's named keys); the names are CONSTRAINTS, in order.
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints", values)
    trial.set_user_attr("constraint_names", list(CONSTRAINTS))
