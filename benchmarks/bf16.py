"""What bf16 autocast and the memory format do to a training step on this machine: why ``bf16: auto`` is the
default, and why fp32 training on a CPU picks its memory format per model (``train.training_format``).

One SGD step (forward, loss, backward, update) of the default study's kinds of student, on a batch of
128 Fashion-MNIST-shaped images: fp32 contiguous, fp32 channels_last, and bf16 autocast with channels_last
(what ``train_`` does with bf16 on), timed in the same process, alternating, after a warm-up; median of the
per-step times. Where the CPU has no native bf16 (no AVX-512) autocast emulates it; ``native_bf16`` says
which case this machine is. ``fp32_format_chosen`` is what ``training_format`` picks for that model here.

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
from compress.train import native_bf16, training_format

# The 12-wide 2-deep CNN of the default front, and the default teacher pruned by 0.55 with round_to 8.
MODELS = [("cnn 12 wide 2 deep", "cnn", {"width": 12, "depth": 2}),
          ("teacher pruned 0.55 (24-40-80-112)", "resnet_small", {"widths": [24, 40, 80, 112], "strides": [1, 2, 2, 2]}),
          ("teacher pruned 0.5 (32-48-96-128)", "resnet_small", {"widths": [32, 48, 96, 128], "strides": [1, 2, 2, 2]})]
# (memory format, bf16 autocast)
SETTINGS = {"fp32": (torch.contiguous_format, False), "fp32_channels_last": (torch.channels_last, False),
            "bf16": (torch.channels_last, True)}


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
        for name, (fmt, bf16) in SETTINGS.items():
            model = create_model(family, **kwargs).to(memory_format=fmt).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn(args.batch_size, 1, 28, 28).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (args.batch_size,))
            for _ in range(3):
                _step(model, opt, x, y, bf16)
            setups[name] = (model, opt, x, y, bf16)
        times = {name: [] for name in SETTINGS}
        for _ in range(args.steps):  # alternating: a drifting machine slows all alike
            for name in SETTINGS:
                times[name].append(_step(*setups[name]))
        med = {name: statistics.median(t) for name, t in times.items()}
        chosen = training_format(create_model(family, **kwargs), (args.batch_size, 1, 28, 28), torch.device("cpu"))
        rows.append({"model": label, **{f"{name}_step_s": round(v, 4) for name, v in med.items()},
                     "bf16_over_fp32": round(med["bf16"] / med["fp32"], 2),
                     "fp32_contiguous_over_channels_last": round(med["fp32"] / med["fp32_channels_last"], 2),
                     "fp32_format_chosen": "channels_last" if chosen == torch.channels_last else "contiguous"})
        print(f"{label}: fp32 {med['fp32']:.3f} s, fp32 channels_last {med['fp32_channels_last']:.3f} s, bf16 autocast "
              f"{med['bf16']:.3f} s a step of {args.batch_size}; fp32 training picks {rows[-1]['fp32_format_chosen']}")
    write_json_atomic(args.out, {"native_bf16": native_bf16(torch.device("cpu")), "threads": args.threads,
                                 "batch_size": args.batch_size, "steps": args.steps, "models": rows,
                                 "machine": machine_info("cpu")})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
