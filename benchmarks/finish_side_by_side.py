"""The models trained after the default study's search, one after another or side by side: how long each way?

After its search the default study trains its baselines (the chosen architecture without KD, the teacher
pruned by half and fine-tuned, the teacher in int8) and, when halving kept the chosen candidate short, the
rest of its full schedule. ``search.finish_processes`` trains them side by side, each in a process of its own
with the threads shared out. This builds the three baselines of the committed study (its artifact's recipe,
``results/fashion_mnist/artifact/manifest.json``) exactly as its finisher does (``baselines.build_all``), with
1 process (one after another, all threads) and with 2 (1 thread each), in the order 1, 2, 2, 1 so that a
shared machine's drift cancels, each into a fresh folder and cache: wall seconds, and each model's test
accuracy (1 and 2 threads do not make the same bits, so the accuracies may differ a little).

    .venv/bin/python benchmarks/finish_side_by_side.py --out results/finish_side_by_side.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from compress.search import baselines as bl
from compress.export import onnx_accuracy
from compress.io import read_json, write_json_atomic
from compress.pipeline import machine_info, prepare
from compress.recipe import load_recipe, recipe_from_dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/finish_side_by_side.json")
    ap.add_argument("--study", default="results/fashion_mnist", help="a finished study of recipes/fashion_mnist.yaml")
    args = ap.parse_args()
    recipe = load_recipe("recipes/fashion_mnist.yaml")
    chosen = recipe_from_dict(read_json(Path(args.study) / "artifact" / "manifest.json")["recipe"])
    data, teacher, tinfo = prepare(recipe)
    kept = Path(args.study) / "baselines" / "student_no_kd" / "stage.json"  # where the study ran here: the same model
    if kept.is_file():
        assert bl._digest(bl.student_without_kd(chosen, Path(".")).keys(data, tinfo)[0]) == read_json(kept)["key"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="finish-") as tmp:
        for i, processes in enumerate([1, 2, 2, 1]):
            root = Path(tmp) / f"run{i}"
            bl.CACHE_DIR = root / "cache"  # nothing kept from the run before
            builds = [bl.student_without_kd(chosen, root), bl.teacher_pruned(recipe, root),
                      bl.teacher_int8(recipe, root)]  # the study's order: the longest first
            started = time.perf_counter()
            made = bl.build_all(builds, data, teacher, tinfo, processes)
            seconds = time.perf_counter() - started
            runs.append({"processes": processes, "seconds": round(seconds, 1),
                         "test_accuracy": {k: onnx_accuracy(s.onnx, data.test) for k, s in made.items()}})
            print(f"run {i + 1}/4: {processes} process(es): {seconds:.0f} s", flush=True)
    med = {n: statistics.median(r["seconds"] for r in runs if r["processes"] == n) for n in (1, 2)}
    write_json_atomic(args.out, {
        "command": f"python benchmarks/finish_side_by_side.py --out {args.out}",
        "study": args.study, "builds": [b.name for b in builds], "order": [r["processes"] for r in runs],
        "runs": runs, "seconds_median": {f"{n}_process{'es' if n > 1 else ''}": s for n, s in med.items()},
        "one_after_another_over_side_by_side": med[1] / med[2], "machine": machine_info()})
    print(f"one after another {med[1]:.0f} s, side by side {med[2]:.0f} s: {med[1] / med[2]:.2f}x")


if __name__ == "__main__":
    main()
