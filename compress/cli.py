"""Command line: argument parsing only. Each command builds a recipe and calls one function."""

from __future__ import annotations

import argparse
import os
import sys

from compress.errors import RecipeError

# The study's storage URL when --storage is not given; how a worker gets it from the one that starts it, as a
# URL may hold a password and any user of the host can read a process's command line.
STORAGE_ENV = "COMPRESS_STORAGE"


def load_recipe(path, overrides):
    from compress.recipe import load_recipe as load  # pydantic/yaml only for the commands that take a recipe

    return load(path, overrides)

EXIT_BAD_INPUT = 2


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of threads, at least 1")
    return int(text)


def _train_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-threads", type=_at_least_one,
                   help="PyTorch threads for training (default: every core; on a shared machine, or several workers "
                        "on one: your share of the cores)")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/fashion_mnist_single.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe field, e.g. --set distill.temperature=6 (repeatable)")


def _cmd_teacher(args) -> int:
    from compress.data import load_dataset
    from compress.teacher import train_teacher

    recipe = load_recipe(args.recipe, args.overrides)
    info = train_teacher(recipe, load_dataset(recipe.data))
    print(f"teacher: val {info['val_accuracy']:.4f} test {info['test_accuracy']:.4f} "
          f"params {info['params']:,} p95 {info['latency']['p95_ms']:.3f} ms -> {recipe.teacher.checkpoint}")
    return 0


def _cmd_inspect(args) -> int:
    import json

    from compress.overview import format_inspection, inspect_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    report = inspect_recipe(recipe)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_inspection(report))
    return 0


def _cmd_run(args) -> int:
    from compress.pipeline import run
    from compress.report import print_summary

    recipe = load_recipe(args.recipe, args.overrides)
    summary = run(recipe)
    print_summary(summary)
    return 0


def _study_recipe(args):
    overrides = list(args.overrides)
    for key, value in (("storage", args.storage), ("artifacts", args.artifacts),
                       ("n_trials", getattr(args, "n_trials", None)), ("timeout_s", getattr(args, "timeout", None))):
        if value is not None:
            overrides.append(f"search.{key}={value}")
    return load_recipe(args.recipe, overrides)


def _search_argv(args) -> list[str]:
    """This ``compress search``'s arguments, for the workers it starts (search.workers)."""
    argv = ["search", args.recipe]
    for o in args.overrides:
        if not o.startswith("search.storage="):  # a URL may hold a password: the workers get it from the environment
            argv += ["--set", o]
    for flag, value in (("--artifacts", args.artifacts),
                        ("--n-trials", getattr(args, "n_trials", None)), ("--timeout", getattr(args, "timeout", None))):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _cmd_search(args, report_only: bool = False) -> int:
    from compress.report import print_study_summary
    from compress.search.run import run_study
    from compress.search.workers import LocalWorkers

    recipe = _study_recipe(args)
    no_report = getattr(args, "no_report", False)
    n = 1 if report_only or no_report else recipe.search.workers
    secret = {STORAGE_ENV: recipe.search.storage} if recipe.search.storage else {}
    with LocalWorkers(_search_argv(args), n, secret) as workers:
        summary = run_study(recipe, report_only=report_only, report=not no_report,
                            workers=workers if n > 1 else None)
    if summary is None:  # another process writes (or wrote) the report
        if no_report:
            print("\nthis worker is done; the worker that started it writes the report")
        elif not report_only:
            print(f"\nthis worker is done; the study's report goes to {recipe.out_path}/ on the machine that writes "
                  "it (`compress report` with the same recipe and --storage writes it here)")
        return 0
    print_study_summary(summary)
    print(f"\nresults: {recipe.out_path}/  (pareto.png, pareto.html, pareto.csv, trials.csv, summary.json)")
    bundle = recipe.out_path / "artifact"
    print(f"\nservable bundle: {bundle}/  (model.onnx, MODEL_CARD.md, manifest.json, samples/, triton/)")
    print(f"verify it:       compress verify {bundle}")
    return 0


def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help="Optuna storage: sqlite:///FILE (default results/<name>/study.db), "
                        "postgresql+psycopg2://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass) or "
                        f"journal:FILE; every worker of a study names the same one (default: ${STORAGE_ENV})")
    p.add_argument("--artifacts", help="Optuna artifact store for the trial models: a folder every worker reaches "
                                       "(default results/<name>/artifacts), s3://BUCKET or gs://BUCKET")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, e.g. 1,8,32; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _cmd_bench(args) -> int:
    from pathlib import Path

    from compress.measure.latency import environment, sweep
    from compress.recipe import LatencyConfig
    from compress.report import bench_table

    models = {}
    for path in [args.model] + ([args.vs] if args.vs else []):
        if not Path(path).is_file():
            raise RecipeError(f"{path}: no such ONNX file")
        name = Path(path).stem if Path(path).stem not in models else str(path)  # two model.onnx files
        models[name] = path
    baseline = list(models)[1] if args.vs else None
    cfg = LatencyConfig(warmup_runs=args.warmup, min_runs=args.min_runs, max_seconds=args.max_seconds,
                        max_runs=max(args.min_runs, 20000))
    rows = sweep(models, cfg, args.batch_sizes, args.threads, args.device)
    env = environment(args.device)
    print(f"{env['cpu']}, {env['cores']} cores, flags {' '.join(env['flags'])}; onnxruntime {env['onnxruntime']}; "
          f"models timed interleaved in one process")
    if args.json:
        from compress.io import write_json_atomic

        write_json_atomic(args.json, {"rows": rows, "environment": env, "baseline": baseline})
    print(bench_table(rows, baseline))
    if baseline:
        print(f"speedup = {baseline} p50 / model p50 at the same batch size and threads")
    return 0


def _cmd_stability(args) -> int:
    from compress.measure.stability import stability

    r = stability(args.teacher, args.artifact, args.processes, args.max_seconds, args.out, args.min_runs)
    print(f"p50 CV teacher {100 * r['p50_cv_teacher']:.2f}%, artifact {100 * r['p50_cv_artifact']:.2f}%, "
          f"speedup CV {100 * r['speedup_cv']:.2f}% over {r['processes']} processes -> {args.out}")
    return 0


def _cmd_verify(args) -> int:
    from compress.handoff import verify

    problems = verify(args.bundle, data_root=args.data, latency_seconds=args.latency_seconds)
    return 1 if problems else 0


def _cmd_predict(args) -> int:
    import json

    from compress.handoff import predict

    if args.no_verify:
        print("WARNING: --no-verify: labelling with a model not checked against its bundle's manifest; it may not "
              "be the model the card describes", file=sys.stderr)
    results = predict(args.bundle, args.inputs, check=not args.no_verify)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{r['input']}: {r['label']}  (" + ", ".join(f"{k} {v:.3f}" for k, v in top) + ")")
    return 0


def _measure_parsers(sub) -> None:
    """``bench`` and ``stability``: the latency protocol on ONNX files."""
    p = sub.add_parser("bench", help="measure ONNX models with the product's latency protocol")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--vs", help="a second ONNX model, timed interleaved with the first; prints the ratio")
    p.add_argument("--batch-sizes", type=_ints, default=[1], help="comma-separated, e.g. 1,8,32 (default 1)")
    p.add_argument("--threads", type=_ints, default=[1], help="comma-separated intra-op threads (default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--min-runs", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=5.0, help="time cap per model and setting")
    p.add_argument("--json", help="also write the rows and the environment to this JSON file")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("stability", help="measure a teacher/artifact pair in N separate processes; CV of p50 and ratio")
    p.add_argument("teacher", help="the slower (reference) ONNX model")
    p.add_argument("artifact", help="the compressed ONNX model")
    p.add_argument("--processes", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=5.0)
    p.add_argument("--min-runs", type=int, default=1000, help="timed runs per model and process, at least")
    p.add_argument("--out", default="results/latency_stability.json")
    p.set_defaults(func=_cmd_stability)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="describe the recipe's data and teacher; does the teacher meet the service level?")
    _recipe_args(p)
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser("teacher", help="train the recipe's teacher; writes checkpoint, ONNX and teacher.json")
    _recipe_args(p)
    _train_threads_arg(p)
    p.set_defaults(func=_cmd_teacher)
    p = sub.add_parser("run", help="one compression run: distill, prune, quantize, export, measure")
    _recipe_args(p)
    _train_threads_arg(p)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("search", help="the main job: Optuna search, Pareto front, baselines, artifact (resumable)")
    _recipe_args(p)
    _storage_args(p)
    p.add_argument("--n-trials", type=int, help="the study's complete + pruned trials to reach, all workers together "
                                                "(resumed trials count)")
    p.add_argument("--timeout", type=float, help="the study's seconds of trials after which no new trial starts")
    p.add_argument("--no-report", action="store_true", help="run trials only and leave the report to another worker "
                                                            "(the workers that search.workers starts)")
    _train_threads_arg(p)
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("report", help="write the study's report and bundle from its storage (once; again when rerun): "
                                      "final measurement, baselines, Pareto front, artifact")
    _recipe_args(p)
    _storage_args(p)
    p.set_defaults(func=lambda a: _cmd_search(a, report_only=True))
    _measure_parsers(sub)
    p = sub.add_parser("verify", help="check an artifact bundle: hashes, manifest, sample outputs, latency here, "
                                      "test accuracy")
    p.add_argument("bundle", help="the artifact folder, e.g. results/fashion_mnist/artifact")
    p.add_argument("--data", help="the test split to re-check the accuracy on: an .npz of raw inputs x and labels y "
                                  "(a split too large to travel in the bundle), or for Fashion-MNIST bundles a folder "
                                  "with the t10k IDX files (default: .data/ or Debian's package)")
    p.add_argument("--latency-seconds", type=float, default=3.0)
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("predict", help="label inputs with an artifact bundle: image files of any size and mode, "
                                       ".npy arrays, or .csv rows of features")
    p.add_argument("bundle")
    p.add_argument("inputs", nargs="+", help="image files (PNG, JPEG, ...) or .npy for image models; .npy or .csv "
                                             "(one sample per row) for feature-vector models")
    p.add_argument("--json", action="store_true", help="print labels and all probabilities as JSON")
    p.add_argument("--no-verify", action="store_true", help="label even when the model is not the one the manifest "
                                                            "lists (a warning says so)")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from compress.errors import BundleError, CompressError, ParityError

    if getattr(args, "train_threads", None):
        import torch

        torch.set_num_threads(args.train_threads)
    try:
        return args.func(args)
    except ParityError as err:
        print(f"error: parity check failed, nothing was written to results/: {err}", file=sys.stderr)
        return 1
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (RecipeError, CompressError) as err:  # StorageError included
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; nothing partial was left in results/ (outputs are written at the end, atomically)",
              file=sys.stderr)
        return 130
