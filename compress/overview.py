"""``compress inspect``: what a recipe's data and teacher are, and whether the teacher already meets the
service level, before anything is trained. Everything is measured the way the search measures it: the
teacher's accuracy from its ONNX file on the validation and test splits, its latency by the product's
protocol on ``target.device`` at ``target.batch_size`` and ``target.threads``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from compress.recipe import Recipe
from compress.export import export_onnx, onnx_accuracy
from compress.measure.latency import measure
from compress.pipeline import prepare
from compress.report import mmacs
from compress.teacher import model_size, teacher_warnings


def inspect_recipe(recipe: Recipe) -> dict:
    """The facts ``compress inspect`` prints, as a record."""

    data, teacher, tinfo = prepare(recipe)
    spec = data.spec
    counts = [int(v) for v in data.train.labels.bincount(minlength=spec.num_classes)]
    macs, params = model_size(teacher, spec)
    t = recipe.target
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(teacher, Path(tmp) / "teacher.onnx", recipe.export.opset, spec.shape)
        val, test = onnx_accuracy(onnx, data.val), onnx_accuracy(onnx, data.test)
        lat = measure(onnx, recipe.latency, t.batch_size, t.threads, t.device)
        size = onnx.stat().st_size
    slo = recipe.slo
    verdict = None
    if slo.p95_ms is not None:
        verdict = {"p95_ms": slo.p95_ms, "teacher_p95_ms": lat.p95_ms, "met": lat.p95_ms <= slo.p95_ms,
                   "ratio": lat.p95_ms / slo.p95_ms}
    return {
        "data": {"source": spec.source, "spec": spec.to_dict(), "description": spec.describe(),
                 "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
                 "train_class_counts": counts, "fingerprint": data.fingerprint},
        "teacher": {"checkpoint": tinfo["checkpoint"], "format": tinfo["format"], "sha256": tinfo["sha256"],
                    "prunable": tinfo["prunable"], "val_accuracy": val, "test_accuracy": test, "params": params,
                    "macs": macs, "onnx_size_bytes": size, "latency": lat.to_dict(),
                    "warnings": teacher_warnings(val, tinfo, spec, teacher, data.val)},
        "target": t.model_dump(),
        "slo": verdict,
    }


def format_inspection(r: dict) -> str:
    d, te, spec = r["data"], r["teacher"], r["data"]["spec"]
    shape = "x".join(map(str, spec["shape"]))
    kind = f"images {shape} ({spec['kind'] == 'image' and ('grayscale' if spec['shape'][0] == 1 else 'RGB')})" \
        if spec["kind"] == "image" else f"feature vectors of {spec['shape'][0]} values"
    s = d["splits"]
    labels = spec["labels"]
    shown = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")
    counts = d["train_class_counts"]
    lat, t = te["latency"], r["target"]
    lines = [
        f"data: {d['source']}: {kind}, {len(labels)} classes",
        f"  splits: train {s['train']:,} / validation {s['val']:,} / test {s['test']:,}"
        f"  (training samples per class {min(counts):,}-{max(counts):,})",
        f"  classes: {shown}",
        f"  preprocessing: {d['description']}",
        f"teacher: {te['checkpoint']} ({te['format']}{'' if te['prunable'] else ', cannot be pruned: students are distilled'}"
        f", sha256 {te['sha256'][:12]})",
        f"  accuracy: validation {100 * te['val_accuracy']:.2f}%, test {100 * te['test_accuracy']:.2f}%",
        *te["warnings"],
        f"  size: {te['params']:,} parameters, {mmacs(te['macs'])} MMACs, ONNX {te['onnx_size_bytes'] / 2**20:.2f} MiB",
        f"  latency on {t['device']}, batch {t['batch_size']}, {t['threads']} thread(s): p50 {lat['p50_ms']:.3f} ms, "
        f"p95 {lat['p95_ms']:.3f} ms ({lat['n_runs']} runs), {lat['throughput_sps']:,.0f} samples/s",
    ]
    v = r["slo"]
    if v is None:
        lines.append("service level: no slo.p95_ms in the recipe; the search will still give the accuracy/latency front")
    elif v["met"]:
        lines.append(f"service level: the teacher already meets p95 <= {v['p95_ms']} ms ({v['teacher_p95_ms']:.3f} ms, "
                     f"{100 * (1 - v['ratio']):.0f}% headroom); a search can still find a cheaper model")
    else:
        lines.append(f"service level: the teacher MISSES p95 <= {v['p95_ms']} ms: {v['teacher_p95_ms']:.3f} ms is "
                     f"{v['ratio']:.1f}x the budget; `compress search` looks for the most accurate model that meets it")
    return "\n".join(lines)
