"""Two trainings at once with 1 thread each, or one at a time with 2: which trains more per second here?

The default study's post-search work is up to three trainings (the chosen candidate's rest, teacher_pruned50,
student_no_kd). A 2-thread training step is not twice as fast as a 1-thread one, so two 1-thread trainings in
parallel processes may get more done: this measured the case for search.finish_processes (which trains them
side by side since). For each kind of student
(the same models as benchmarks/bf16.py), channels_last, batch 128, SGD with momentum, in the precision the
recipes' ``bf16: auto`` picks on this CPU (bf16 autocast where it is native, fp32 elsewhere; ``--dtype`` to force
one): steps per second
of one process with 2 threads, of one with 1 thread, and of two 1-thread processes started together (their
sum), in rounds that alternate the three, median over rounds. Speed only; nothing here changes a model.

    .venv/bin/python benchmarks/train_threads.py --out results/train_threads.json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F

from bf16 import MODELS  # the same students as that benchmark (its sibling script, on sys.path when run as one)
from compress.io import write_json_atomic
from compress.pipeline import machine_info
from compress.train import native_bf16


def steps_per_s(family: str, kwargs: dict, threads: int, steps: int, bf16: bool, out=None) -> float:
    """A fresh model trained ``steps`` SGD steps (after 3 to warm up) with ``threads`` threads, in bf16
    autocast or fp32."""
    from compress.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(family, **kwargs).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rate = steps / (time.perf_counter() - t0)
    if out is not None:
        out.put(rate)
    return rate


def two_at_once(family: str, kwargs: dict, steps: int, bf16: bool) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=steps_per_s, args=(family, kwargs, 1, steps, bf16, q)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [q.get(), q.get()]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/train_threads.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="about how long each measurement trains")
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 autocast where this CPU has native bf16 (as the recipes' bf16: auto), else fp32")
    args = ap.parse_args()
    bf16 = native_bf16(torch.device("cpu")) if args.dtype == "auto" else args.dtype == "bf16"
    rows = []
    for name, family, kwargs in MODELS:
        steps = max(5, round(args.seconds * steps_per_s(family, kwargs, 2, 3, bf16)))  # sized by a quick 2-thread probe
        runs = {"one_process_2_threads": [], "one_process_1_thread": [], "two_processes_1_thread_each": []}
        for _ in range(args.rounds):
            runs["one_process_2_threads"].append(steps_per_s(family, kwargs, 2, steps, bf16))
            runs["one_process_1_thread"].append(steps_per_s(family, kwargs, 1, steps, bf16))
            runs["two_processes_1_thread_each"].append(two_at_once(family, kwargs, steps, bf16))
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append({"model": name, "steps_per_measurement": steps, "steps_per_s_median": med,
                     "steps_per_s_runs": runs,
                     "two_processes_vs_2_threads": med["two_processes_1_thread_each"] / med["one_process_2_threads"],
                     "2_threads_vs_1": med["one_process_2_threads"] / med["one_process_1_thread"]})
        print(name, {k: round(v, 2) for k, v in med.items()},
              f"two 1-thread processes / one 2-thread: {rows[-1]['two_processes_vs_2_threads']:.2f}x", flush=True)
    command = "python benchmarks/train_threads.py --out " + args.out + ("" if args.dtype == "auto" else f" --dtype {args.dtype}")
    write_json_atomic(args.out, {"command": command,
                                 "batch_size": 128, "memory_format": "channels_last",
                                 "dtype": "bf16 autocast" if bf16 else "fp32",
                                 "rounds": args.rounds, "machine": machine_info(), "models": rows})


if __name__ == "__main__":
    main()
