"""The study's outputs, written from its records: summary, tables, plots and the artifact bundle."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from optuna.trial import TrialState

from compress.handoff import spec_fields, write_bundle
from compress.io import sha256_file, write_json_atomic
from compress.measure.verdicts import front_hypervolume
from compress.pipeline import machine_info, removes_channels, summarize, trains
from compress.recipe import public_dict
from compress.report import plot_pareto_html, plot_pareto_png, write_csv
from compress.search.records import recipe_of, trained
from compress.search.study import storage_url
from compress.storage import mask
from compress.techniques.quantize import FORMAT_NAMES


def _because(chosen: dict) -> str:
    if not chosen["feasible"]:
        return ("no trial meets the service level: fastest within the accuracy bound" if chosen["constraint"][1] <= 0
                else "no trial meets the service level nor the accuracy bound: most accurate trial")
    if chosen.get("tied_with"):
        return ("fastest trial meeting the service level whose validation accuracy is not distinguishable from the "
                "most accurate one's (McNemar on the validation split)")
    return "most accurate trial meeting the service level (no other as accurate on the validation split)"


def summary_of(recipe, study, teacher_rec, chosen, front, refs, tinfo, data, clock) -> dict:
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
        "chosen_because": _because(chosen),
        "chosen_tied_with": chosen.get("tied_with", []),  # feasible trials as accurate on validation (McNemar)
        "chosen_params": chosen["params_"],
        "n_trials_complete": states.count(TrialState.COMPLETE) - untrained,
        "n_trials_untrained_too_slow": untrained,  # timed before training, missed the p95 bound, not trained
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
        # How far the front reaches toward fast and accurate, in machine-independent units (compress.measure.verdicts).
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


def write_outputs(recipe, out: Path, trials, front, teacher_rec, refs, chosen, summary, data, sweep_rows,
                   keep_files: set[int]) -> None:
    keys = list(dict.fromkeys(k for r in trials for k in r["params_"]))  # branch parameters included
    by_id = {r["trial"]: r for r in front}
    trials = [by_id.get(r["trial"], {**r, "pareto": False}) for r in trials]
    write_csv(out / "trials.csv", trials, keys)
    write_csv(out / "pareto.csv", front, keys)
    clean = [{k: v for k, v in r.items() if k != "params_"} | {"params": r["params_"]} for r in front]
    write_json_atomic(out / "pareto.json", {"objectives": ["max val_accuracy", "min latency_p95_ms"], "front": clean,
                                            "teacher": teacher_rec, "baselines": refs})
    complete = trained(trials)  # untrained: no accuracy
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
