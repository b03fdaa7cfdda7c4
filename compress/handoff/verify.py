"""``compress verify``: every file's sha256, the manifest against the model's metadata, the sample
outputs, latency here and the test accuracy where the test split is at hand. No torch."""

from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np

from compress.errors import BundleError
from compress.handoff.common import (
    FORMAT_V1,
    IDX_SOURCE,
    READABLE,
    batched_logits,
    bundle_spec,
    manifest_sha256,
    model_files,
    open_session,
)
from compress.io import sha256_file
from compress.spec import InputSpec
from compress.measure.latency import environment
from compress.measure.latency import measure

SAMPLE_TOLERANCE = 1e-4  # same model, same runtime family: outputs agree far tighter than this
ACCURACY_TOLERANCE = 0.001  # or one sample, on small test splits: one borderline flip is not a broken model
SLOWER_WARNING = 1.5  # re-measured p50 this many times the card's figure gets a warning
EDITED = "manifest.json: edited after the bundle was written"
MANIFEST_KEYS = ("name", "labels", "input", "preprocessing", "metrics", "latency", "files")
REQUIRED_FILES = ("model.onnx", "MODEL_CARD.md", "samples/inputs.npy", "samples/outputs.npy")


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{folder}: no manifest.json; is this an artifact folder (results/<study>/artifact/)?")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(m, dict) or m.get("format") not in READABLE:
        raise BundleError(f"{path}: format {m.get('format') if isinstance(m, dict) else None!r}; this compress "
                          f"reads {', '.join(READABLE)}")
    missing = [k for k in MANIFEST_KEYS if k not in m]
    files = m.get("files")
    if missing or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        why = f"no {', '.join(missing)}" if missing else "`files` is not a list of file: sha256"
        raise BundleError(f"{path}: malformed ({why}); it was edited or not written by compress: restore it from "
                          "the original bundle")
    return m


def file_problems(folder: Path, m: dict) -> list[str]:
    """Each listed file inside the bundle, present and as hashed; each file of the bundle listed; the files
    every bundle has listed; the Triton copy the model itself."""
    root, problems = folder.resolve(), []
    for rel, digest in m["files"].items():
        p = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not p.resolve().is_relative_to(root):
            problems.append(f"{rel}: outside the bundle (not read)")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (file altered or corrupted)")
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if (p.is_file() or p.is_symlink()) and rel != "manifest.json" and rel not in m["files"]:
            problems.append(f"{rel}: in the bundle but not in manifest.json (added)")
    problems += [f"{rel}: not in manifest.json (removed)" for rel in REQUIRED_FILES if rel not in m["files"]]
    if m["format"] != FORMAT_V1:
        problems += [f"{rel}: not the same file as model.onnx" for rel in sorted(model_files(m) - {"model.onnx"})
                     if rel in m["files"] and m["files"][rel] != m["files"].get("model.onnx")]
    return problems


def model_problems(folder: Path, m: dict, sess) -> list[str]:
    """Why ``model.onnx`` is not the bundle's model, or []: its hash, the manifest's digest in its metadata, and
    the outputs it gives for the sample inputs. What ``predict`` checks before labelling anything."""
    for rel in ("model.onnx", "samples/inputs.npy", "samples/outputs.npy"):
        if not (folder / rel).is_file() or m["files"].get(rel) != sha256_file(folder / rel):
            return [f"{rel}: missing, or its sha256 differs from manifest.json's (another file, or altered)"]
    return manifest_problems(m, sess) or sample_problems(folder, sess)[0]


def sample_problems(folder: Path, sess) -> tuple[list[str], str]:
    """Whether the model gives the recorded outputs for the sample inputs: (problems, what was seen)."""
    x = np.load(folder / "samples" / "inputs.npy", allow_pickle=False)
    want = np.load(folder / "samples" / "outputs.npy", allow_pickle=False)
    got = batched_logits(sess, x)
    if got.shape != want.shape:
        return [f"samples: outputs of shape {got.shape}, recorded {want.shape}"], "outputs of another shape"
    diff = float(np.abs(got - want).max())
    seen = f"{len(x)} inputs, max abs output difference {diff:.2e} (tolerance {SAMPLE_TOLERANCE})"
    if diff > SAMPLE_TOLERANCE or (got.argmax(1) != want.argmax(1)).any():
        return [f"samples: outputs differ from the recorded ones (max abs diff {diff:.2e} > {SAMPLE_TOLERANCE})"], seen
    return [], seen


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


def find_test_set(root: Path | None) -> tuple[np.ndarray, np.ndarray, Path] | None:
    for base in [p for p in [root, Path(".data/FashionMNIST/raw"), Path("/usr/share/datasets/fashion-mnist")] if p]:
        for suffix in ("", ".gz"):
            img, lab = base / f"t10k-images-idx3-ubyte{suffix}", base / f"t10k-labels-idx1-ubyte{suffix}"
            if img.is_file() and lab.is_file():
                return _read_idx(img), _read_idx(lab), base
    return None


def _test_split(folder: Path, m: dict, spec: InputSpec, data_root: str | None, bad: set[str]):
    """(raw samples, labels, what they are) for the accuracy check, or (None, None, why not)."""
    if data_root and data_root.endswith(".npz"):  # the user's own test split, as load_dataset gives it: raw x, y
        try:
            with np.load(data_root, allow_pickle=False) as z:
                return z["x"], z["y"], f"test samples from {data_root}"
        except (OSError, KeyError, ValueError) as err:
            raise BundleError(f"--data {data_root}: not an .npz with arrays x (raw inputs) and y (labels): "
                              f"{type(err).__name__}: {err}") from None
    if "samples/test.npz" in m["files"]:
        if "samples/test.npz" in bad:
            return None, None, "samples/test.npz is missing or altered"
        with np.load(folder / "samples" / "test.npz", allow_pickle=False) as z:
            return z["x"], z["y"], "bundled test samples"
    if spec.source.startswith(IDX_SOURCE):
        found = find_test_set(Path(data_root) if data_root else None)
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
    """Check a bundle: every file's sha256 and none added, the manifest against the model's metadata, the
    sample outputs, latency here (a warning only) and the test accuracy where the test split is at hand.
    Prints what it checks; returns the list of problems (empty: verified)."""
    m = load_manifest(Path(folder))
    try:
        return _verify(Path(folder), m, data_root, latency_seconds, out)
    except (KeyError, TypeError) as err:  # a field the checks read is absent or of another type
        raise BundleError(f"{folder}/manifest.json: malformed ({type(err).__name__}: {err}); it was edited or not "
                          "written by compress: restore it from the original bundle") from None


def _verify(folder: Path, m: dict, data_root: str | None, latency_seconds: float, out) -> list[str]:
    spec = bundle_spec(m)
    problems: list[str] = []

    def say(msg: str) -> None:
        print(msg, file=out or sys.stdout)  # looked up per call: a redirected sys.stdout is honoured

    problems = file_problems(folder, m)
    bad = {p.split(": ")[0] for p in problems}
    say(f"files: {len(m['files'])} listed, {len(bad)} bad")
    if "model.onnx" in bad:
        say("\n".join(f"  FAIL {p}" for p in problems))
        return problems
    sess = open_session(folder / "model.onnx")
    edited = manifest_problems(m, sess)
    problems += edited
    say(f"manifest: {'EDITED after the bundle was written' if edited else 'matches the model metadata'}")
    if {"samples/inputs.npy", "samples/outputs.npy"} & bad:
        say("samples: skipped (files missing, altered or not listed)")
    else:
        wrong, seen = sample_problems(folder, sess)
        problems += wrong
        say(f"samples: {seen}")
    _say_latency(folder, m, latency_seconds, say)
    raw, labels, where = _test_split(folder, m, spec, data_root, bad)
    card, size = m["metrics"]["test_accuracy"], m["metrics"].get("test_size")
    if raw is not None:
        acc = float((batched_logits(sess, spec.normalize(raw)).argmax(1) == labels).mean())
        say(f"test accuracy here: {100 * acc:.2f}% on {len(labels)} {where}   card: {100 * card:.2f}%")
        if abs(acc - card) > max(ACCURACY_TOLERANCE, 1 / len(labels)) and len(labels) == size:
            problems.append(f"test accuracy {acc:.4f} on {len(labels)} {where} differs from the card's {card:.4f}")
    elif "samples/labels.npy" in m["files"] and not {"samples/labels.npy", "samples/inputs.npy"} & bad:
        y = np.load(folder / "samples" / "labels.npy")
        right = int((batched_logits(sess, np.load(folder / "samples" / "inputs.npy")).argmax(1) == y).sum())
        say(f"test accuracy here: on the samples only: {right}/{len(y)} correct; {where}   "
            f"card: {100 * card:.2f}% on {size}")
    else:
        say(f"test accuracy: skipped, {where}")
    hint = _int8_hint(m, problems)
    say("VERIFIED" if not problems else "\n".join(f"  FAIL {p}" for p in problems) + (f"\n  {hint}" if hint else ""))
    return problems


VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


def _int8_hint(m: dict, problems: list[str]) -> str | None:
    """Why an int8 model computes differently here: ONNX Runtime's u8 x s8 kernels without VNNI (plain
    AVX2) add pairs of products in 16 bits, which saturate; the card's machine had VNNI."""
    if "int8" not in m.get("format_note", "") or not any(p.startswith(("samples", "test accuracy")) for p in problems):
        return None

    here, there = set(environment()["flags"]), set(m.get("machine", {}).get("flags", []))
    if there & set(VNNI) and not here & set(VNNI):
        return ("note: this is an int8 model measured on a CPU with VNNI, and this CPU has none: ONNX Runtime's "
                "int8 kernels without VNNI can saturate and change outputs. Serve it on a VNNI CPU, or search "
                "again on this kind of machine, where int8 is quantized with 7-bit weights (quantize.reduce_range) "
                "and judged by what it computes here.")
    return None


def _say_latency(folder: Path, m: dict, seconds: float, say) -> None:
    from types import SimpleNamespace


    lat = m["latency"]
    protocol = SimpleNamespace(warmup_runs=50, min_runs=200, max_runs=5000, max_seconds=seconds)
    here = measure(folder / "model.onnx", protocol, lat["batch_size"], lat["threads"])
    say(f"latency here: p50 {here.p50_ms:.3f} ms, p95 {here.p95_ms:.3f} ms   card: p50 {lat['p50_ms']:.3f} ms, "
        f"p95 {lat['p95_ms']:.3f} ms   (batch {lat['batch_size']}, {lat['threads']} thread(s))")
    if here.p50_ms / lat["p50_ms"] > SLOWER_WARNING:
        say(f"  WARNING: {here.p50_ms / lat['p50_ms']:.1f}x slower than on the card's machine "
            f"({m['machine'].get('cpu')}); the service level may not hold here")
