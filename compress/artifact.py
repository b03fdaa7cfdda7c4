"""The handoff bundle (``results/<study>/artifact/``), and the torch-free ``verify`` and ``predict``.

A serving team needs nothing but this folder: the ONNX model (its key facts also in ONNX metadata),
``manifest.json`` for machines, ``MODEL_CARD.md`` for people, sample inputs with the outputs the model
gave, the test split when it is small enough to travel, and a Triton model-repository layout.
``manifest.json`` lists the sha256 of every other file; the model's metadata holds the sha256 of the
manifest itself (``compress.manifest_sha256``), so an edit to either is caught.

Everything about the input (shape, layout, preprocessing, labels) comes from the ``InputSpec`` recorded
under ``preprocessing``; a ``compress-bundle/1`` bundle (the Fashion-MNIST demo's, before the spec existed)
is read as the Fashion-MNIST spec.

This module imports neither torch nor the training code: ``compress verify`` and ``compress predict``
run where only onnxruntime and numpy are installed (Pillow too, for predict on image files).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from compress.errors import BundleError
from compress.io import publish, sha256_file, staging_dir, write_json_atomic, write_text_atomic
from compress.spec import INPUT_NAME, OUTPUT_NAME, InputSpec

FORMAT = "compress-bundle/2"
FORMAT_V1 = "compress-bundle/1"  # Fashion-MNIST only, no spec record, manifest not covered by a digest
READABLE = (FORMAT_V1, FORMAT)
N_SAMPLES = 8  # sample inputs shipped with their outputs: enough to catch a wrong runtime, few enough to read
# The raw test split travels in the bundle up to this size, so verify can recompute the test accuracy
# anywhere; CIFAR-10's 31 MB would double a small model's bundle, MNIST-sized splits (8 MB) travel.
TEST_SPLIT_MAX_BYTES = 20_000_000
# Fashion-MNIST's test set is in Debian's dataset-fashion-mnist (and torchvision's download), where verify
# finds it; it is never copied into a bundle, because bundles are committed to results/.
IDX_SOURCE = "Fashion-MNIST"
SAMPLE_TOLERANCE = 1e-4  # same model, same runtime family: outputs agree far tighter than this
ACCURACY_TOLERANCE = 0.001  # or one sample, on small test splits: one borderline flip is not a broken model
SLOWER_WARNING = 1.5  # re-measured p50 this many times the card's figure gets a warning
EDITED = "manifest.json: edited after the bundle was written"


# ---- the manifest's description of the input, from the spec ----

def spec_fields(spec: InputSpec) -> dict:
    """``task``, ``labels``, ``input``, ``output`` and ``preprocessing`` of a manifest, from the spec."""
    task = "image classification" if spec.kind == "image" else "classification of feature vectors"
    return {"task": f"{task} ({spec.source})" if spec.source else task,
            "labels": list(spec.labels),
            "input": {"name": INPUT_NAME, "shape": ["batch", *spec.shape], "dtype": "float32", "layout": spec.layout()},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", spec.num_classes],
                       "meaning": "unnormalised class scores (logits); softmax gives probabilities"},
            "preprocessing": {**spec.to_dict(), "description": spec.describe()}}


def bundle_spec(m: dict) -> InputSpec:
    """The input specification a manifest records."""
    try:
        if m["format"] == FORMAT_V1:  # the Fashion-MNIST demo: scalar statistics, no spec record
            pre = m["preprocessing"]
            return InputSpec("image", tuple(int(d) for d in m["input"]["shape"][1:]), tuple(m["labels"]),
                             (float(pre["mean"]),), (float(pre["std"]),), 255.0, None, "Fashion-MNIST (official split)",
                             ("shift", "hflip"))
        return InputSpec.from_dict(m["preprocessing"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"manifest.json: its input record (`preprocessing`) is unreadable ({type(err).__name__}: "
                          f"{err}); it was edited or not written by compress. Restore it from the original bundle"
                          ) from None


def manifest_sha256(m: dict) -> str:
    """sha256 of the manifest's canonical JSON, ``files`` left out (it holds the hash of the model, whose
    metadata holds this digest)."""
    body = json.loads(json.dumps({k: v for k, v in m.items() if k != "files"}))  # as it reads back from disk
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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


def triton_config(name: str, max_batch_size: int, preferred: list[int], spec: InputSpec) -> str:
    pref = ", ".join(str(b) for b in preferred)
    batching = (f"dynamic_batching {{\n  preferred_batch_size: [ {pref} ]\n  max_queue_delay_microseconds: 100\n}}\n"
                if preferred else "dynamic_batching { max_queue_delay_microseconds: 100 }\n")
    layout = "    format: FORMAT_NCHW\n" if spec.kind == "image" else ""  # vectors: Triton's default FORMAT_NONE
    dims = ", ".join(str(d) for d in spec.shape)
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f'input [\n  {{\n    name: "{INPUT_NAME}"\n    data_type: TYPE_FP32\n{layout}    dims: [ {dims} ]\n  }}\n]\n'
            f'output [\n  {{\n    name: "{OUTPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {spec.num_classes} ]\n  }}\n]\n'
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


def _facts(m: dict) -> dict:
    return {"compress.name": m["name"], "compress.labels": m["labels"], "compress.preprocessing": m["preprocessing"],
            "compress.input": m["input"], "compress.output": m["output"],
            "compress.val_accuracy": f"{m['metrics']['val_accuracy']:.4f}",
            "compress.test_accuracy": f"{m['metrics']['test_accuracy']:.4f}",
            "compress.latency_p95_ms": f"{m['latency']['p95_ms']:.4f}",
            "compress.teacher_sha256": m["lineage"]["teacher_sha256"], "compress.manifest_sha256": manifest_sha256(m)}


def _write_samples(folder: Path, spec: InputSpec, raw: np.ndarray) -> None:
    if spec.kind == "vector":
        np.save(folder / "raw.npy", raw.astype(np.float32))
        return
    from PIL import Image

    for i, img in enumerate(raw):  # C x H x W -> the image's own mode (L or RGB)
        Image.fromarray(img[0] if spec.channels == 1 else img.transpose(1, 2, 0)).save(folder / f"image_{i}.png")


def _write_test_split(folder: Path, spec: InputSpec, raw: np.ndarray, labels: np.ndarray) -> dict:
    record = {"n": int(len(labels)), "raw_bytes": int(raw.nbytes)}
    if spec.source.startswith(IDX_SOURCE):
        return {**record, "bundled": False,
                "where": "Fashion-MNIST's t10k IDX files (Debian package dataset-fashion-mnist)"}
    if raw.nbytes > TEST_SPLIT_MAX_BYTES:
        return {**record, "bundled": False,
                "where": f"not bundled: {raw.nbytes / 1e6:.1f} MB raw, over the "
                         f"{TEST_SPLIT_MAX_BYTES / 1e6:.0f} MB limit"}
    np.savez_compressed(folder / "test.npz", x=raw, y=labels)
    return {**record, "bundled": True, "where": "samples/test.npz"}


def write_bundle(folder: Path, model_src: Path, manifest: dict, test: tuple[np.ndarray, np.ndarray],
                 sweep_rows: list[dict]) -> Path:
    """Write the bundle into ``folder`` via a staging folder; returns ``folder``.

    ``manifest`` holds everything known about the model: ``spec_fields(spec)`` and what ``_card`` reads.
    ``test`` is the raw test split as ``load_dataset`` gives it (uint8 N x C x H x W images or float32
    N x D vectors, int labels). This adds the samples (the first ``N_SAMPLES`` test samples, their inputs
    and the outputs ``model_src`` gives), the test split when it may travel, metadata and hashes.
    """
    spec = InputSpec.from_dict(manifest["preprocessing"])
    raw, labels = np.ascontiguousarray(test[0]), np.asarray(test[1], dtype=np.int64)
    staging = staging_dir(folder)
    samples = staging / "samples"
    samples.mkdir()
    x = spec.normalize(raw[:N_SAMPLES]).astype(np.float32)
    np.save(samples / "inputs.npy", x)
    np.save(samples / "outputs.npy", _session(model_src).run(None, {INPUT_NAME: x})[0])
    np.save(samples / "labels.npy", labels[:N_SAMPLES])
    _write_samples(samples, spec, raw[:N_SAMPLES])
    name = manifest["name"].replace(".", "_")
    pref = preferred_batch_sizes(sweep_rows, threads=1)
    max_batch = max([128] + pref)
    manifest = {"format": FORMAT, **{k: v for k, v in manifest.items() if k not in ("format", "files")},
                "test_split": _write_test_split(samples, spec, raw, labels),
                "triton": {"model_name": name, "max_batch_size": max_batch, "preferred_batch_sizes": pref},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "packages": _versions()}
    _set_metadata(model_src, staging / "model.onnx", _facts(manifest))  # the manifest is final from here on
    tdir = staging / "triton" / name / "1"
    tdir.mkdir(parents=True)
    shutil.copyfile(staging / "model.onnx", tdir / "model.onnx")
    write_text_atomic(staging / "triton" / name / "config.pbtxt", triton_config(name, max_batch, pref, spec))
    write_text_atomic(staging / "MODEL_CARD.md", _card(manifest, spec))
    manifest["files"] = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*"))
                         if p.is_file() and p.name != "manifest.json"}
    write_json_atomic(staging / "manifest.json", manifest)
    publish(staging, folder)
    return folder


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _card(m: dict, spec: InputSpec) -> str:
    met, lat, slo = m["metrics"], m["latency"], m["service_level"]
    noun = "images" if spec.kind == "image" else "samples"
    of = f" of {spec.source}" if spec.source else ""
    example = "samples/image_0.png" if spec.kind == "image" else "samples/raw.npy"
    split = m["test_split"]
    lines = [
        f"# Model card: {m['name']}", "",
        f"{m['task']} over {len(m['labels'])} classes, compressed from a teacher by compress "
        f"({m['compression']}).", "",
        "## Use it", "",
        f"- File: `model.onnx` ({m['format_note']}); Triton layout under `triton/`.",
        f"- Input `{m['input']['name']}`: {m['input']['dtype']}, shape {m['input']['shape']} ({m['input']['layout']}).",
        f"- Preprocessing: {m['preprocessing']['description']}. The exact values are in `manifest.json` "
        "under `preprocessing`; `compress predict` applies them.",
        f"- Output `{m['output']['name']}`: shape {m['output']['shape']}, {m['output']['meaning']}.",
        "- Labels (output index order): " + ", ".join(f"{i} {n}" for i, n in enumerate(m["labels"])), "",
        "Check a copy before serving it: `compress verify DIR` (needs only onnxruntime and numpy). "
        f"Try it: `compress predict DIR {example}`.", "",
        "## Accuracy", "",
        "| | validation | test |", "| --- | ---: | ---: |",
        f"| this model | {_pct(met['val_accuracy'])} | {_pct(met['test_accuracy'])} |",
        f"| teacher | {_pct(met['teacher_val_accuracy'])} | {_pct(met['teacher_test_accuracy'])} |", "",
        f"Test accuracy is on {met['test_size']:,} test {noun}{of}, which no choice in the search ever saw. "
        + ("They travel in `samples/test.npz`, so `compress verify` recomputes it anywhere." if split["bundled"] else
           f"`compress verify` recomputes it from {split['where']}." if spec.source.startswith(IDX_SOURCE) else
           f"The test split is {split['where']}; `compress verify` checks the samples only."), "",
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
              "## Files", "",
              "sha256 of every file is in `manifest.json` (`files`), and the sha256 of `manifest.json` itself in the "
              "model's ONNX metadata (`compress.manifest_sha256`); `compress verify` checks both.", ""]
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
    if m.get("format") not in READABLE:
        raise BundleError(f"{path}: format {m.get('format')!r}; this compress reads {', '.join(READABLE)}")
    return m


def _session(path: Path, threads: int = 1):
    from compress.latency import make_session

    return make_session(path, threads)


def _logits(sess, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(None, {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def manifest_problems(m: dict, sess) -> list[str]:
    """What in ``m`` disagrees with the model's metadata: its labels, and (format 2) its digest."""
    meta = sess.get_modelmeta().custom_metadata_map
    problems = []
    try:
        labels = json.loads(meta.get("compress.labels", "null"))
    except json.JSONDecodeError:
        labels = None
    if labels != m["labels"]:
        problems.append(f"{EDITED} (labels differ from the model's metadata: manifest {m['labels']}, "
                        f"model.onnx {labels})")
    if m["format"] != FORMAT_V1:
        recorded = meta.get("compress.manifest_sha256")
        if recorded != manifest_sha256(m):
            problems.append(f"{EDITED} (its sha256 without `files` is {manifest_sha256(m)[:12]}..., model.onnx "
                            f"records {recorded[:12] + '...' if recorded else 'none'})")
    return problems


def _read_idx(path: Path) -> np.ndarray:
    # IDX is four header fields and raw bytes; a few lines here spare verify a torch/torchvision install.
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_test_set(root: Path | None) -> tuple[np.ndarray, np.ndarray, Path] | None:
    for base in [p for p in [root, Path(".data/FashionMNIST/raw"), Path("/usr/share/datasets/fashion-mnist")] if p]:
        for suffix in ("", ".gz"):
            img, lab = base / f"t10k-images-idx3-ubyte{suffix}", base / f"t10k-labels-idx1-ubyte{suffix}"
            if img.is_file() and lab.is_file():
                return _read_idx(img), _read_idx(lab), base
    return None


def _test_split(folder: Path, m: dict, spec: InputSpec, data_root: str | None, bad: set[str]):
    """(raw samples, labels, what they are) for the accuracy check, or (None, None, why not)."""
    if "samples/test.npz" in m["files"]:
        if "samples/test.npz" in bad:
            return None, None, "samples/test.npz is missing or altered"
        with np.load(folder / "samples" / "test.npz", allow_pickle=False) as z:
            return z["x"], z["y"], "bundled test samples"
    if spec.source.startswith(IDX_SOURCE):
        found = _find_test_set(Path(data_root) if data_root else None)
        if found is None:
            return None, None, "Fashion-MNIST test set not found here (pass --data DIR with the t10k IDX files)"
        images, labels, where = found
        n = m["metrics"].get("test_size", len(labels))  # a study on a test subset used the first n
        images, labels = images[:n, None], labels[:n]
        if images.shape[1:] != spec.shape:
            try:
                from PIL import Image
            except ImportError:
                return None, None, f"the model takes {spec.shape} and fitting the 28x28 test images needs Pillow"
            images = np.stack([spec.prepare_image(Image.fromarray(img[0])) for img in images])
        return images, labels, f"Fashion-MNIST test images from {where}"
    return None, None, f"the test split is {m.get('test_split', {}).get('where', 'not bundled')}"


def verify(folder: str | Path, *, data_root: str | None = None, latency_seconds: float = 3.0, out=None) -> list[str]:
    """Check a bundle: every file's sha256, the manifest against the model's metadata, the sample outputs,
    latency here (a warning only) and the test accuracy where the test split is at hand. Prints what it
    checks; returns the list of problems (empty: verified)."""
    folder = Path(folder)
    m = load_manifest(folder)
    spec = bundle_spec(m)
    problems: list[str] = []

    def say(msg: str) -> None:
        print(msg, file=out or sys.stdout)  # looked up per call: a redirected sys.stdout is honoured

    for rel, digest in m["files"].items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (file altered or corrupted)")
    bad = {p.split(": ")[0] for p in problems}
    say(f"files: {len(m['files'])} checked, {len(bad)} bad")
    if "model.onnx" in bad:
        say("\n".join(f"  FAIL {p}" for p in problems))
        return problems
    sess = _session(folder / "model.onnx")
    edited = manifest_problems(m, sess)
    problems += edited
    say(f"manifest: {'EDITED after the bundle was written' if edited else 'matches the model metadata'}")
    if {"samples/inputs.npy", "samples/outputs.npy"} & bad:
        say("samples: skipped (files missing or altered)")
    else:
        x = np.load(folder / "samples" / "inputs.npy")
        want = np.load(folder / "samples" / "outputs.npy")
        got = _logits(sess, x)
        diff = float(np.abs(got - want).max())
        if diff > SAMPLE_TOLERANCE or (got.argmax(1) != want.argmax(1)).any():
            problems.append(f"samples: outputs differ from the recorded ones (max abs diff {diff:.2e} > "
                            f"{SAMPLE_TOLERANCE})")
        say(f"samples: {len(x)} inputs, max abs output difference {diff:.2e} (tolerance {SAMPLE_TOLERANCE})")
    _say_latency(folder, m, latency_seconds, say)
    raw, labels, where = _test_split(folder, m, spec, data_root, bad)
    card, size = m["metrics"]["test_accuracy"], m["metrics"].get("test_size")
    if raw is not None:
        acc = float((_logits(sess, spec.normalize(raw)).argmax(1) == labels).mean())
        say(f"test accuracy here: {100 * acc:.2f}% on {len(labels)} {where}   card: {100 * card:.2f}%")
        if abs(acc - card) > max(ACCURACY_TOLERANCE, 1 / len(labels)) and len(labels) == size:
            problems.append(f"test accuracy {acc:.4f} on {len(labels)} {where} differs from the card's {card:.4f}")
    elif "samples/labels.npy" in m["files"] and not {"samples/labels.npy", "samples/inputs.npy"} & bad:
        y = np.load(folder / "samples" / "labels.npy")
        right = int((_logits(sess, np.load(folder / "samples" / "inputs.npy")).argmax(1) == y).sum())
        say(f"test accuracy here: on the samples only: {right}/{len(y)} correct; {where}   "
            f"card: {100 * card:.2f}% on {size}")
    else:
        say(f"test accuracy: skipped, {where}")
    say("VERIFIED" if not problems else "\n".join(f"  FAIL {p}" for p in problems))
    return problems


def _say_latency(folder: Path, m: dict, seconds: float, say) -> None:
    from types import SimpleNamespace

    from compress.latency import measure

    lat = m["latency"]
    protocol = SimpleNamespace(warmup_runs=50, min_runs=200, max_runs=5000, max_seconds=seconds)
    here = measure(folder / "model.onnx", protocol, lat["batch_size"], lat["threads"])
    say(f"latency here: p50 {here.p50_ms:.3f} ms, p95 {here.p95_ms:.3f} ms   card: p50 {lat['p50_ms']:.3f} ms, "
        f"p95 {lat['p95_ms']:.3f} ms   (batch {lat['batch_size']}, {lat['threads']} thread(s))")
    if here.p50_ms / lat["p50_ms"] > SLOWER_WARNING:
        say(f"  WARNING: {here.p50_ms / lat['p50_ms']:.1f}x slower than on the card's machine "
            f"({m['machine'].get('cpu')}); the service level may not hold here")


def _pixel_forms(spec: InputSpec) -> list[tuple[int, ...]]:
    c, h, w = spec.shape
    return [(c, h, w), (h, w, c)] + ([(h, w)] if c == 1 else [])


def _image_array(arr: np.ndarray, spec: InputSpec, p: str) -> np.ndarray:
    c, h, w = spec.shape
    if arr.dtype == np.float32 and arr.shape[-3:] == spec.shape and arr.ndim in (3, 4):
        return arr.reshape(-1, *spec.shape)  # already preprocessed (samples/inputs.npy is such a file)
    forms = _pixel_forms(spec)
    if arr.dtype == np.uint8:
        batch = arr[None] if arr.shape in forms else arr
        if batch.ndim >= 3 and batch.shape[1:] == (c, h, w):
            return spec.normalize(batch)
        if batch.ndim >= 3 and batch.shape[1:] == (h, w, c):
            return spec.normalize(batch.transpose(0, 3, 1, 2))
        if batch.ndim >= 3 and batch.shape[1:] == (h, w) and c == 1:
            return spec.normalize(batch[:, None])
    raise BundleError(
        f"{p}: array of shape {arr.shape} and dtype {arr.dtype} does not fit; expected uint8 pixels shaped "
        f"{' or '.join(map(str, forms))} (with or without a leading N), or preprocessed float32 shaped "
        f"{spec.shape} or (N, {', '.join(map(str, spec.shape))})")


def _vector_array(arr: np.ndarray, spec: InputSpec, p: str) -> np.ndarray:
    d = spec.shape[0]
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or arr.ndim not in (1, 2):
        raise BundleError(f"{p}: array of shape {arr.shape} and dtype {arr.dtype} does not fit; expected raw "
                          f"features as numbers shaped ({d},) or (N, {d})")
    if arr.shape[-1] != d:
        raise BundleError(f"{p}: {arr.shape[-1]} features per sample (array shape {arr.shape}); the model takes "
                          f"{d}: shape ({d},) or (N, {d})")
    return spec.normalize(arr.reshape(-1, d))


def _read_csv(path: Path, spec: InputSpec) -> np.ndarray:
    d, rows = spec.shape[0], []
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in row]
                while cells and not cells[-1]:  # trailing commas
                    cells.pop()
                if not cells:
                    continue
                try:
                    values = [float(c) for c in cells]
                except ValueError:
                    if not rows and i == 1:  # a header row
                        continue
                    raise BundleError(f"{path}: row {i} holds a value that is not a number; expected {d} numbers "
                                      "per row") from None
                if len(values) != d:
                    raise BundleError(f"{path}: row {i} has {len(values)} values; the model takes {d} features per row")
                rows.append(values)
    except (UnicodeDecodeError, csv.Error) as err:
        raise BundleError(f"{path}: not a readable CSV file ({err}); expected rows of {d} numbers") from None
    if not rows:
        raise BundleError(f"{path}: no data rows; expected rows of {d} numbers (a header row is optional)")
    return spec.normalize(np.asarray(rows, dtype=np.float32))


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise BundleError("reading images needs Pillow (pip install pillow); or pass .npy arrays") from None
    if path.suffix.lower() not in Image.registered_extensions():
        raise BundleError(f"{path}: unsupported input type {path.suffix!r}; this model takes images (any format "
                          "Pillow reads: PNG, JPEG, BMP, WebP, ...) or .npy arrays")
    try:
        with Image.open(path) as img:
            return spec.normalize(spec.prepare_image(img)[None])
    except UnidentifiedImageError:
        raise BundleError(f"{path}: not an image Pillow can read; expected an image file (PNG, JPEG, BMP, WebP, ...) "
                          "or a .npy array") from None
    except OSError as err:  # truncated or corrupt
        raise BundleError(f"{path}: unreadable image ({err})") from None


def load_inputs(paths: list[str], spec: InputSpec) -> tuple[np.ndarray, list[str]]:
    """Files -> float32 model inputs, preprocessed as ``spec`` records, and a name per input.

    Images: any image file Pillow opens, of any size and mode (converted, resized as the training data
    were), or ``.npy`` arrays of uint8 pixels (H x W for one channel, C x H x W or H x W x C, with or
    without a leading N) or already-preprocessed float32 of the model's shape. Vectors: ``.npy`` (D or
    N x D raw features) or ``.csv`` (D numbers per row; a header row is skipped).
    """
    batches, names = [], []
    for p in paths:
        path = Path(p)
        suffix = path.suffix.lower()
        if not path.is_file():
            raise BundleError(f"{p}: no such file")
        if suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise BundleError(f"{p}: not a readable .npy array ({err})") from None
            x = _image_array(arr, spec, p) if spec.kind == "image" else _vector_array(arr, spec, p)
        elif spec.kind == "vector":
            if suffix != ".csv":
                raise BundleError(f"{p}: unsupported input type {suffix!r}; this model takes feature vectors of "
                                  f"{spec.shape[0]} values: .npy arrays or .csv rows")
            x = _read_csv(path, spec)
        else:
            x = _read_image(path, spec)
        batches.append(x.astype(np.float32))
        names += [f"{path.name}[{i}]" for i in range(len(x))] if len(x) > 1 else [path.name]
    return np.concatenate(batches), names


def predict(folder: str | Path, inputs: list[str]) -> list[dict]:
    """Label ``inputs`` (files, see ``load_inputs``) with the bundle's model: label, index, probabilities."""
    folder = Path(folder)
    m = load_manifest(folder)
    x, names = load_inputs(inputs, bundle_spec(m))
    sess = _session(folder / "model.onnx")
    edited = manifest_problems(m, sess)
    if edited:  # the labels printed would not be the model's
        raise BundleError(f"{folder}: {edited[0]}; run `compress verify {folder}`")
    logits = _logits(sess, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    return [{"input": n, "label": m["labels"][int(p.argmax())], "index": int(p.argmax()),
             "probabilities": {lab: round(float(v), 6) for lab, v in zip(m["labels"], p)}}
            for n, p in zip(names, probs)]
