"""What bf16 autocast does to a training step on this machine: why ``bf16: auto`` is the default.

One SGD step (forward, loss, backward, update) of the default study's two kinds of student, on a batch of
128 Fashion-MNIST-shaped images, fp32 against bf16 autocast with channels_last (what ``train_`` does with
bf16 on), timed in the same process, alternating, after a warm-up; median of the per-step times. Where the
CPU has no native bf16 (no AVX-512) autocast emulates it; ``native_bf16`` says which case this machine is.

    .venv/bin/python benchmarks/bf16.py --out results/bf16_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from compress.io import write_json_atomic
from compress.models import create_model
from compress.pipeline import machine_info
from compress.train import native_bf16

# The 12-wide 2-deep CNN of the default front, and the default teacher pruned by 0.55 with round_to 8.
MODELS = [("cnn 12 wide 2 deep", "cnn", {"width": 12, "depth": 2}),
          ("teacher pruned 0.55 (24-40-80-112)", "resnet_small", {"widths": [24, 40, 80, 112], "strides": [1, 2, 2, 2]})]


def _step(model, opt, x, y, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bf16_cpu.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for label, family, kwargs in MODELS:
        setups = {}
        for bf16 in (False, True):
            fmt = torch.channels_last if bf16 else torch.contiguous_format
            model = create_model(family, **kwargs).to(memory_format=fmt).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn(args.batch_size, 1, 28, 28).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (args.batch_size,))
            for _ in range(3):
                _step(model, opt, x, y, bf16)
            setups[bf16] = (model, opt, x, y)
        times = {False: [], True: []}
        for _ in range(args.steps):  # alternating: a drifting machine slows both alike
            for bf16 in (False, True):
                times[bf16].append(_step(*setups[bf16], bf16))
        fp32, bf = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"model": label, "fp32_step_s": round(fp32, 4), "bf16_step_s": round(bf, 4),
                     "bf16_over_fp32": round(bf / fp32, 2)})
        print(f"{label}: fp32 {fp32:.3f} s, bf16 autocast {bf:.3f} s a step of {args.batch_size} ({bf / fp32:.1f}x)")
    write_json_atomic(args.out, {"native_bf16": native_bf16(torch.device("cpu")), "threads": args.threads,
                                 "batch_size": args.batch_size, "steps": args.steps, "models": rows,
                                 "machine": machine_info("cpu")})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
