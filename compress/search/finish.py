"""The report's work after the search: the final measurement, the choice, the baselines and the
chosen candidate's full schedule trained side by side, the paired tests, the capacity sweep."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
    baseline_verdict,
    pareto_indices,
    test_accuracy_fields,
)
from compress.measure.verdicts import compare as paired_test
from compress.pipeline import Stage, evaluated, model_metrics
from compress.recipe import Recipe, RecipeError, public_yaml
from compress.report import write_csv_rows
from compress.search import baselines as bl
from compress.search.halving import full_plan, full_result
from compress.search.publish import summary_of, write_outputs
from compress.search.records import (
    NEAR_FRONT,
    choose,
    fetch_model,
    judge,
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
    out = recipe.out_path
    (out / "summary.json").unlink(missing_ok=True)  # present only once this report is complete
    write_text_atomic(out / "recipe.yaml", public_yaml(recipe))
    store = artifact_store(recipe, study)
    frozen = study.get_trials(deepcopy=False)
    trials = [trial_record(t, out) for t in frozen]
    complete = trained(trials)
    if not complete:
        slow = sum(bool(r["untrained"]) for r in trials)
        if slow:
            raise RecipeError(
                f"study {recipe.name!r}: all {slow} candidate(s) missed the service level's p95 ({recipe.slo.p95_ms} ms) "
                "before training, so none was trained. Widen search.space toward smaller models (more pruning, "
                "int8, narrower students), relax slo.p95_ms, or set search.skip_slow: false to train them anyway.")
        raise RuntimeError(f"study {recipe.name!r} has no complete trial; see the trial lines above for why")
    # The front comes from the final measurement, so it measures every trial that could be on it: those no other
    # trial beats at trial time by being as accurate and NEAR_FRONT times as fast. (At trial time, a small CNN's
    # p95 read 0.040 ms, alone afterwards 0.058; it had kept a faster CNN off the front measured at the end.)
    for i in pareto_indices([(r["val_accuracy"], r["latency_p95_ms"]) for r in complete], margin=NEAR_FRONT):
        complete[i]["pareto"] = True
    front = [r for r in complete if r["pareto"]]
    missing = [r for r in front if not fetch_model(r, frozen[r["trial"]].user_attrs.get("model_artifact"), store)]
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
    tqdm.write(f"final measurement: the teacher and {len(front)} trial(s) near the front, each alone")
    models = {"teacher": teacher_onnx, **{f"trial_{r['trial']}": Path(r["artifact_path"]) for r in front}}
    alone = {k: measure(p, recipe.latency, *target) for k, p in models.items()}
    for r in front:
        r.update(alone[f"trial_{r['trial']}"].record_fields(), latency_measured="final")
        judge(r, teacher_rec["val_accuracy"], recipe)
    measured = {r["trial"] for r in front}  # their files stay: a report run again measures these same trials
    front = still_pareto(front, recipe)  # the exact numbers can reorder close neighbours
    chosen = choose(front)
    chosen["chosen"] = True
    clock.lap("final_latency")
    # Everything trained after the search, side by side where there are cores for it (search.finish_processes):
    # the chosen candidate's full schedule and the baselines. Latency is measured only once they are all made.
    plan = full_plan(recipe, chosen, frozen[chosen["trial"]].user_attrs.get("restart_state"), store)
    root = out / "baselines"
    # In the order they start, the longest first: the no-KD student (the chosen one's whole schedule), the rest of
    # the chosen one's full schedule, the pruned teacher (2 epochs), the int8 teacher (no training).
    builds = [plan.build] if plan else []
    no_kd_of = recipe_of(recipe, {**chosen, "overrides": plan.restart} if plan else chosen)  # as if handed over
    unbuilt: dict[str, CompressError] = {}
    adopted: dict[str, Stage] = {}
    if recipe.search.baselines:
        tqdm.write("baselines: teacher int8, pruned teacher, student without KD")
        no_kd = bl.student_without_kd(no_kd_of, root)
        if early and no_kd.name in early.futures and not early.makes(no_kd, data, tinfo):
            tqdm.write(f"{no_kd.name}: trial #{chosen['trial']} was chosen, not the one started early: stopped")
            early.stop()  # what it finished is kept and found by build_all; the rest is made here
            early = None
        builds.insert(0, no_kd)
        independent, unbuilt = search_independent(recipe, root)  # kept already when made while waiting
        builds = [b for b in builds + independent if not (early and b.name in early.futures)]  # not started then
        adopted = adopted_from_trials(builds, complete, recipe, frozen, store, data, tinfo)
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
        full_schedule = full_result(recipe, chosen, plan, stage, data, teacher_rec["val_accuracy"], target,
                                     trained_s)
        front = still_pareto(front, recipe, chosen)  # the fully trained model may dominate a neighbour
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

    tqdm.write(f"final measurement: teacher, {len(front)} front trial(s), {len(refs_stages)} baseline(s) interleaved")
    models = {"teacher": teacher_onnx, **{f"trial_{r['trial']}": Path(r["artifact_path"]) for r in front},
              **{k: s.onnx for k, s in refs_stages.items()}}
    lat = compare(models, recipe.latency, *target)
    alone.update({k: measure(s.onnx, recipe.latency, *target) for k, s in refs_stages.items()})
    teacher_rec = _with_latency(teacher_rec, alone["teacher"], lat["teacher"])
    for r in front:
        r["latency_interleaved"] = lat[f"trial_{r['trial']}"].to_dict()
    clock.lap("final_latency")
    # Accuracy verdicts come from paired tests on the same test images (compress.measure.verdicts), so each model's
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
    summary = summary_of(recipe, study, teacher_rec, chosen, front, refs, tinfo, data, clock)
    summary.update(comparisons)
    summary["baselines_failed"] = refs_failed
    summary["full_schedule"] = full_schedule  # null: the chosen trial had its full schedule during the search
    summary["capacity"] = next((p for p in plans if p.get("chosen")), None)
    summary["capacity_teacher"] = next((p for p in plans if p["model"] == "teacher"), None)
    chosen_rows = [r for r in sweep_rows if r["model"] == f"trial_{chosen['trial']}"]
    write_outputs(recipe, out, trials, front, teacher_rec, refs, chosen, summary, data, chosen_rows, measured)
    _attach(study, store, out)
    return summary


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
    others = [r for r in front if r is not chosen]
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
