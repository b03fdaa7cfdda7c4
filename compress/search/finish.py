"""The report's work after the search: the final measurement, the choice, the baselines and the
chosen candidate's full schedule trained side by side, the paired tests, the capacity sweep."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import upload_artifact
from tqdm.auto import tqdm

from compress.errors import CompressError
from compress.export import onnx_correct
from compress.io import write_text_atomic
from compress.measure.capacity import capacity_markdown, plan_for
from compress.measure.latency import compare, measure
from compress.measure.verdicts import (
    NEAR_FRONT,
    baseline_verdict,
    pareto_indices,
    test_accuracy_fields,
)
from compress.measure.verdicts import compare as paired_test
from compress.pipeline import Stage, evaluated, model_metrics
from compress.recipe import Recipe, RecipeError, public_yaml
from compress.report import write_csv_rows
from compress.search import baselines as bl
from compress.search.halving import FullPlan, full_plan, full_result
from compress.search.publish import summary_of, write_outputs
from compress.search.records import (
    choose,
    fetch_model,
    judged,
    recipe_of,
    still_pareto,
    trained,
    trial_record,
)
from compress.search.study import artifact_store, storage_url
from compress.storage import mask
from compress.train import resolve_device, threads_from


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


    on_cpu = all(resolve_device(c.device).type == "cpu" for c in (recipe.distill.train, recipe.prune.finetune))
    return 2 if on_cpu and (threads or torch.get_num_threads()) >= 2 else 1


def _with_latency(rec: dict, alone, interleaved) -> dict:
    """Percentiles from the model measured alone (as a serving replica runs it); the interleaved statistics,
    which the speed-up ratios come from, under ``latency_interleaved``."""
    return {**rec, "latency_measured": "final", **alone.record_fields(), "latency_interleaved": interleaved.to_dict()}


def search_independent(recipe: Recipe, root: Path) -> tuple[list[bl.Build], dict[str, CompressError]]:
    """The baselines whatever the search finds: the pruned teacher (fine-tuned), the int8 teacher (none where
    the latency target cannot run int8 graphs: the error, by name)."""
    builds, unbuilt = [bl.teacher_pruned(recipe, root)], {}
    try:
        builds.append(bl.teacher_int8(recipe, root))
    except CompressError as err:
        unbuilt["teacher_int8"] = err
    return builds, unbuilt


def adopted_from_trials(builds: list[bl.Build], complete: list[dict], recipe: Recipe, frozen, store, data, tinfo
             ) -> dict[str, Stage]:
    """The baselines a trial made already, copied from it instead of made again: the int8 teacher (a trial of
    the teacher as it is, quantized with the same settings), and the student without KD of such a trial (KD
    changes nothing where nothing is trained)."""
    adopted = {}
    for b in builds:
        if bl.kept(b, data, tinfo) is not None:
            continue  # made, copied or adopted before (while waiting): build_all finds it
        for r in complete:
            if bl.same_untrained(b.recipe, recipe_of(recipe, r)) and fetch_model(
                    r, frozen[r["trial"]].user_attrs.get("model_artifact"), store):
                adopted[b.name] = bl.adopt(b, Path(r["artifact_path"]), r, data, tinfo)
                tqdm.write(f"baseline {b.name}: the same model as trial {r['trial']} (nothing trained), copied from it")
                break
    return adopted


def finish(recipe, study, data, teacher, tinfo, teacher_rec, teacher_onnx, clock,
           early: bl.SideBySide | None = None) -> dict:
    """The report: each phase makes new records from the ones before; summary.json is written last."""
    out = recipe.out_path
    (out / "summary.json").unlink(missing_ok=True)  # present only once this report is complete
    write_text_atomic(out / "recipe.yaml", public_yaml(recipe))
    store = artifact_store(recipe, study)
    frozen = study.get_trials(deepcopy=False)
    trials = [trial_record(t, out) for t in frozen]
    complete = _complete(recipe, trials)
    target = (recipe.target.batch_size, recipe.target.threads, recipe.target.device)
    front, alone = _measured_alone(recipe, _near_front(recipe, complete, frozen, store), teacher_onnx,
                                   teacher_rec["val_accuracy"], target)
    measured = {r["trial"] for r in front}  # their files stay: a report run again measures these same trials
    front = _with_chosen(still_pareto(front, recipe), data)  # the exact numbers can reorder close neighbours
    clock.lap("final_latency")

    after = _train_after_search(recipe, _chosen(front), complete, frozen, store, data, teacher, tinfo,
                                teacher_onnx, early)
    front, full_schedule, made = _handed_over(recipe, front, after, data, teacher, tinfo,
                                              teacher_rec["val_accuracy"], target)
    failed = {name: f"{type(err).__name__}: {err}" for name, err in made.items() if isinstance(err, CompressError)}
    for name, why in failed.items():
        tqdm.write(f"baseline {name} could not be built, left out of the comparison: {why}")
    stages = dict(sorted(((k, s) for k, s in made.items() if k not in failed), key=lambda kv: _baseline_rank(kv[0])))
    clock.lap("training_after_search")

    tqdm.write(f"final measurement: teacher, {len(front)} front trial(s), {len(stages)} baseline(s) interleaved")
    models = {"teacher": teacher_onnx, **{f"trial_{r['trial']}": Path(r["artifact_path"]) for r in front},
              **{k: s.onnx for k, s in stages.items()}}
    lat = compare(models, recipe.latency, *target)
    alone = {**alone, **{k: measure(s.onnx, recipe.latency, *target) for k, s in stages.items()}}
    teacher_rec = {**_with_latency(teacher_rec, alone["teacher"], lat["teacher"]),
                   **test_accuracy_fields(after.teacher_correct)}
    clock.lap("final_latency")
    # Accuracy verdicts come from paired tests on the same test images (compress.measure.verdicts): each model's
    # per-image correctness was kept by the process that made it; the recorded accuracies are the same numbers.
    tqdm.write(f"paired accuracy tests on {len(data.test):,} test samples: front, baselines, teacher")
    correct = {r["trial"]: evaluated(Path(r["artifact_path"]), data, keep=True)[1] for r in front}
    front = [{**r, "latency_interleaved": lat[f"trial_{r['trial']}"].to_dict(),
              **test_accuracy_fields(correct[r["trial"]])} for r in front]
    refs = {k: _baseline_record(k, s, data, alone[k], lat[k], front, correct) for k, s in stages.items()}
    chosen = _chosen(front)
    comparisons = _comparisons(chosen, front, correct, teacher_rec, after.teacher_correct)
    clock.lap("paired_tests")

    plans, sweep_rows = _capacity(recipe, out, teacher_rec, teacher_onnx, front) if recipe.capacity.enabled else ([], [])
    clock.lap("capacity")
    summary = {**summary_of(recipe, study, teacher_rec, chosen, front, refs, tinfo, data, clock), **comparisons,
               "baselines_failed": failed,
               "full_schedule": full_schedule,  # null: the chosen trial had its full schedule during the search
               "capacity": next((p for p in plans if p.get("chosen")), None),
               "capacity_teacher": next((p for p in plans if p["model"] == "teacher"), None)}
    chosen_rows = [r for r in sweep_rows if r["model"] == f"trial_{chosen['trial']}"]
    write_outputs(recipe, out, trials, front, teacher_rec, refs, chosen, summary, data, chosen_rows, measured)
    _attach(study, store, out)
    return summary


def _complete(recipe: Recipe, trials: list[dict]) -> list[dict]:
    """The trained trials; an error naming why when there is none."""
    complete = trained(trials)
    if complete:
        return complete
    slow = sum(bool(r["untrained"]) for r in trials)
    if slow:
        raise RecipeError(
            f"study {recipe.name!r}: all {slow} candidate(s) missed the service level's p95 ({recipe.slo.p95_ms} ms) "
            "before training, so none was trained. Widen search.space toward smaller models (more pruning, "
            "int8, narrower students), relax slo.p95_ms, or set search.skip_slow: false to train them anyway.")
    raise RuntimeError(f"study {recipe.name!r} has no complete trial; see the trial lines above for why")


def _near_front(recipe: Recipe, complete: list[dict], frozen, store) -> list[dict]:
    """The trials the final measurement could put on the front: those no other trial beats at trial time by being
    as accurate and NEAR_FRONT times as fast, with their model files here."""
    near = [complete[i] for i in sorted(pareto_indices([(r["val_accuracy"], r["latency_p95_ms"]) for r in complete],
                                                        margin=NEAR_FRONT))]
    missing = [r for r in near if not fetch_model(r, frozen[r["trial"]].user_attrs.get("model_artifact"), store)]
    if missing:
        raise RecipeError(
            f"study {recipe.name!r}: the model files of Pareto trial(s) {[r['trial'] for r in missing]} are neither "
            f"here (e.g. {missing[0]['artifact_path']}) nor in the artifact store; the study cannot be finished from "
            f"its database alone. Restore them, point --artifacts at the store the workers used, or delete "
            f"{mask(storage_url(recipe))} (and {recipe.out_path / 'trials'}) to search again.")
    return near


def _measured_alone(recipe: Recipe, near: list[dict], teacher_onnx: Path, teacher_val: float, target
                    ) -> tuple[list[dict], dict]:
    """The teacher and the trials near the front, each measured alone: interleaving makes ratios fair but, on
    a shared machine, inflated sub-millisecond p95s; a replica serves one model, so the percentiles that meet or
    miss the service level come from each model alone. Returns the re-judged records and the measurements."""
    tqdm.write(f"final measurement: the teacher and {len(near)} trial(s) near the front, each alone")
    models = {"teacher": teacher_onnx, **{f"trial_{r['trial']}": Path(r["artifact_path"]) for r in near}}
    alone = {k: measure(p, recipe.latency, *target) for k, p in models.items()}
    front = [judged({**r, **alone[f"trial_{r['trial']}"].record_fields(), "latency_measured": "final"}, teacher_val,
                    recipe) for r in near]
    return front, alone


def _with_chosen(front: list[dict], data) -> list[dict]:
    """The front with its chosen member marked (``choose``, with the feasible members' per-sample correctness
    on the validation split), which records the members it was tied with under ``tied_with``."""
    val_correct = {r["trial"]: onnx_correct(Path(r["artifact_path"]), data.val) for r in front if r["feasible"]}
    pick = choose(front, val_correct)
    return [pick | {"chosen": True} if r["trial"] == pick["trial"] else {**r, "chosen": False} for r in front]


def _chosen(front: list[dict]) -> dict:
    return next(r for r in front if r["chosen"])


@dataclasses.dataclass(frozen=True)
class AfterSearch:
    """What was made after the search: each baseline's stage or the error that stopped it, the chosen
    candidate's full-schedule plan and stage (where halving kept it short), and the teacher's per-image
    correctness on the test split."""

    made: dict
    plan: FullPlan | None
    full_stage: Stage | None
    seconds: float
    teacher_correct: np.ndarray


def _train_after_search(recipe: Recipe, chosen: dict, complete: list[dict], frozen, store, data, teacher, tinfo,
                        teacher_onnx: Path, early: bl.SideBySide | None) -> AfterSearch:
    """Everything trained after the search, side by side where there are cores for it (search.finish_processes),
    longest first: the no-KD student (the chosen one's whole schedule), the rest of the chosen one's full
    schedule, the pruned teacher, the int8 teacher (no training). Those a trial made are copied from it."""
    plan = full_plan(recipe, chosen, frozen[chosen["trial"]].user_attrs.get("restart_state"), store)
    root = recipe.out_path / "baselines"
    builds, unbuilt = ([plan.build] if plan else []), {}
    if recipe.search.baselines:
        tqdm.write("baselines: teacher int8, pruned teacher, student without KD")
        no_kd = bl.student_without_kd(recipe_of(recipe, {**chosen, "overrides": plan.restart} if plan else chosen),
                                      root)  # the model as if handed over
        if early and no_kd.name in early.futures and not early.makes(no_kd, data, tinfo):
            tqdm.write(f"{no_kd.name}: trial #{chosen['trial']} was chosen, not the one started early: stopped")
            early.stop()  # what it finished is kept and found by build_all; the rest is made here
            early = None
        independent, unbuilt = search_independent(recipe, root)  # kept already when made while waiting
        builds = [b for b in [no_kd, *builds, *independent] if not (early and b.name in early.futures)]
    adopted = adopted_from_trials(builds, complete, recipe, frozen, store, data, tinfo) if recipe.search.baselines else {}
    builds = [b for b in builds if b.name not in adopted]
    ready = [s for s in [*adopted.values(), *(bl.kept(b, data, tinfo) for b in builds)] if s is not None]
    teacher_correct = []

    def for_the_paired_tests() -> None:
        """What the paired tests need and no build's process computes: the teacher's per-image correctness and
        that of the models adopted or kept from before; run on a core a finished build leaves."""
        teacher_correct.append(onnx_correct(teacher_onnx, data.test))
        for s in ready:
            evaluated(s.onnx, data, keep=True)

    started = time.time()
    cores = torch.get_num_threads()  # beside those started while waiting, on the cores their process leaves
    with threads_from(lambda: max(1, cores - early.threads) if early and early.running() else cores):
        made = {**bl.build_all(builds, data, teacher, tinfo, finish_processes(recipe),
                               meanwhile=None if early else for_the_paired_tests), **adopted}
    seconds = time.time() - started
    if early:
        for_the_paired_tests()  # while the one started before still trains
        made.update(early.results())
    full_stage = made.pop(plan.build.name) if plan else None
    if isinstance(full_stage, CompressError):
        raise full_stage
    return AfterSearch({**unbuilt, **made}, plan, full_stage, seconds, teacher_correct[0])


def _handed_over(recipe: Recipe, front: list[dict], after: AfterSearch, data, teacher, tinfo, teacher_val: float,
                 target) -> tuple[list[dict], dict | None, dict]:
    """The front with the model handed over in place of the chosen trial's (its full schedule, when that is at
    least as good), summary.json's ``full_schedule``, and the baselines made (again, for that model's no-KD
    student, when the trial's own model is handed over)."""
    if after.plan is None:
        return front, None, after.made
    chosen = _chosen(front)
    handed, result = full_result(recipe, chosen, after.plan, after.full_stage, data, teacher_val, target,
                                 after.seconds)
    front = still_pareto([handed if r is chosen else r for r in front], recipe, chosen["trial"])
    made = after.made
    if recipe.search.baselines and result["handed_over"] == "trial":  # the no-KD baseline of that one
        no_kd = bl.student_without_kd(recipe_of(recipe, handed), recipe.out_path / "baselines")
        made = {**made, **bl.build_all([no_kd], data, teacher, tinfo)}
    return front, result, made


def _baseline_record(name: str, stage: Stage, data, alone, interleaved, front: list[dict], correct: dict) -> dict:
    """A baseline as measured, with its verdict against the front (a paired test on the same test images)."""
    evaluation = evaluated(stage.onnx, data, keep=True)
    r = {"name": name, "latency_measured": "final", **model_metrics(stage, data, alone, evaluation),
         "latency_interleaved": interleaved.to_dict()}
    verdict = baseline_verdict(r, evaluation[1], front, correct)
    dominated = verdict["verdict"] == "dominated"
    return {**r, "versus_front": verdict, "dominated_by_front": dominated,
            "dominated_by_trial": verdict["trial"] if dominated else None}


def _attach(study: optuna.Study, store, out: Path) -> None:
    """The report's files as study artifacts: optuna-dashboard shows (and serves) what the report shows."""

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
    others = [r for r in front if r["trial"] != chosen["trial"]]
    if others:
        runner = max(others, key=lambda r: (r["feasible"] == chosen["feasible"], r["val_accuracy"], -r["latency_p95_ms"]))
        out["artifact_vs_runner_up"] = {"trial": runner["trial"], **vs(runner, correct[runner["trial"]], "runner-up")}
    return out


def _capacity(recipe: Recipe, out: Path, teacher_rec: dict, teacher_onnx: Path,
              front: list[dict]) -> tuple[list[dict], list[dict]]:
    tqdm.write(f"capacity sweep: teacher and {len(front)} front model(s)")
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
