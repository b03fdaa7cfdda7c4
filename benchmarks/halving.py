"""Does successive halving (search.halving) buy more candidates per hour, and at what cost to the front?

The default study twice, same seed, same wall-clock budget (search.timeout_s), once with halving off and once
on; no baselines or capacity sweep (they do not depend on the search). Search-time training uses
``--train-fraction`` of the training split so that a budget of minutes holds several trials on 2 cores; every
candidate is still evaluated on the full validation and test splits, and the fronts are re-measured as in
every study. Reports trials done per hour of search (first trial's start to last trial's end), how many kept
their short schedule or were promoted, each trial's time and accuracy, the artifact and the front's
hypervolume, from each study's summary.json and storage.

    .venv/bin/python benchmarks/halving.py --slo-p95-ms 0.6 --out results/halving.json   # AVX2 machine
"""

from __future__ import annotations

import argparse
import tempfile
import time

import optuna

from compress.io import write_json_atomic
from compress.pipeline import machine_info
from compress.recipe import load_recipe
from compress.search.study import storage_url
from compress.search.run import run_study

KEEP = ["n_trials_complete", "n_trials_untrained_too_slow", "n_trials_pruned", "n_trials_failed",
        "n_trials_short_schedule", "n_trials_promoted", "pareto_size", "hypervolume", "slo_met", "accuracy_drop_pp",
        "chosen_params"]


def _trial(t: optuna.trial.FrozenTrial) -> dict:
    m = t.user_attrs.get("metrics", {})
    return {"number": t.number, "state": t.state.name, "params": t.params,
            "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1),
            "trained": "untrained" not in t.user_attrs, "halving": t.user_attrs.get("halving"),
            "val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy"),
            "latency_p95_ms": m.get("latency_p95_ms"), "macs": m.get("macs")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/fashion_mnist.yaml")
    ap.add_argument("--budget-s", type=float, default=480.0, help="search.timeout_s of each arm")
    ap.add_argument("--train-fraction", type=float, default=0.25)
    ap.add_argument("--slo-p95-ms", type=float, default=None,
                    help="the service level's p95 for this machine (default: the recipe's); on a machine slower "
                         "than the one the recipe was sized on, scale it, or every pruned teacher is too slow")
    ap.add_argument("--out", default="results/halving.json")
    args = ap.parse_args()
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for on in (False, True):
            name = "halving_on" if on else "halving_off"
            # bf16 off: emulated (slower) on CPUs without AVX-512 BF16; both arms alike.
            recipe = load_recipe(args.recipe, [
                f"name={name}", f"output_dir={tmp}", "search.n_trials=200", f"search.timeout_s={args.budget_s}",
                f"search.train_fraction={args.train_fraction}", "search.baselines=false", "capacity.enabled=false",
                f"search.halving.enabled={str(on).lower()}", "distill.train.bf16=false", "prune.finetune.bf16=false"]
                + ([f"slo.p95_ms={args.slo_p95_ms}"] if args.slo_p95_ms else []))
            t0 = time.time()
            summary = run_study(recipe)
            done = summary["n_trials_complete"] + summary["n_trials_untrained_too_slow"] + summary["n_trials_pruned"]
            trials = [t for t in optuna.load_study(study_name=name, storage=storage_url(recipe)).trials
                      if t.datetime_complete is not None]
            # The search's own time: first trial's start to last trial's end (the last one started before the
            # budget ran out finishes after it; the report after the search is not counted).
            search_s = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
            arms[name] = {"wall_s": round(time.time() - t0, 1), "search_s": round(search_s, 1), "trials_done": done,
                          "trials_per_hour_of_search": round(3600 * done / search_s, 1),
                          "artifact": summary["artifact"], **{k: summary.get(k) for k in KEEP},
                          "trials": [_trial(t) for t in trials]}
            print(name, arms[name], flush=True)
    write_json_atomic(args.out, {"recipe": args.recipe, "budget_s": args.budget_s, "slo_p95_ms": args.slo_p95_ms,
                                 "train_fraction": args.train_fraction, "arms": arms, "machine": machine_info()})


if __name__ == "__main__":
    main()
