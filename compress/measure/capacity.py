"""Capacity and cost: how many cores (replicas) meet the requirement, and what that costs.

The arithmetic is plain functions over measured throughput, so it can be checked by hand; ``plan_for``
runs the throughput sweep (batch sizes x threads) with the one latency protocol.
"""

from __future__ import annotations

import math
from pathlib import Path

from compress.measure.latency import sweep
from compress.recipe import Recipe


def default_threads(cores: int) -> list[int]:
    """Thread counts swept when capacity.threads is unset: 1, 2, 4, ... and all the cores, so the sweep
    grows with the log of the core count, not linearly."""
    return sorted({2**k for k in range(cores.bit_length()) if 2**k < cores} | {cores})


def best_per_core(rows: list[dict]) -> dict:
    """The sweep setting with the most samples per second per core (the batch-job setting)."""
    return max(rows, key=lambda r: r["throughput_sps"] / r["threads"])


def online_plan(p95_ms: float, throughput_sps: float, threads: int, concurrency: int, requests_per_s: float | None,
                target_utilization: float, slo_p95_ms: float | None, cpu_core_hour: float) -> dict:
    """Replicas for an online load: one per concurrent request, and enough to keep utilisation bounded."""
    replicas = concurrency
    if requests_per_s:
        replicas = max(replicas, math.ceil(requests_per_s / (throughput_sps * target_utilization)))
    cores = replicas * threads
    cost_per_hour = cores * cpu_core_hour
    served_per_hour = (requests_per_s or replicas * throughput_sps * target_utilization) * 3600
    return {"meets_p95": slo_p95_ms is None or p95_ms <= slo_p95_ms, "p95_ms": p95_ms, "replicas": replicas,
            "threads_per_replica": threads, "cores": cores, "cost_per_hour": cost_per_hour,
            "cost_per_million": cost_per_hour / served_per_hour * 1e6}


def batch_plan(per_core_sps: float, records: int, hours: float, max_cores: int | None, cpu_core_hour: float) -> dict:
    """Cores to score ``records`` within ``hours`` at a measured per-core throughput, and the run's cost."""
    required = records / (hours * 3600.0)
    cores = math.ceil(required / per_core_sps)
    core_hours = records / per_core_sps / 3600.0
    return {"required_sps": required, "per_core_sps": per_core_sps, "cores": cores,
            "meets_deadline": max_cores is None or cores <= max_cores, "core_hours": core_hours,
            "cost_per_run": core_hours * cpu_core_hour, "cost_per_million": 1e6 / per_core_sps / 3600.0 * cpu_core_hour}


def gpu_plan(gpu_sps: float, records: int, hours: float, gpu_hour: float, cpu: dict | None = None) -> dict:
    """GPUs to score ``records`` within ``hours`` at a measured per-GPU throughput, the run's cost, and,
    given the CPU batch plan of the same model, which of the two is the cheaper way to meet the deadline."""
    required = records / (hours * 3600.0)
    gpu_hours = records / gpu_sps / 3600.0
    plan = {"gpu_sps": gpu_sps, "gpus": math.ceil(required / gpu_sps), "gpu_hours": gpu_hours,
            "cost_per_run": gpu_hours * gpu_hour, "cost_per_million": 1e6 / gpu_sps / 3600.0 * gpu_hour}
    if cpu is not None:
        plan["cheaper"] = "gpu" if plan["cost_per_run"] < cpu["cost_per_run"] else "cpu"
    return plan


def plan_for(name: str, onnx: str | Path, online_stats: dict, recipe: Recipe, cores: int) -> tuple[dict, list[dict]]:
    """Sweep one model and plan both requirement forms; returns (plan, sweep rows)."""
    cap, slo, cost = recipe.capacity, recipe.slo, recipe.cost
    threads = cap.threads or default_threads(cores)
    # Throughput comes from the mean, so each setting is time-bounded with fewer runs: the online protocol's
    # run counts make one large-batch teacher setting take over a minute.
    cfg = recipe.latency.model_copy(update={"max_seconds": cap.max_seconds, "min_runs": 20, "warmup_runs": 5})
    gpu_rows = []
    if recipe.target.device == "cuda":  # the GPU's throughput; CPU replicas are swept below for the comparison
        gpu_rows = [{**r, "device": "cuda"}
                    for r in sweep({name: onnx}, cfg, cap.batch_sizes, [1], "cuda", bounded=True)]
    rows = [{**r, "device": "cpu"} for r in sweep({name: onnx}, cfg, cap.batch_sizes, threads, "cpu", bounded=True)]
    best = best_per_core(rows)
    plan = {"model": name, "best_batch_size": best["batch_size"], "best_threads": best["threads"],
            "best_throughput_sps": best["throughput_sps"], "per_core_sps": best["throughput_sps"] / best["threads"],
            "online": online_plan(online_stats["latency_p95_ms"], online_stats["throughput_sps"], recipe.target.threads,
                                  slo.concurrency, slo.requests_per_s, cap.target_utilization, slo.p95_ms,
                                  cost.cpu_core_hour),
            "gpu": None}
    if slo.batch:
        plan["batch"] = batch_plan(plan["per_core_sps"], slo.batch.records, slo.batch.hours, slo.batch.max_cores,
                                   cost.cpu_core_hour)
    if gpu_rows:
        g = max(gpu_rows, key=lambda r: r["throughput_sps"])
        b = slo.batch
        plan["gpu"] = {"best_batch_size": g["batch_size"], "throughput_sps": g["throughput_sps"],
                       **(gpu_plan(g["throughput_sps"], b.records, b.hours, cost.gpu_hour, plan["batch"]) if b else {})}
    return plan, gpu_rows + rows


def capacity_markdown(plans: list[dict], recipe: Recipe) -> str:
    slo, cost = recipe.slo, recipe.cost
    cur = cost.currency
    out = [f"# Capacity and cost plan: {recipe.name}", "",
           f"Prices: {cost.cpu_core_hour} {cur} per CPU core-hour, {cost.gpu_hour} {cur} per GPU-hour "
           "(from the recipe's `cost` section). Throughput (from the mean time per run; warm-up and timed runs of "
           f"each setting bounded to about {recipe.capacity.max_seconds:g} s each) measured over "
           f"batch sizes {recipe.capacity.batch_sizes} and threads {recipe.capacity.threads or 'all'}; "
           "per-core throughput assumes replicas of the best setting scale out independently.", ""]
    if slo.batch:
        b = slo.batch
        out += [f"## Batch: {b.records:,} records in {b.hours:g} h ({b.required_sps:,.0f} samples/s)"
                + (f", at most {b.max_cores} cores" if b.max_cores else ""), "",
                "| model | best setting | samples/s per core | cores needed | core-hours | cost per run | cost per 1M |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for p in plans:
            bp = p["batch"]
            out.append(f"| {p['model']} | batch {p['best_batch_size']}, {p['best_threads']} thread(s) | "
                       f"{bp['per_core_sps']:,.0f} | {bp['cores']:,} | {bp['core_hours']:,.1f} | "
                       f"{bp['cost_per_run']:,.2f} {cur} | {bp['cost_per_million']:.4f} {cur} |")
        t = next((p for p in plans if p["model"] == "teacher"), None)
        a = next((p for p in plans if p.get("chosen")), None)
        if t and a:
            out += ["", f"**The teacher needs {t['batch']['cores']:,} CPU cores ({t['batch']['cost_per_run']:,.2f} {cur} "
                    f"per run); the chosen artifact needs {a['batch']['cores']:,} ({a['batch']['cost_per_run']:,.2f} "
                    f"{cur} per run).**"]
        out.append("")
    load = f"{slo.requests_per_s:,.0f} requests/s peak" if slo.requests_per_s else "no peak load given"
    out += [f"## Online: p95 <= {slo.p95_ms} ms per request, {slo.concurrency} concurrent, {load}", "",
            f"Replicas run at batch {recipe.target.batch_size} with {recipe.target.threads} thread(s), sized to stay "
            f"under {int(100 * recipe.capacity.target_utilization)}% busy.", "",
            "| model | p95 ms | meets p95 | replicas | cores | cost per hour | cost per 1M |",
            "| --- | ---: | :---: | ---: | ---: | ---: | ---: |"]
    for p in plans:
        o = p["online"]
        out.append(f"| {p['model']} | {o['p95_ms']:.3f} | {'yes' if o['meets_p95'] else 'no'} | {o['replicas']} | "
                   f"{o['cores']} | {o['cost_per_hour']:.3f} {cur} | {o['cost_per_million']:.4f} {cur} |")
    gpu = [p for p in plans if p.get("gpu")]
    if not gpu:
        out += ["", "GPU: no GPU measurement exists for this study, so no GPU-versus-CPU comparison is made. "
                "Run the recipe with `target.device: cuda` on a GPU machine to get one.", ""]
        return "\n".join(out)
    out += ["", "## GPU or more CPU cores?", ""]
    if not slo.batch:
        out += ["The recipe has no batch requirement to price; GPU throughput per model:", ""]
    out += ["| model | GPU samples/s (best batch) | GPUs needed | GPU cost per run | CPU cost per run | cheaper |",
            "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for p in gpu:
        g = p["gpu"]
        cpu_cost = f"{p['batch']['cost_per_run']:,.2f} {cur}" if "batch" in p else "-"
        out.append(f"| {p['model']} | {g['throughput_sps']:,.0f} (batch {g['best_batch_size']}) | {g.get('gpus', '-')} | "
                   + (f"{g['cost_per_run']:,.2f} {cur}" if "cost_per_run" in g else "-")
                   + f" | {cpu_cost} | {g.get('cheaper', '-')} |")
    out.append("")
    return "\n".join(out)
