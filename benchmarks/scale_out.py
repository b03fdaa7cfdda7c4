"""Scale-out benchmark: trials per hour with 1 and 2 workers on one PostgreSQL study, whether trial-time
latencies stay honest with a neighbour training, and what kill -9 loses.

    .venv/bin/python benchmarks/scale_out.py --out results/scale_out.json

Runs, each a fresh database on a throwaway PostgreSQL server (tests/pg.py) and real `compress search`
processes, with every worker's PyTorch threads chosen so the workers do not oversubscribe the cores:

1. one worker, all cores (``--train-threads`` = cores), N trials;
2. two workers, cores/2 threads each, N trials in all; then every complete trial's model is measured again
   alone, with the same protocol and settings: ``latency_agreement`` = trial-time p95 / p95 alone;
3. the same two workers with the host measurement lock off (``COMPRESS_HOST_LOCK=0``), the control that
   shows what the lock is for;
4. two workers, one killed with SIGKILL in the middle of a trial and started again at once: lost and
   duplicated trials.

Trials per hour come from the study's own clock (the union of its trials' intervals), so process start-up
and the report are not counted. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from compress.latency import environment, measure  # noqa: E402
from compress.recipe import load_recipe  # noqa: E402
from compress.storage import mask  # noqa: E402
from compress.workers import busy_seconds  # noqa: E402
from pg import PostgresServer  # noqa: E402

RECIPE = "recipes/tiny_search.yaml"
# The tiny recipe's trials, with the product's latency protocol (recipes' defaults), not tiny_search's
# shortened one: the agreement is a claim about the real measurement.
SETTINGS = ["search.baselines=false", "capacity.enabled=false", "search.pruner=none", "search.keep_dominated_models=true",
            "latency.warmup_runs=50", "latency.min_runs=200", "latency.max_runs=20000", "latency.max_seconds=5.0"]


def _worker(out: Path, url: str, n_trials: int, threads: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "compress", "search", RECIPE, "--storage", url, "--n-trials", str(n_trials),
           "--train-threads", str(threads), "--artifacts", str(out / "store"), "--set", f"output_dir={out}"]
    for s in SETTINGS:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny_search", storage=url).trials


def _run(pg: PostgresServer, name: str, workers: int, n_trials: int, out: Path, env: dict | None = None) -> dict:
    url = pg.create_database(f"bench_{name}")
    cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    print(f"[{name}] {workers} worker(s) x {threads} thread(s), {n_trials} trials", flush=True)
    t0 = time.time()
    procs = [_worker(out / name / f"w{i}", url, n_trials, threads, out / f"{name}.{i}.log", env) for i in range(workers)]
    for i, p in enumerate(procs):
        if p.wait() != 0:
            raise SystemExit(f"worker {i} of {name} failed; see {out / f'{name}.{i}.log'}")
    trials = _trials(url)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    busy = busy_seconds([t for t in trials if t.datetime_start is not None])
    return {"url": url, "workers": workers, "threads_per_worker": threads, "trials_done": len(done),
            "study_busy_s": round(busy, 1), "wall_s_with_startup_and_report": round(time.time() - t0, 1),
            "trials_per_hour": round(3600 * len(done) / busy, 1), "_trials": trials, "_out": out / name}


def _agreement(run: dict) -> list[dict]:
    """Each complete trial's model measured alone now, as its trial measured it (same protocol and settings)."""
    recipe = load_recipe(RECIPE, [f"output_dir={run['_out']}"] + SETTINGS)
    rows = []
    for t in run["_trials"]:
        if t.state != TrialState.COMPLETE:
            continue
        m = t.user_attrs["metrics"]
        model = next(run["_out"].glob(f"w*/tiny_search/{t.user_attrs['artifact_path']}"), None)
        if model is None:
            continue
        alone = measure(model, recipe.latency, recipe.target.batch_size, recipe.target.threads, recipe.target.device)
        rows.append({"trial": t.number, "worker_pid": t.user_attrs["worker"]["pid"],
                     "trial_time_p95_ms": round(m["latency_p95_ms"], 5), "alone_p95_ms": round(alone.p95_ms, 5),
                     "ratio": round(m["latency_p95_ms"] / alone.p95_ms, 3),
                     "trial_time_p50_ms": round(m["latency_p50_ms"], 5), "alone_p50_ms": round(alone.p50_ms, 5),
                     "paused_for_neighbours_s": m.get("paused_for_neighbours_s")})
    return rows


def _kill_run(pg: PostgresServer, n_trials: int, out: Path) -> dict:
    url = pg.create_database("bench_kill")
    name = "kill"
    logs = [out / f"{name}.{i}.log" for i in range(3)]
    procs = [_worker(out / name / f"w{i}", url, n_trials, 1, logs[i]) for i in range(2)]
    # Kill worker 0 in the middle of its second trial.
    victim = procs[0]
    deadline = time.time() + 900
    while time.time() < deadline:
        mine = [t for t in _trials(url) if t.user_attrs.get("worker", {}).get("pid") == victim.pid]
        if len(mine) >= 2 and mine[-1].state == TrialState.RUNNING:
            break
        time.sleep(0.3)
    time.sleep(2.0)
    killed_trial = mine[-1].number
    done_before = {t.number: t.values for t in _trials(url) if t.state == TrialState.COMPLETE}
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    print(f"[kill] worker {victim.pid} killed during trial {killed_trial}; started again", flush=True)
    procs[0] = _worker(out / name / "w0", url, n_trials, 1, logs[2])
    for p in procs:
        p.wait()
    trials = _trials(url)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    lost_completed = [n for n, v in done_before.items() if trials[n].state != TrialState.COMPLETE or trials[n].values != v]
    firsts = [json.dumps(t.params, sort_keys=True) for t in done if "retry_of" not in t.user_attrs]
    retried = [t for t in done if t.user_attrs.get("retry_of") == killed_trial]
    return {"n_trials": n_trials, "killed_trial": killed_trial, "trials_done": len(done),
            "lost_trials": len(lost_completed) + max(0, n_trials - len(done)),
            "duplicate_trials": len(firsts) - len(set(firsts)) + max(0, len(done) - n_trials),
            "killed_trial_state": trials[killed_trial].state.name,
            "killed_trial_rerun": bool(retried) and retried[0].params == trials[killed_trial].params,
            "left_running": sum(t.state == TrialState.RUNNING for t in trials)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/scale_out.json")
    ap.add_argument("--n-trials", type=int, default=8)
    ap.add_argument("--work", default=".cache/scale_out")
    args = ap.parse_args()
    work = ROOT / args.work
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    with PostgresServer() as pg:
        one = _run(pg, "one_worker", 1, args.n_trials, work)
        two = _run(pg, "two_workers", 2, args.n_trials, work)
        print("[two_workers] measuring each model alone", flush=True)
        agree = _agreement(two)
        nolock = _run(pg, "two_workers_no_host_lock", 2, args.n_trials, work, {"COMPRESS_HOST_LOCK": "0"})
        print("[two_workers_no_host_lock] measuring each model alone", flush=True)
        agree_nolock = _agreement(nolock)
        kill = _kill_run(pg, args.n_trials, work)
    ratios = [r["ratio"] for r in agree]
    result = {
        "command": "python benchmarks/scale_out.py " + " ".join(sys.argv[1:]),
        "recipe": RECIPE, "settings": SETTINGS, "storage": mask(pg.url),
        "machine": {**environment("cpu"), "platform": platform.platform()},
        "trials_per_hour": {"1_worker": one["trials_per_hour"], "2_workers": two["trials_per_hour"],
                            "scaling": round(two["trials_per_hour"] / one["trials_per_hour"], 2)},
        "runs": {k: {x: v for x, v in r.items() if not x.startswith("_") and x != "url"}
                 for k, r in (("one_worker", one), ("two_workers", two), ("two_workers_no_host_lock", nolock))},
        "latency_agreement": {"models": agree, "min_ratio": min(ratios), "max_ratio": max(ratios),
                              "all_within_0.9_1.1": all(0.9 <= r <= 1.1 for r in ratios),
                              "median_ratio": statistics.median(ratios)},
        "latency_agreement_without_host_lock": {
            "models": agree_nolock, "min_ratio": min(r["ratio"] for r in agree_nolock),
            "max_ratio": max(r["ratio"] for r in agree_nolock),
            "median_ratio": statistics.median(r["ratio"] for r in agree_nolock)},
        "kill_9": kill, "lost_trials": kill["lost_trials"], "duplicate_trials": kill["duplicate_trials"],
        "gpu": "not measured: no GPU machine was lent to this session",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("trials_per_hour", "lost_trials", "duplicate_trials")}, indent=2))
    print(f"latency agreement {result['latency_agreement']['min_ratio']}-{result['latency_agreement']['max_ratio']}"
          f" (without the host lock {result['latency_agreement_without_host_lock']['min_ratio']}-"
          f"{result['latency_agreement_without_host_lock']['max_ratio']}) -> {args.out}")


if __name__ == "__main__":
    main()
