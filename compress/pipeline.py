"""One candidate, end to end: recipe -> distilled, pruned, quantized student -> ONNX -> measured record.

Everything is written into a staging folder beside ``results/<name>/`` and moved into place only when
the run has finished, so an interrupted or failed run never leaves a result that looks complete.
"""

from __future__ import annotations

import base64
import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from compress import __version__
from compress.data import Dataset, batches, calibration_inputs, load_dataset, split_overlaps
from compress.data.teacher_logits import cached_teacher_logits
from compress.errors import ParityError, TargetError
from compress.export import (
    check_parity,
    export_onnx,
    onnx_accuracy,
    onnx_correct,
    reference_logits,
)
from compress.io import (
    publish,
    read_json,
    sha256_file,
    staging_dir,
    write_json_atomic,
    write_text_atomic,
)
from compress.measure.latency import (
    LatencyStats,
    backend_for,
    compare,
    environment,
    measure,
)
from compress.measure.verdicts import test_accuracy_fields
from compress.models import build_model, takes_argument
from compress.recipe import (
    PruneConfig,
    Recipe,
    RecipeError,
    public_yaml,
    space_choices,
    with_values,
)
from compress.spec import InputSpec
from compress.teacher import load_teacher, model_size, teacher_warnings
from compress.techniques.distill import make_loss, teacher_logits_for
from compress.techniques.prune import adapt_batchnorm, prune_
from compress.techniques.quantize import quantize_int8, reduce_range
from compress.train import train_

ARTIFACT = "model.onnx"
RESTART_STATE = "short_state.pt"  # in a trial's folder: its first schedule's state where halving stopped it
TEACHER_FAMILY = "teacher"  # student.model value: start from the (pruned) teacher instead of a fresh family


@dataclass
class Stage:
    """One model the run produced: its ONNX file and the size of the PyTorch model it came from.

    MACs and parameters are counted when the stage is made: later techniques change the model in place.
    """

    name: str
    onnx: Path
    macs: int
    params: int
    int8: bool
    parity: dict

    @classmethod
    def of(cls, name: str, onnx: Path, model: nn.Module, int8: bool, parity: dict, spec: InputSpec) -> "Stage":
        macs, params = model_size(model, spec)
        return cls(name, onnx, macs, params, int8, parity)


def check_target(recipe: Recipe) -> str:
    """Fail before any work when the recipe asks for a device this machine does not have, or for int8
    models on a backend that cannot run them; returns the backend that will measure latency."""
    device = recipe.target.device
    try:
        backend = backend_for(device)
    except TargetError as err:
        raise RecipeError(f"target.device = {device!r}: {err}") from None
    if backend == "torch" and True in space_choices(recipe, "quantize.enabled"):
        raise RecipeError(
            f"target.device = {device!r}: ONNX Runtime's CUDA provider is not installed, so latency is measured "
            "with PyTorch on CUDA, which cannot run int8 ONNX graphs; install onnxruntime-gpu, or set "
            "quantize.enabled: false and leave quantize.enabled out of search.space")
    return backend


def check_teacher_use(recipe: Recipe, teacher_info: dict) -> None:
    """A student made by pruning the teacher needs a teacher Torch-Pruning can reshape (a PyTorch module)."""
    if teacher_info.get("prunable", True):
        return
    for r in [with_values(recipe, {"student.model": c}) for c in space_choices(recipe, "student.model")]:
        if from_teacher(r) and any(v for v in space_choices(r, "prune.ratio")) and True in space_choices(r, "prune.enabled"):
            raise RecipeError(
                f"student.model = 'teacher' prunes the teacher, but teacher.checkpoint {teacher_info['checkpoint']} is "
                f"a {teacher_info['format']} file, which cannot be pruned; give the teacher as a state_dict (with "
                "teacher.model) or a pickled module, or search student families (cnn, mlp, tv:<arch>, an import path)")


def check_students(recipe: Recipe, spec: InputSpec) -> None:
    """Build every student family the recipe may use once, so a wrong name or kwarg fails before training."""
    for choice in space_choices(recipe, "student.model"):
        r = with_values(recipe, {"student.model": choice})
        if not from_teacher(r):
            build_model(choice, spec, student_kwargs(r), "student.model")


def prepare(recipe: Recipe, data: Dataset | None = None) -> tuple[Dataset, nn.Module, dict]:
    """Everything a run needs, every input checked before any work: target, data, teacher, students."""
    check_target(recipe)
    data = data or load_dataset(recipe.data)
    for warning in split_overlaps(data):
        tqdm.write(warning)
    teacher, tinfo = load_teacher(recipe.teacher, data.spec)
    check_teacher_use(recipe, tinfo)
    check_students(recipe, data.spec)
    return data, teacher, tinfo


def evaluated(onnx: Path, data: Dataset, keep: bool = False) -> tuple[float, np.ndarray]:
    """An ONNX model's validation accuracy and per-sample correctness on the test split (for paired tests).
    ``keep``: kept beside the file (``<stem>.accuracy.json``, keyed by its sha256 and the data's fingerprint),
    so the report reads what a trial or a baseline's own process computed instead of evaluating it again."""
    onnx = Path(onnx)
    kept_at, key = onnx.with_name(f"{onnx.stem}.accuracy.json"), None
    if keep:
        key = {"model_sha256": sha256_file(onnx), "data_fingerprint": data.fingerprint, "n_test": len(data.test)}
        try:
            got = read_json(kept_at)
            if {k: got.get(k) for k in key} == key:
                bits = np.frombuffer(base64.b64decode(got["test_correct_bits"]), np.uint8)
                return float(got["val_accuracy"]), np.unpackbits(bits, count=key["n_test"]).astype(bool)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: computed again
    val, correct = onnx_accuracy(onnx, data.val), onnx_correct(onnx, data.test)
    if keep:
        write_json_atomic(kept_at, {**key, "val_accuracy": val,
                                    "test_correct_bits": base64.b64encode(np.packbits(correct).tobytes()).decode()})
    return val, correct


def model_metrics(stage: Stage, data: Dataset, lat: LatencyStats,
                  evaluation: tuple[float, np.ndarray] | None = None) -> dict:
    """One model's record: accuracy of its ONNX file on the validation and test splits (test with its 95% CI;
    from ``evaluation``, its ``evaluated`` result, when the caller has it), size, latency."""
    val, correct = evaluation if evaluation is not None else evaluated(stage.onnx, data)
    return {
        "val_accuracy": val,
        **test_accuracy_fields(correct),
        "params": stage.params,
        "macs": stage.macs,
        "size_bytes": stage.onnx.stat().st_size,
        "int8": stage.int8,
        **lat.record_fields(),
        "parity": stage.parity,
    }


def machine_info(device: str = "cpu") -> dict:
    return {**environment(device), "compress": __version__}


def from_teacher(recipe: Recipe) -> bool:
    return recipe.student.model == TEACHER_FAMILY


def removes_channels(recipe: Recipe) -> bool:
    return recipe.prune.enabled and recipe.prune.ratio > 0


def trains(recipe: Recipe) -> bool:
    """Whether the student is trained at all: a copy of the teacher that loses no channels is not (it is
    the teacher, at most quantized); every other student is."""
    return removes_channels(recipe) or not from_teacher(recipe)


def student_kwargs(recipe: Recipe) -> dict:
    """The student family's constructor arguments: ``student.kwargs``, plus the width and depth shorthands
    for the families that take them (cnn, mlp; other families ignore them, as they mean nothing there)."""
    s = recipe.student
    short = {k: v for k, v in (("width", s.width), ("depth", s.depth)) if v is not None and takes_argument(s.model, k)}
    return {**s.kwargs, **short}


def build_student(recipe: Recipe, teacher: nn.Module, spec: InputSpec, data: Dataset | None = None) -> nn.Module:
    """The untrained student: the recipe's family built for ``spec`` with its kwargs, or, for
    ``student.model: teacher``, the teacher with ``prune.ratio`` of its channels removed from a copy
    (BatchNorm re-estimated on ``data``'s training images when given); unpruned, the teacher itself."""
    if from_teacher(recipe):
        if not removes_channels(recipe):
            return teacher  # not trained, not changed: exported (and quantized) as it is
        return _prune_and_adapt(copy.deepcopy(teacher), recipe.prune, spec, data)
    return build_model(recipe.student.model, spec, student_kwargs(recipe), "student.model")


def _prune_and_adapt(model: nn.Module, cfg: PruneConfig, spec: InputSpec, data: Dataset | None) -> nn.Module:
    """Prune, then re-estimate BatchNorm statistics on training images (skipped without ``data``)."""
    model = prune_(model, cfg, spec.batch_shape(1))
    if data is None:
        return model
    return adapt_batchnorm(model, (x for _, x, _ in batches(data.train, 256)))


# A probe whose p95 misses the service level by less than this factor is timed in a second window before its
# candidate is left untrained: one model's p95 can move ~1.5x between minutes on a shared machine
# (measured: results/README.md, "Latency first").
RECHECK_BELOW = 1.6


def probe_latency(recipe: Recipe, data: Dataset, teacher: nn.Module, work: Path,
                  windows: list[float] | None = None) -> LatencyStats:
    """The candidate's latency before any training: its architecture built, pruned and exported (quantized
    with a small calibration set when int8 is on), then timed like the final model; dense kernels take as
    long whatever the weights are. A near miss of the service level (``RECHECK_BELOW``) is timed again and
    the lower p95 kept (interference only adds latency); ``windows`` gets each window's p95."""

    torch.manual_seed(recipe.seed)
    p, q = recipe.prune, recipe.quantize
    # Structure only: a teacher copy comes pruned once, as its trial's (without the BatchNorm re-estimation,
    # which the latency does not see); a scratch student is pruned as its trial prunes it after distillation.
    student = build_student(recipe, teacher, data.spec)
    if p.enabled and not from_teacher(recipe):
        student = prune_(student, p, data.spec.batch_shape(1))
    path = export_onnx(student, work / "probe_fp32.onnx", recipe.export.opset, data.spec.shape)
    if q.enabled:
        calib, _ = calibration_inputs(data.train, min(q.calibration_size, 64), recipe.seed)
        path = quantize_int8(path, work / "probe_int8.onnx", calib, q)
    t = recipe.target
    stats = measure(path, recipe.latency, t.batch_size, t.threads, t.device)
    slo = recipe.slo.p95_ms
    got = [stats.p95_ms]
    if slo is not None and slo < stats.p95_ci95_ms[0] and stats.p95_ms < RECHECK_BELOW * slo:
        again = measure(path, recipe.latency, t.batch_size, t.threads, t.device)
        got.append(again.p95_ms)
        stats = min(stats, again, key=lambda w: w.p95_ms)
    if windows is not None:
        windows.extend(got)
    return stats


def compress_student(recipe: Recipe, data: Dataset, teacher: nn.Module, teacher_info: dict, work: Path,
                     on_epoch: Callable[[int, float], None] | None = None,
                     at_restart: Callable[[float, float], bool] | None = None,
                     short: dict | None = None, state: Path | None = None,
                     int8_rejected: Callable[[ParityError], None] | None = None) -> list[Stage]:
    """Distil (or train) the student, prune + fine-tune, export and quantize; one Stage per model made.

    A scratch student is distilled with ``distill.train``, then pruned and fine-tuned with
    ``prune.finetune``. A student made from the teacher (``student.model: teacher``) already knows the
    task: it is pruned first and then distilled with the fine-tuning schedule, ``prune.finetune``
    (prune, then distil: Sanh et al. 2020, Muralidharan et al. 2024). Unpruned (``prune.ratio: 0`` or
    pruning off), it is not trained: only exported and, with int8 on, quantized.

    ``at_restart`` (search.halving) is called when the first schedule's first cycle ends; when it returns
    False that schedule stops there and the later ones use the ``short`` overrides, so the model is the one
    ``with_values(recipe, short)`` makes. ``state``: the first schedule's restart state (``train_``), so a
    candidate kept short can be finished later without its first cycle. ``int8_rejected``: called when the
    int8 copy fails its parity gate, and the fp32 stages are returned; without it the error propagates.
    """
    torch.manual_seed(recipe.seed)
    d, p, q = recipe.distill, recipe.prune, recipe.quantize
    if from_teacher(recipe):
        schedules = [(p.finetune, "student_pruned_fp32")] if removes_channels(recipe) else []
    else:
        schedules = [(d.train, "student_fp32")] + ([(p.finetune, "student_pruned_fp32")] if p.enabled else [])
    logits = teacher_logits_for([(d, t) for t, _ in schedules], teacher, data, teacher_info["sha256"])
    student = build_student(recipe, teacher, data.spec, data)
    stages: list[Stage] = []
    stopped = False  # at the first schedule's restart (not promoted)
    for i, (schedule, name) in enumerate(schedules):
        if i:  # the scratch student's second schedule: prune, then fine-tune
            student = _prune_and_adapt(student, p, data.spec, data)
            if stopped:  # not promoted: the later schedules as short as the first
                schedule = schedule.model_validate(
                    {**schedule.model_dump(), "epochs": (short or {}).get("prune.finetune.epochs", schedule.epochs)})
        desc = ("distill" if d.enabled else "train") + ("" if name == "student_fp32" else " (pruned)")
        history = train_(student, data.train, schedule, loss_fn=make_loss(d, schedule, teacher, logits),
                         val=data.val, seed=recipe.seed + i, desc=desc, on_epoch=on_epoch if i == 0 else None,
                         at_restart=at_restart if i == 0 else None, state=state if i == 0 else None)
        stopped = stopped or len(history) < schedule.epochs
        ref = reference_logits(student, data.val)
        stages.append(_export_stage(name, student, recipe, data, work, ref))
    if not schedules:  # the teacher itself, as is: its reference logits computed once, like its soft targets
        ref = cached_teacher_logits(teacher, data.val, teacher_info["sha256"], data.fingerprint, exact=True)
        stages.append(_export_stage("student_fp32", student, recipe, data, work, ref))
    if q.enabled:
        calib, calib_fp = calibration_inputs(data.train, q.calibration_size, recipe.seed)
        path = quantize_int8(stages[-1].onnx, work / f"{stages[-1].name.replace('fp32', 'int8')}.onnx", calib, q)
        try:
            parity = check_parity(student, path, data.val, int8=True, min_agreement=recipe.export.int8_min_agreement,
                                  reference=ref)
        except ParityError as err:
            if int8_rejected is None:
                raise
            int8_rejected(err)
            return stages
        stages.append(Stage.of(path.stem, path, student, True, {**parity, "calibration_fingerprint": calib_fp,
                                                                "reduce_range": reduce_range(q)},
                               data.spec))
    return stages


def _export_stage(name: str, model: nn.Module, recipe: Recipe, data: Dataset, work: Path,
                  reference: np.ndarray | None = None) -> Stage:
    path = export_onnx(model, work / f"{name}.onnx", recipe.export.opset, data.spec.shape)
    parity = check_parity(model, path, data.val, int8=False, max_abs_diff=recipe.export.fp32_max_abs_diff,
                          reference=reference)
    return Stage.of(name, path, model, False, parity, data.spec)


def _ratio_p50(rec: dict) -> float:
    """The p50 a speed-up is computed from: the interleaved one when the record has it."""
    return rec.get("latency_interleaved", {}).get("p50_ms", rec["latency_p50_ms"])


def summarize(teacher: dict, artifact: dict) -> dict:
    keys = ["val_accuracy", "test_accuracy", "test_accuracy_ci95", "latency_p50_ms", "latency_p95_ms", "params",
            "macs", "size_bytes"]
    return {
        "teacher": {k: teacher[k] for k in keys},
        "artifact": {k: artifact[k] for k in keys},
        "speedup_p50": _ratio_p50(teacher) / _ratio_p50(artifact),
        "accuracy_drop_pp": 100.0 * (teacher["test_accuracy"] - artifact["test_accuracy"]),
    }


def run(recipe: Recipe, data: Dataset | None = None) -> dict:
    """The single-recipe job: writes ``results/<name>/`` and returns its summary."""
    t0 = time.time()
    data, teacher, tinfo = prepare(recipe, data)
    out = recipe.out_path
    work = staging_dir(out)
    try:
        stages = compress_student(recipe, data, teacher, tinfo, work)
        teacher_stage = _export_stage("teacher", teacher, recipe, data, work)
        all_stages = [teacher_stage, *stages]
        tqdm.write(f"measuring latency of {len(all_stages)} models interleaved "
                   f"(batch {recipe.target.batch_size}, {recipe.target.threads} thread(s))")
        lat = compare({s.name: s.onnx for s in all_stages}, recipe.latency, recipe.target.batch_size,
                      recipe.target.threads, recipe.target.device)
        metrics = {s.name: model_metrics(s, data, lat[s.name]) for s in all_stages}
        for warning in teacher_warnings(metrics["teacher"]["val_accuracy"], tinfo, data.spec, teacher, data.val):
            tqdm.write(warning)
        final = stages[-1]
        shutil.copyfile(final.onnx, work / ARTIFACT)
        (work / "teacher.onnx").unlink()  # the teacher is committed as a checkpoint; its ONNX is 7 MB
        summary = {
            "recipe": recipe.name,
            **summarize(metrics["teacher"], metrics[final.name]),
            "artifact_stage": final.name,
            "target": recipe.target.model_dump(),
            "teacher_sha256": tinfo["sha256"],
            "data_fingerprint": data.fingerprint,
            "spec": data.spec.to_dict(),
            "machine": machine_info(recipe.target.device),
            "wall_time_s": round(time.time() - t0, 1),
        }
        write_text_atomic(work / "recipe.yaml", public_yaml(recipe))
        write_json_atomic(work / "metrics.json", {"models": metrics, "artifact": final.name})
        write_json_atomic(work / "summary.json", summary)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish(work, out)
    summary["output_dir"] = str(out)
    return summary
