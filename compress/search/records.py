"""Trial records: a finished trial as the report reads it, and the rules that pick from them.

Shared by the run budget (which predicts the rest of the run from them) and the report (which
chooses the artifact from them), so both apply the same policy."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import download_artifact
from optuna.trial import TrialState
from tqdm.auto import tqdm

from compress.io import sha256_file
from compress.measure.verdicts import ALPHA, mcnemar, pareto_indices
from compress.recipe import Recipe, with_values

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


CONSTRAINTS = ("p95_ms_over_slo", "accuracy_drop_pp_over_max", "batch_cores_over_max")


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The trial's constraint values in ``CONSTRAINTS`` order, <= 0 feasible; unmeasured trials are infeasible."""
    c = trial.system_attrs.get("constraints")  # the list form objective.set_constraints writes
    return list(c) if c is not None and len(c) == len(CONSTRAINTS) else [1.0] * len(CONSTRAINTS)


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


def fetch_model(rec: dict, artifact: str | None, store) -> bool:
    """Make the trial's model file local, from the artifact store when this machine did not train it (or its
    copy differs from the one measured); False when it is nowhere."""
    path = Path(rec["artifact_path"]) if rec["artifact_path"] else None
    # model_sha256: recorded when the trial measured it
    return fetch(path, rec.get("model_sha256"), artifact, store, f"trial {rec['trial']}: its model")


def fetch(path: Path | None, want: str | None, artifact: str | None, store, what: str) -> bool:
    """``path`` as it was uploaded (sha256 ``want``), downloaded from the artifact store when this machine
    lacks it or holds another copy; False when it is nowhere (said when the download fails)."""
    if path is not None and path.is_file() and (want is None or sha256_file(path) == want):
        return True
    if path is None or artifact is None:
        return False

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.download")
    try:
        download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact)
    except Exception as err:  # noqa: BLE001 - reported as missing, with the store named in the error
        tqdm.write(f"{what}: could not fetch {artifact} from the artifact store: {err}")
        return False
    tmp.replace(path)
    return True


def trial_record(t: optuna.trial.FrozenTrial, out: Path) -> dict:
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


def trained(records: list[dict]) -> list[dict]:
    """The complete trials' records, less those left untrained as too slow (search.skip_slow)."""
    return [r for r in records if r["state"] == "COMPLETE" and not r["untrained"]]


def recipe_of(recipe: Recipe, rec: dict) -> Recipe:
    """The recipe that made a trial's model: the study's, its parameters, and (search.halving) the short
    schedule's epochs when it had only those, or the restart that the promoted one went on from."""
    return with_values(recipe, {**rec["params_"], **rec.get("overrides", {})})


def judged(r: dict, teacher_val: float, recipe: Recipe) -> dict:
    """The record with its constraint values and feasibility from its (re-)measured accuracy and latency."""
    c = constraint_values(r["val_accuracy"], r["latency_p95_ms"], r["throughput_sps"], teacher_val, recipe)
    return {**r, "constraint": c, "feasible": max(c) <= 0}


def _twin(recipe: Recipe, r: dict) -> tuple:
    """What a model's latency depends on: its architecture and int8 format, not its weights (dense kernels
    take as long whatever the weights are). Candidates that differ only in training are twins."""
    return r["params"], r["macs"], bool(r["int8"]), recipe_of(recipe, r).quantize.format if r["int8"] else None


def still_pareto(front: list[dict], recipe: Recipe, chosen: int | None = None) -> list[dict]:
    """The members not dominated after their numbers changed (and the chosen one, which stays); the others
    leave the reported front. Of twins (``_twin``) only the most accurate one (the first of equals) is judged
    and can stay: copies of one architecture measured apart differ in p95 by noise alone, which would put a
    less accurate copy on the front as "faster". Returns new records; its arguments are not changed."""
    lead: dict[tuple, dict] = {}
    for r in front:
        k = _twin(recipe, r)
        if k not in lead or r["val_accuracy"] > lead[k]["val_accuracy"]:
            lead[k] = r
    leads = list(lead.values())
    keep = {leads[i]["trial"] for i in pareto_indices([(r["val_accuracy"], r["latency_p95_ms"]) for r in leads])}
    return [{**r, "pareto": True} for r in front if r["trial"] in keep or r["trial"] == chosen]


def needs_full(recipe: Recipe, rec: dict) -> bool:
    """Whether the trial's model had less than the recipe's schedule or training split (``full_plan``)."""
    return rec.get("schedule") == "short" or recipe.search.train_fraction < 1


def choose(front: list[dict], val_correct: dict[int, np.ndarray] | None = None) -> dict:
    """The artifact. Among feasible front members: the fastest of those tied with the most accurate one
    (``tied``), the others of them under ``tied_with``; without ``val_correct``, the most accurate. When none is
    feasible, the fastest within the accuracy bound (or, when none is within it either, the most accurate)."""
    feasible = [r for r in front if r["feasible"]]
    if feasible:
        ties = tied(feasible, val_correct)
        pick = min(ties, key=lambda r: (r["latency_p95_ms"], -r["val_accuracy"]))
        return {**pick, "tied_with": [r["trial"] for r in ties if r is not pick]}
    accurate = [r for r in front if r["constraint"][1] <= 0]
    if accurate:
        return min(accurate, key=lambda r: r["latency_p95_ms"])
    return max(front, key=lambda r: r["val_accuracy"])


def tied(feasible: list[dict], val_correct: dict[int, np.ndarray] | None) -> list[dict]:
    """The most accurate member on validation, and those whose per-sample validation correctness
    (``val_correct``, by trial) McNemar's test cannot tell from its: the test split reports, never chooses."""
    best = max(feasible, key=lambda r: (r["val_accuracy"], -r["latency_p95_ms"]))
    if not val_correct:
        return [best]
    return [r for r in feasible if r is best
            or mcnemar(val_correct[r["trial"]], val_correct[best["trial"]])["p_value"] >= ALPHA]
