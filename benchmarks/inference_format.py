"""Evaluation throughput on this CPU: why ``train.iter_logits`` runs images in channels_last, and why the
teacher's soft targets are computed in bf16 autocast where it is native.

Forward passes (no gradients, eval mode, 2 threads unless ``--threads``) of the default study's teacher and
kinds of student over batches of Fashion-MNIST-shaped images: fp32 contiguous (what evaluation did before),
fp32 channels_last (what it does now), and, for the teacher, bf16 autocast in channels_last (its cached
logits, where ``native_bf16``). Settings alternate within each round after a warm-up pass; samples per
second, median of the rounds. Speed only: ``max_abs_logit_diff`` says how far each setting's logits are
from fp32 contiguous on the same batch.

    .venv/bin/python benchmarks/inference_format.py --out results/inference_format.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from compress.io import write_json_atomic
from compress.models import create_model
from compress.pipeline import machine_info
from compress.train import native_bf16

TEACHER = {"widths": [64, 96, 192, 256], "strides": [1, 2, 2, 2]}
MODELS = [("teacher", "resnet_small", TEACHER, 500),  # the cached logits' batch
          ("teacher pruned 0.55 (24-40-80-112)", "resnet_small", {"widths": [24, 40, 80, 112], "strides": [1, 2, 2, 2]}, 1000),
          ("teacher pruned 0.65 (16-32-64-88)", "resnet_small", {"widths": [16, 32, 64, 88], "strides": [1, 2, 2, 2]}, 1000),
          ("cnn 12 wide 2 deep", "cnn", {"width": 12, "depth": 2}, 1000),
          ("cnn 8 wide 1 deep", "cnn", {"width": 8, "depth": 1}, 1000)]


@torch.no_grad()
def _rate(model, x, fmt, bf16: bool, passes: int) -> tuple[float, torch.Tensor]:
    model.to(memory_format=fmt)
    xx = x.contiguous(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(xx).float()  # warm-up
        t0 = time.perf_counter()
        for _ in range(passes):
            model(xx)
    return passes * len(x) / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/inference_format.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=4, help="timed batches per setting and round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native = native_bf16(torch.device("cpu"))
    rows = []
    for label, family, kwargs, batch in MODELS:
        torch.manual_seed(0)
        model = create_model(family, **kwargs).eval()
        x = torch.randn(batch, 1, 28, 28)
        settings = {"fp32_contiguous": (torch.contiguous_format, False), "fp32_channels_last": (torch.channels_last, False)}
        if label == "teacher" and native:
            settings["bf16_channels_last"] = (torch.channels_last, True)
        rates: dict[str, list[float]] = {k: [] for k in settings}
        outs = {}
        for _ in range(args.rounds):
            for name, (fmt, bf16) in settings.items():
                r, outs[name] = _rate(model, x, fmt, bf16, args.passes)
                rates[name].append(r)
        med = {k: statistics.median(v) for k, v in rates.items()}
        rows.append({"model": label, "batch": batch, "samples_per_s_median": med, "samples_per_s_runs": rates,
                     "speedup_vs_fp32_contiguous": {k: v / med["fp32_contiguous"] for k, v in med.items()},
                     "max_abs_logit_diff": {k: float((o - outs["fp32_contiguous"]).abs().max()) for k, o in outs.items()}})
        print(label, {k: f"{v:.0f}/s" for k, v in med.items()}, flush=True)
    write_json_atomic(args.out, {"command": f"python benchmarks/inference_format.py --out {args.out}",
                                 "threads": args.threads, "rounds": args.rounds, "passes": args.passes,
                                 "native_bf16": native, "machine": machine_info(), "models": rows})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
