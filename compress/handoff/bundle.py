"""Writing the handoff bundle (called by the study; inputs are plain records): the model with its facts in
ONNX metadata, ``manifest.json``, ``MODEL_CARD.md``, the samples, the test split when it may travel and
the Triton layout."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from compress.handoff.common import FORMAT, IDX_SOURCE, open_session, manifest_sha256
from compress.io import fault, publish, sha256_file, staging_dir, write_json_atomic, write_text_atomic
from compress.spec import INPUT_NAME, OUTPUT_NAME, InputSpec

N_SAMPLES = 8  # sample inputs shipped with their outputs: enough to catch a wrong runtime, few enough to read
# The raw test split travels in the bundle up to this size, so verify can recompute the test accuracy
# anywhere; CIFAR-10's 31 MB would double a small model's bundle, MNIST-sized splits (8 MB) travel.
TEST_SPLIT_MAX_BYTES = 20_000_000


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
    np.savez_compressed(folder / "test.npz", x=np.asarray(raw), y=labels)
    return {**record, "bundled": True, "where": "samples/test.npz"}


def write_bundle(folder: Path, model_src: Path, manifest: dict, test: tuple[np.ndarray, np.ndarray],
                 sweep_rows: list[dict]) -> Path:
    """Write the bundle into ``folder`` via a staging folder; returns ``folder``.

    ``manifest`` holds everything known about the model: ``spec_fields(spec)`` and what ``_card`` reads.
    ``test`` is the raw test split as ``load_dataset`` gives it (images, vectors or streamed images; int
    labels). This adds the first ``N_SAMPLES`` test samples with the outputs ``model_src`` gives, the test
    split when it may travel, metadata and hashes.
    """
    spec = InputSpec.from_dict(manifest["preprocessing"])
    raw, labels = test[0], np.asarray(test[1], dtype=np.int64)
    head = np.ascontiguousarray(np.asarray(raw[:N_SAMPLES]))  # a streamed split reads only these
    staging = staging_dir(folder)
    samples = staging / "samples"
    samples.mkdir()
    x = spec.normalize(head).astype(np.float32)
    np.save(samples / "inputs.npy", x)
    np.save(samples / "outputs.npy", open_session(model_src).run(None, {INPUT_NAME: x})[0])
    np.save(samples / "labels.npy", labels[:N_SAMPLES])
    _write_samples(samples, spec, head)
    name = manifest["name"].replace(".", "_")
    pref = preferred_batch_sizes(sweep_rows, threads=1)
    max_batch = max([128] + pref)
    manifest = {"format": FORMAT, **{k: v for k, v in manifest.items() if k not in ("format", "files")},
                "test_split": _write_test_split(samples, spec, raw, labels),
                "triton": {"model_name": name, "max_batch_size": max_batch, "preferred_batch_sizes": pref},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "packages": _versions()}
    tdir = staging / "triton" / name / "1"
    tdir.mkdir(parents=True)
    write_text_atomic(staging / "triton" / name / "config.pbtxt", triton_config(name, max_batch, pref, spec))
    write_text_atomic(staging / "MODEL_CARD.md", _card(manifest, spec))
    manifest["files"] = _hashes(staging)  # every file but the model's copies: the digest in its metadata covers them
    _set_metadata(model_src, staging / "model.onnx", _facts(manifest))
    shutil.copyfile(staging / "model.onnx", tdir / "model.onnx")
    manifest["files"] = _hashes(staging)
    fault("bundle")  # tests: a finisher killed mid-bundle leaves only the staging folder
    write_json_atomic(staging / "manifest.json", manifest)
    publish(staging, folder)
    return folder


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def hardware_note(m: dict) -> list[str]:
    """int8 made with 8-bit weights on a VNNI CPU can saturate on CPUs without VNNI: say so where it applies."""
    flags = set(m.get("machine", {}).get("flags", []))
    if "int8" not in m.get("format_note", "") or "7-bit" in m.get("format_note", ""):
        return []
    if not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return []
    return ["**Hardware**: int8 with 8-bit weights, made and measured on a CPU with VNNI. Serve it on CPUs with "
            "VNNI (AVX512-VNNI, AVX-VNNI or AMX): without it ONNX Runtime's int8 kernels can saturate and "
            "change the outputs. `compress verify` on the serving machine shows whether they do.", ""]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" (95% CI {100 * ci[0]:.2f}-{100 * ci[1]:.2f}%)"


def _paired(tests: dict) -> list[str]:
    """The paired accuracy tests (McNemar, same test images) as sentences."""
    lines = []
    for key, who in (("vs_teacher", "the teacher"), ("vs_runner_up", "the runner-up")):
        t = tests.get(key)
        if t:
            name = f"{who} (trial {t['trial']}, p95 {t['latency_p95_ms']:.3f} ms)" if "trial" in t else who
            lines.append(f"- Against {name}: {t['verdict']} on the same test images (McNemar p = {t['p_value']:.3g}; "
                         f"{t['only_artifact_right']} images only this model gets right, "
                         f"{t['only_other_right']} only the other).")
    return lines + [""] if lines else []


def _bound(what: str, value, unit: str) -> str:
    return f"{what} <= {value} {unit}" if value is not None else f"{what}: no bound set"


def _latency_section(m: dict) -> list[str]:
    """The card's latency, throughput and service-level sections."""
    lat, slo = m["latency"], m["service_level"]
    return [
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
        f"Requirement: {_bound('p95', slo.get('p95_ms'), 'ms per request')}; "
        f"{_bound('accuracy drop', slo.get('max_accuracy_drop_pp'), 'pp')}. "
        f"**{'Met' if slo.get('met') else 'NOT met'}.**", ""]


def _card(m: dict, spec: InputSpec) -> str:
    met = m["metrics"]
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
        f"Try it: `compress predict DIR {example}`.", "", *hardware_note(m),
        "## Accuracy", "",
        "| | validation | test |", "| --- | ---: | ---: |",
        f"| this model | {_pct(met['val_accuracy'])} | {_pct(met['test_accuracy'])}{_ci(met.get('test_accuracy_ci95'))} |",
        f"| teacher | {_pct(met['teacher_val_accuracy'])} | {_pct(met['teacher_test_accuracy'])}"
        f"{_ci(met.get('teacher_test_accuracy_ci95'))} |", "",
        *_paired(m.get("paired_tests") or {}),
        f"Test accuracy is on {met['test_size']:,} test {noun}{of}, which no choice in the search ever saw. "
        + ("They travel in `samples/test.npz`, so `compress verify` recomputes it anywhere." if split["bundled"] else
           f"`compress verify` recomputes it from {split['where']}." if spec.source.startswith(IDX_SOURCE) else
           f"The test split is {split['where']}; `compress verify` checks the samples only."), "",
        *_latency_section(m)]
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
              + ", ".join(f"`{k}={v}`" for k, v in m["trial"]["params"].items()) + "."
              + (" Its int8 copy failed the parity gate, so the model is fp32 (`quantize.enabled: false` in the "
                 f"recipe): {m['trial']['int8_rejected']}" if m["trial"].get("int8_rejected") else ""),
              "The full resolved recipe is in `manifest.json` under `recipe`.", "",
              "Lineage: " + ", ".join(f"{k} `{v}`" for k, v in m["lineage"].items()) + ".", "",
              "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".", "",
              "## Files", "",
              "sha256 of every file is in `manifest.json` (`files`), and the sha256 of `manifest.json` itself, file "
              "list included, in the model's ONNX metadata (`compress.manifest_sha256`). `compress verify` checks "
              "both, and that no file was added; `compress predict` checks the model before labelling. This is "
              "an integrity check, not a signature: someone who rewrites every file consistently is not caught.", ""]
    return "\n".join(lines)
