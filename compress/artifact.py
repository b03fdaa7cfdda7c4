"""The handoff bundle (``results/<study>/artifact/``), and the torch-free ``verify`` and ``predict``.

A serving team needs nothing but this folder: the ONNX model (its key facts also in ONNX metadata),
``manifest.json`` for machines, ``MODEL_CARD.md`` for people, sample inputs with the outputs the model
gave, and a Triton model-repository layout. ``manifest.json`` lists the sha256 of every other file.

This module imports neither torch nor the training code: ``compress verify`` and ``compress predict``
run where only onnxruntime and numpy are installed.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from compress.errors import BundleError
from compress.io import publish, sha256_file, staging_dir, write_json_atomic, write_text_atomic

FORMAT = "compress-bundle/1"
SAMPLE_TOLERANCE = 1e-4  # same model, same runtime family: outputs agree far tighter than this
SLOWER_WARNING = 1.5  # re-measured p50 this many times the card's figure gets a warning


# ---- writing (called by the study; inputs are plain records) ----

def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ["compress", "torch", "torchvision", "onnx", "onnxruntime", "optuna", "torch-pruning", "numpy"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def triton_config(name: str, max_batch_size: int, preferred: list[int], labels: list[str]) -> str:
    pref = ", ".join(str(b) for b in preferred)
    batching = (f"dynamic_batching {{\n  preferred_batch_size: [ {pref} ]\n  max_queue_delay_microseconds: 100\n}}\n"
                if preferred else "dynamic_batching { max_queue_delay_microseconds: 100 }\n")
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            'input [\n  {\n    name: "input"\n    data_type: TYPE_FP32\n    format: FORMAT_NCHW\n'
            '    dims: [ 1, 28, 28 ]\n  }\n]\n'
            f'output [\n  {{\n    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ {len(labels)} ]\n  }}\n]\n'
            + batching + 'instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n')


def preferred_batch_sizes(sweep_rows: list[dict], threads: int = 1) -> list[int]:
    """Batch sizes > 1 whose throughput is within 80% of the best in the sweep, at the given threads."""
    rows = [r for r in sweep_rows if r["threads"] == threads and r["batch_size"] > 1]
    if not rows:
        return []
    best = max(r["throughput_sps"] for r in rows)
    return sorted({r["batch_size"] for r in rows if r["throughput_sps"] >= 0.8 * best})


def _set_metadata(src: Path, dst: Path, facts: dict) -> None:
    import onnx

    model = onnx.load(str(src))
    del model.metadata_props[:]
    for k, v in facts.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    model.doc_string = "compress artifact; see MODEL_CARD.md and manifest.json beside this file"
    onnx.save(model, str(dst))


def write_bundle(folder: Path, model_src: Path, manifest: dict, samples: tuple[np.ndarray, np.ndarray],
                 sample_images_u8: np.ndarray, sweep_rows: list[dict]) -> Path:
    """Write the bundle into ``folder`` via a staging folder; returns ``folder``.

    ``manifest`` holds everything known about the model (see ``_card``); this adds files and hashes.
    """
    staging = staging_dir(folder)
    (staging / "samples").mkdir()
    facts = {"compress.name": manifest["name"], "compress.labels": manifest["labels"],
             "compress.preprocessing": manifest["preprocessing"], "compress.input": manifest["input"],
             "compress.output": manifest["output"], "compress.val_accuracy": f"{manifest['metrics']['val_accuracy']:.4f}",
             "compress.test_accuracy": f"{manifest['metrics']['test_accuracy']:.4f}",
             "compress.latency_p95_ms": f"{manifest['latency']['p95_ms']:.4f}",
             "compress.teacher_sha256": manifest["lineage"]["teacher_sha256"]}
    _set_metadata(model_src, staging / "model.onnx", facts)
    x, y = samples
    np.save(staging / "samples" / "inputs.npy", x)
    np.save(staging / "samples" / "outputs.npy", y)
    from PIL import Image

    for i, img in enumerate(sample_images_u8):
        Image.fromarray(img, mode="L").save(staging / "samples" / f"image_{i}.png")
    name = manifest["name"].replace(".", "_")
    tdir = staging / "triton" / name / "1"
    tdir.mkdir(parents=True)
    shutil.copyfile(staging / "model.onnx", tdir / "model.onnx")
    pref = preferred_batch_sizes(sweep_rows, threads=1)
    max_batch = max([128] + pref)
    write_text_atomic(staging / "triton" / name / "config.pbtxt", triton_config(name, max_batch, pref, manifest["labels"]))
    manifest = {**manifest, "triton": {"model_name": name, "max_batch_size": max_batch, "preferred_batch_sizes": pref},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "packages": _versions()}
    write_text_atomic(staging / "MODEL_CARD.md", _card(manifest))
    manifest["files"] = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*"))
                         if p.is_file() and p.name != "manifest.json"}
    write_json_atomic(staging / "manifest.json", manifest)
    publish(staging, folder)
    return folder


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _card(m: dict) -> str:
    met, lat, slo = m["metrics"], m["latency"], m["service_level"]
    pre = m["preprocessing"]
    lines = [
        f"# Model card: {m['name']}", "",
        f"{m['task']} over {len(m['labels'])} classes, compressed from a teacher by compress "
        f"({m['compression']}).", "",
        "## Use it", "",
        f"- File: `model.onnx` ({m['format_note']}); Triton layout under `triton/`.",
        f"- Input `{m['input']['name']}`: {m['input']['dtype']}, shape {m['input']['shape']} ({m['input']['layout']}).",
        f"- Preprocessing: {pre['description']}: `x = (pixel / 255 - {pre['mean']}) / {pre['std']}`.",
        f"- Output `{m['output']['name']}`: shape {m['output']['shape']}, {m['output']['meaning']}.",
        "- Labels (output index order): " + ", ".join(f"{i} {n}" for i, n in enumerate(m["labels"])), "",
        "Check a copy before serving it: `compress verify DIR` (needs only onnxruntime and numpy). "
        "Try it: `compress predict DIR samples/image_0.png`.", "",
        "## Accuracy", "",
        "| | validation | test |", "| --- | ---: | ---: |",
        f"| this model | {_pct(met['val_accuracy'])} | {_pct(met['test_accuracy'])} |",
        f"| teacher | {_pct(met['teacher_val_accuracy'])} | {_pct(met['teacher_test_accuracy'])} |", "",
        f"Test accuracy is on {met['test_size']:,} of the official Fashion-MNIST test images, which no choice "
        "in the search ever saw.", "",
        "## Latency and throughput", "",
        f"Measured with ONNX Runtime {m['machine'].get('onnxruntime')} on {m['machine'].get('cpu')} "
        f"({m['machine'].get('cores')} cores, {' '.join(m['machine'].get('flags', []))}), batch {lat['batch_size']}, "
        f"{lat['threads']} thread(s), {lat['n_runs']} timed runs after warm-up, the model alone in its process (as a serving replica runs it):", "",
        "| p50 | p90 | p95 | p99 | mean | throughput |", "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {lat['p50_ms']:.3f} ms | {lat['p90_ms']:.3f} ms | {lat['p95_ms']:.3f} ms | {lat['p99_ms']:.3f} ms | "
        f"{lat['mean_ms']:.3f} ms | {lat['throughput_sps']:,.0f} samples/s |", "",
        f"95% confidence intervals (order statistics): p50 [{lat['p50_ci95_ms'][0]:.3f}, {lat['p50_ci95_ms'][1]:.3f}] "
        f"ms, p95 [{lat['p95_ci95_ms'][0]:.3f}, {lat['p95_ci95_ms'][1]:.3f}] ms.", "",
        f"Teacher on the same machine and run: p50 {m['teacher_latency']['p50_ms']:.3f} ms, p95 "
        f"{m['teacher_latency']['p95_ms']:.3f} ms ({m['speedup_p50']:.1f}x faster at p50, timed interleaved with "
        "this model in one process).", "",
        "## Service level", "",
        f"Requirement: p95 <= {slo.get('p95_ms')} ms per request; accuracy drop <= {slo.get('max_accuracy_drop_pp')} pp. "
        f"**{'Met' if slo.get('met') else 'NOT met'}.**", ""]
    cap, cur = m.get("capacity"), m.get("currency", "")
    if cap:
        lines += ["## Capacity and cost", "",
                  f"Best throughput setting: batch {cap['best_batch_size']}, {cap['best_threads']} thread(s), "
                  f"{cap['best_throughput_sps']:,.0f} samples/s ({cap['per_core_sps']:,.0f} per core)."]
        if "batch" in cap:
            b = cap["batch"]
            lines.append(f"Batch requirement: {b['cores']} core(s), {b['core_hours']:.1f} core-hours, "
                         f"{b['cost_per_run']:.2f} {cur} per run, {b['cost_per_million']:.4f} {cur} per million predictions.")
        o = cap["online"]
        lines += [f"Online: {o['replicas']} replica(s), {o['cores']} core(s), {o['cost_per_hour']:.3f} {cur} per hour.", ""]
    lines += ["## How it was made", "",
              f"Trial {m['trial']['number']} of study `{m['name']}`; parameters: "
              + ", ".join(f"`{k}={v}`" for k, v in m["trial"]["params"].items()) + ".",
              "The full resolved recipe is in `manifest.json` under `recipe`.", "",
              "Lineage: " + ", ".join(f"{k} `{v}`" for k, v in m["lineage"].items()) + ".", "",
              "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".", "",
              "## Files", "", "sha256 of every file is in `manifest.json` (`files`); `compress verify` checks them.", ""]
    return "\n".join(lines)


# ---- reading: verify and predict (no torch) ----

def load_manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{folder}: no manifest.json; is this an artifact folder (results/<study>/artifact/)?")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    if m.get("format") != FORMAT:
        raise BundleError(f"{path}: format {m.get('format')!r}, this compress reads {FORMAT!r}")
    return m


def _session(path: Path, threads: int = 1):
    from compress.latency import make_session

    return make_session(path, threads)


def _read_idx(path: Path) -> np.ndarray:
    # IDX is four header fields and raw bytes; a few lines here spare verify a torch/torchvision install.
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_test_set(root: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    for base in [p for p in [root, Path(".data/FashionMNIST/raw"), Path("/usr/share/datasets/fashion-mnist")] if p]:
        for suffix in ("", ".gz"):
            img, lab = base / f"t10k-images-idx3-ubyte{suffix}", base / f"t10k-labels-idx1-ubyte{suffix}"
            if img.is_file() and lab.is_file():
                return _read_idx(img), _read_idx(lab)
    return None


def preprocess(images_u8: np.ndarray, m: dict) -> np.ndarray:
    pre = m["preprocessing"]
    x = (images_u8.astype(np.float32) / 255.0 - pre["mean"]) / pre["std"]
    return x[:, None, :, :].astype(np.float32)


def verify(folder: str | Path, *, data_root: str | None = None, latency_seconds: float = 3.0, out=sys.stdout) -> list[str]:
    """Check a bundle; returns the list of problems (empty: verified). Prints what it checks."""
    folder = Path(folder)
    m = load_manifest(folder)
    problems: list[str] = []

    def say(msg: str) -> None:
        print(msg, file=out)

    for rel, digest in m["files"].items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (file altered or corrupted)")
    say(f"files: {len(m['files'])} checked, {sum('sha256' in p or 'missing' in p for p in problems)} bad")
    if any(p.startswith("model.onnx") for p in problems):
        say("\n".join(f"  FAIL {p}" for p in problems))
        return problems
    sess = _session(folder / "model.onnx")
    x = np.load(folder / "samples" / "inputs.npy")
    want = np.load(folder / "samples" / "outputs.npy")
    got = sess.run(None, {m["input"]["name"]: x})[0]
    diff = float(np.abs(got - want).max())
    if diff > SAMPLE_TOLERANCE or (got.argmax(1) != want.argmax(1)).any():
        problems.append(f"samples: outputs differ from the recorded ones (max abs diff {diff:.2e} > {SAMPLE_TOLERANCE})")
    say(f"samples: {len(x)} inputs, max abs output difference {diff:.2e} (tolerance {SAMPLE_TOLERANCE})")
    from types import SimpleNamespace

    from compress.latency import measure

    lat = m["latency"]
    protocol = SimpleNamespace(warmup_runs=50, min_runs=200, max_runs=5000, max_seconds=latency_seconds)
    here = measure(folder / "model.onnx", protocol, lat["batch_size"], lat["threads"])
    ratio = here.p50_ms / lat["p50_ms"]
    say(f"latency here: p50 {here.p50_ms:.3f} ms, p95 {here.p95_ms:.3f} ms   card: p50 {lat['p50_ms']:.3f} ms, "
        f"p95 {lat['p95_ms']:.3f} ms   (batch {lat['batch_size']}, {lat['threads']} thread(s))")
    if ratio > SLOWER_WARNING:
        say(f"  WARNING: {ratio:.1f}x slower than on the card's machine ({m['machine'].get('cpu')}); "
            "the service level may not hold here")
    test = _find_test_set(Path(data_root) if data_root else None)
    if test is None:
        say("test accuracy: dataset not found here, skipped (pass --data DIR with the t10k IDX files)")
    else:
        images, labels = test
        xs = preprocess(images, m)
        logits = np.concatenate([sess.run(None, {m["input"]["name"]: xs[i : i + 500]})[0] for i in range(0, len(xs), 500)])
        acc = float((logits.argmax(1) == labels).mean())
        card = m["metrics"]["test_accuracy"]
        say(f"test accuracy here: {100 * acc:.2f}% on {len(labels)} images   card: {100 * card:.2f}%")
        if abs(acc - card) > 0.001 and len(labels) == m["metrics"].get("test_size", len(labels)):
            problems.append(f"test accuracy {acc:.4f} differs from the card's {card:.4f}")
    say("VERIFIED" if not problems else "\n".join(f"  FAIL {p}" for p in problems))
    return problems


def load_inputs(paths: list[str], m: dict) -> tuple[np.ndarray, list[str]]:
    """Images (PNG/JPEG, 28x28 grayscale) or .npy arrays ([N,]28x28 uint8 pixels, or [N,]1x28x28 float32
    already preprocessed) -> model inputs and a name per input."""
    shape = tuple(int(d) for d in m["input"]["shape"][1:])  # (1, 28, 28)
    batches, names = [], []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BundleError(f"{p}: no such file")
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype == np.uint8 and arr.shape[-2:] == shape[1:] and arr.ndim in (2, 3):
                x = preprocess(arr.reshape(-1, *shape[1:]), m)
            elif arr.dtype == np.float32 and arr.shape[-3:] == shape and arr.ndim in (3, 4):
                x = arr.reshape(-1, *shape)
            else:
                raise BundleError(
                    f"{p}: array of shape {arr.shape} and dtype {arr.dtype} does not fit; expected uint8 pixels "
                    f"shaped {shape[1:]} or (N, {shape[1]}, {shape[2]}), or preprocessed float32 shaped {shape} or "
                    f"(N, {', '.join(map(str, shape))})")
            batches.append(x)
            names += [f"{path.name}[{i}]" for i in range(len(x))] if len(x) > 1 else [path.name]
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            try:
                from PIL import Image
            except ImportError:
                raise BundleError("reading images needs Pillow (pip install pillow); or pass .npy arrays") from None
            with Image.open(path) as img:
                bands = len(img.getbands())
                if bands != shape[0]:
                    raise BundleError(f"{p}: image has {bands} channel(s) ({img.mode}); the model takes {shape[0]} "
                                      "(grayscale). Convert it first, e.g. Image.open(p).convert('L')")
                if img.size != (shape[2], shape[1]):
                    raise BundleError(f"{p}: image is {img.size[0]}x{img.size[1]} pixels; the model takes "
                                      f"{shape[2]}x{shape[1]}. Resize it first")
                batches.append(preprocess(np.asarray(img, dtype=np.uint8)[None], m))
            names.append(path.name)
        else:
            raise BundleError(f"{p}: unsupported input type {path.suffix!r}; use PNG/JPEG images or .npy arrays")
    return np.concatenate(batches).astype(np.float32), names


def predict(folder: str | Path, inputs: list[str]) -> list[dict]:
    folder = Path(folder)
    m = load_manifest(folder)
    x, names = load_inputs(inputs, m)
    logits = _session(folder / "model.onnx").run(None, {m["input"]["name"]: x})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    return [{"input": n, "label": m["labels"][int(p.argmax())], "index": int(p.argmax()),
             "probabilities": {lab: round(float(v), 6) for lab, v in zip(m["labels"], p)}}
            for n, p in zip(names, probs)]
