"""Which small student reaches the accuracy the default front lacks (issue 13: >= 92.5% test at <= 5 MMACs)?

Each candidate is a registered family with its kwargs, distilled from the default teacher with the default
recipe's distill settings (cached teacher logits, no augmentation) for the given epochs, fp32, evaluated on the
full validation and test splits. MACs and accuracy do not depend on the machine; the seconds do.

    .venv/bin/python benchmarks/small_students.py --out results/small_students.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from compress.io import write_json_atomic
from compress.models import build_model
from compress.pipeline import machine_info, prepare
from compress.recipe import load_recipe, with_values
from compress.teacher import model_size
from compress.techniques.distill import make_loss, teacher_logits_for
from compress.train import accuracy, predict_logits, train_
from compress.measure.verdicts import accuracy_ci95

# family, kwargs, epochs. Today's front: cnn 16 wide, 1 deep, pruned (0.6 MMACs, 87.6% test), then the pruned
# teacher (11.6 MMACs, 94%): nothing in between. Two conv layers per stage, distilled twice as long, fill it.
CANDIDATES = [("cnn", {"width": 12, "depth": 2}, 10), ("cnn", {"width": 8, "depth": 2}, 10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/fashion_mnist.yaml")
    ap.add_argument("--out", default="results/small_students.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    data, teacher, tinfo = prepare(recipe)
    rows = []
    for family, kwargs, epochs in CANDIDATES:
        # bf16 off: on CPUs without AVX-512 BF16 it is emulated and slower; accuracy is the same either way.
        r = with_values(recipe, {"distill.train.epochs": epochs, "distill.train.bf16": False})
        logits = teacher_logits_for([(r.distill, r.distill.train)], teacher, data, tinfo["sha256"])
        torch.manual_seed(recipe.seed)
        model = build_model(family, data.spec, kwargs)
        macs, params = model_size(model, data.spec)
        t0 = time.time()
        curve = train_(model, data.train, r.distill.train, loss_fn=make_loss(r.distill, r.distill.train, teacher, logits),
                       val=data.val, seed=recipe.seed, desc=f"{family} {kwargs}")
        right = (predict_logits(model, data.test).argmax(1) == data.test.labels).numpy()
        rows.append({"family": family, "kwargs": kwargs, "epochs": epochs, "macs": macs, "params": params,
                     "val_accuracy_per_epoch": curve, "val_accuracy": curve[-1], "test_accuracy": float(right.mean()),
                     "test_accuracy_ci95": accuracy_ci95(int(right.sum()), right.size),
                     "train_seconds": round(time.time() - t0, 1), "train_threads": args.threads})
        print(json.dumps(rows[-1]), flush=True)
        write_json_atomic(args.out, {"recipe": args.recipe, "distill": {"temperature": r.distill.temperature,
                                                                        "alpha": r.distill.alpha,
                                                                        "train": r.distill.train.model_dump()},
                                     "teacher_test_accuracy": accuracy(teacher, data.test),
                                     "machine": machine_info(), "students": rows})


if __name__ == "__main__":
    main()
