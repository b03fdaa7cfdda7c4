"""What a user would otherwise do, measured in the same run so the front is judged against it.

(a) the teacher quantized to int8 alone; (b) the teacher with a fraction of its channels pruned and
fine-tuned on hard labels; (c) the chosen student architecture trained on hard labels, without distillation.
Each is kept under ``results/<study>/baselines/<name>/`` so a resumed study does not rebuild it, and
under ``.cache/baselines/`` by what shapes its model (teacher, data, seed and the model-making sections of
the recipe, not the study's name, service level or budget), so the next study that needs the same model
(the same search with another service level, say) copies it instead of training it again.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import shutil
import signal
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch
import torch.multiprocessing as tmp
import torch.nn as nn
from tqdm.auto import tqdm

from compress.data import Dataset
from compress.errors import CompressError, TargetError
from compress.io import copy_atomic, read_json, sha256_file, write_json_atomic
from compress.measure.latency import backend_for
from compress.pipeline import TEACHER_FAMILY, Stage, compress_student, evaluated, trains
from compress.recipe import Recipe, fingerprint_of, with_values
from compress.teacher import load_teacher
from compress.techniques.quantize import reduce_range
from compress.train import native_bf16, resolve_device

CACHE_DIR = Path(".cache/baselines")
# The recipe sections that make a baseline's model; the rest (name, search budget, service level, latency
# protocol, capacity, cost) only say what is done with it.
MODEL_SECTIONS = ("seed", "data", "teacher", "student", "distill", "prune", "quantize", "export")


def _digest(key: dict) -> str:
    return fingerprint_of(key, 16)


def _stage(folder: Path, m: dict) -> Stage:
    return Stage(m["name"], folder / "model.onnx", m["macs"], m["params"], m["int8"], m["parity"])


def _cached(folder: Path, key: dict, build, label: str, cache: Path) -> Stage | None:
    """The stage in ``folder`` when it was made under ``key``, else a copy from the shared ``cache``, else
    ``build(folder)`` (then cached; None when ``build`` is None: only looking). One made under another key
    (other settings, or an older version of compress) is made again."""
    digest = _digest(key)
    meta = folder / "stage.json"
    if meta.is_file() and (folder / "model.onnx").is_file():
        m = read_json(meta)
        if m.get("key") == digest:
            return _stage(folder, m)
    shared = cache / digest
    if (shared / "stage.json").is_file() and (shared / "model.onnx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        copy_atomic(shared / "model.onnx", folder / "model.onnx")
        m = read_json(shared / "stage.json")
        write_json_atomic(meta, m)
        tqdm.write(f"{label} {m['name']}: the same model as in {shared} (same teacher, data and settings), copied")
        return _stage(folder, m)
    if build is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stage = build(folder)
    stage = dataclasses.replace(stage, onnx=stage.onnx.replace(folder / "model.onnx"))
    m = {"key": digest, "name": stage.name, "macs": stage.macs, "params": stage.params, "int8": stage.int8,
         "parity": stage.parity}
    write_json_atomic(meta, m)
    tmp = shared.with_name(f"{shared.name}.{os.getpid()}.tmp")  # whole or absent: two studies may race here
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(folder / "model.onnx", tmp / "model.onnx")
    write_json_atomic(tmp / "stage.json", m)
    try:
        tmp.replace(shared)
    except OSError:  # another study cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return stage


def model_key(r: Recipe, data: Dataset, tinfo: dict) -> dict:
    """What makes the model ``compress_student(r, ...)`` returns: the model-making sections, the data and
    teacher actually loaded, and what this machine resolves (bf16: auto, quantize.reduce_range: None)."""

    full = r.to_dict()
    # bf16: auto as each schedule's own device resolves it
    bf16 = sorted({native_bf16(resolve_device(c.device)) for c in (r.distill.train, r.prune.finetune)})
    return {**{k: full[k] for k in MODEL_SECTIONS}, "data_fingerprint": data.fingerprint, "teacher": tinfo["sha256"],
            "native_bf16": bf16,
            "reduce_range": reduce_range(r.quantize) if r.quantize.enabled else None}


@dataclasses.dataclass(frozen=True)
class Build:
    """One model made after the search: a baseline or the chosen candidate's full schedule. ``recipe`` makes
    it (resumed from ``state``, a restart state, when given); it is kept under ``root/name`` and ``cache``."""

    name: str
    recipe: Recipe
    root: Path
    label: str = "baseline"
    state: Path | None = None
    cache: Path = dataclasses.field(default_factory=lambda: CACHE_DIR)

    def key(self, data: Dataset, tinfo: dict) -> dict:
        key = {"name": self.name, **model_key(self.recipe, data, tinfo)}
        return key if self.state is None else {**key, "resumed_from": sha256_file(self.state)}


def build(b: Build, data: Dataset, teacher: nn.Module, tinfo: dict) -> Stage:
    """The last model ``compress_student`` makes of ``b.recipe``, or the one kept from before (see ``_cached``)."""

    def make(folder: Path) -> Stage:
        return dataclasses.replace(compress_student(b.recipe, data, teacher, tinfo, folder, state=b.state)[-1],
                                   name=b.name)

    stage = _cached(b.root / b.name, b.key(data, tinfo), make, b.label, b.cache)
    evaluated(stage.onnx, data, keep=True)  # in the process that made it (side by side), for the report's paired tests
    return stage


def adopt(b: Build, model: Path, rec: dict, data: Dataset, tinfo: dict) -> Stage:
    """``b``'s model when a trial of the search made the same one (``same_untrained``): its file copied and
    kept like a built one (``rec``: the trial's record, for its size, int8 flag and parity)."""

    def copy(folder: Path) -> Stage:
        shutil.copyfile(model, folder / "adopted.onnx")
        return Stage(b.name, folder / "adopted.onnx", rec["macs"], rec["params"], rec["int8"], rec["parity"])

    return _cached(b.root / b.name, b.key(data, tinfo), copy, b.label, b.cache)


def same_untrained(a: Recipe, b: Recipe) -> bool:
    """Whether two recipes make the same model without any training: the teacher as it is (no channel removed),
    quantized and exported alike from the same calibration sample (seed); KD and pruning settings then shape
    nothing. So the int8 teacher baseline can be copied from a trial of the teacher as it is."""
    return (not trains(a) and not trains(b) and a.student.model == b.student.model == TEACHER_FAMILY
            and all(getattr(a, k) == getattr(b, k) for k in ("seed", "data", "teacher", "quantize", "export")))


def kept(b: Build, data: Dataset, tinfo: dict) -> Stage | None:
    """``b``'s model when it is kept already (this study's folder or the shared cache): nothing to train."""
    return _cached(b.root / b.name, b.key(data, tinfo), None, b.label, b.cache)


def build_all(builds: list[Build], data: Dataset, teacher: nn.Module, tinfo: dict, processes: int = 1,
              meanwhile=None) -> dict[str, Stage | CompressError]:
    """Every build's model, or the CompressError that stopped it (a baseline that cannot be made is left out
    of the comparison; the caller decides). Those kept from before are copied first. With ``processes`` > 1
    and at least two to train, they train side by side in processes of their own, this process's threads
    shared out between them (faster than one after the other: results/README.md, train_threads.json), in
    the given order (put the longest first); a finished one is kept even when another fails. ``meanwhile``:
    the caller's own work, called once, when the first process ends or after the builds made in this process."""
    done: dict[str, Stage | CompressError] = {}
    todo = []
    for b in builds:
        stage = kept(b, data, tinfo)
        if stage is None:
            todo.append(b)
        else:
            done[b.name] = stage
    if processes <= 1 or len(todo) < 2:
        for b in todo:
            try:
                done[b.name] = build(b, data, teacher, tinfo)
            except CompressError as err:  # e.g. int8 failing its parity gate, a teacher that cannot be pruned
                done[b.name] = err
        if meanwhile is not None:
            meanwhile()
        return {b.name: done[b.name] for b in builds}

    processes = min(processes, len(todo))
    threads = max(1, torch.get_num_threads() // processes)
    tqdm.write(f"training {len(todo)} models side by side, {processes} at a time with {threads} thread(s) each, "
               f"in processes of their own: {', '.join(b.name for b in todo)}")
    done.update(SideBySide(todo, data, tinfo, processes, threads).results(meanwhile))
    return {b.name: done[b.name] for b in builds}


class SideBySide:
    """Builds started in processes of their own (``processes`` at a time, ``threads`` each, in the given order);
    ``results`` waits for them: each one's Stage, or the CompressError that stopped it."""

    def __init__(self, builds: list[Build], data: Dataset, tinfo: dict, processes: int, threads: int):
        self.pool = cf.ProcessPoolExecutor(processes, mp_context=tmp.get_context("spawn"), initializer=_child_init,
                                           initargs=(data, tinfo, threads))
        self.builds = {b.name: b for b in builds}
        self.futures = {b.name: self.pool.submit(_child_build, b) for b in builds}
        self.threads = threads * processes

    def running(self) -> bool:
        return not all(f.done() for f in self.futures.values())

    def makes(self, b: Build, data: Dataset, tinfo: dict) -> bool:
        """Whether one of these builds makes ``b``'s model (same name, same model key)."""
        mine = self.builds.get(b.name)
        return mine is not None and mine.key(data, tinfo) == b.key(data, tinfo)

    def stop(self) -> None:
        """Give up on the builds not finished yet: their processes are ended (a finished one is kept, as
        ``build`` keeps every model it makes; a model ended half-way left no record, so it is made again)."""
        workers = dict(getattr(self.pool, "_processes", None) or {})  # the standard library's own record of them
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in workers.values():
            p.terminate()
        for p in workers.values():
            p.join()

    def results(self, meanwhile=None) -> dict[str, Stage | CompressError]:
        """``meanwhile``: called once the first build ends (its process's cores free while the others go on)."""

        done: dict[str, Stage | CompressError] = {}
        try:
            if meanwhile is not None:
                cf.wait(self.futures.values(), return_when=cf.FIRST_COMPLETED)
                meanwhile()
            for name, f in self.futures.items():
                try:
                    done[name] = f.result()
                except CompressError as err:
                    done[name] = err
                except BrokenProcessPool as err:
                    raise RuntimeError(f"the process training {name} died ({err}); the models finished before it "
                                       "are kept, run the same command again to go on") from None
        except KeyboardInterrupt:  # the builds' processes ignore Ctrl-C: they are ended here
            self.stop()
            raise
        finally:
            self.pool.shutdown(cancel_futures=True)
        return done


_child: dict = {}


def _child_init(data: Dataset, tinfo: dict, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (SideBySide.results)
    torch.set_num_threads(threads)
    _child.update(data=data, tinfo=tinfo, teachers={})


def _child_build(b: Build) -> Stage:
    """One build in a side-by-side process: its output lines prefixed with its name, no redrawn bars."""
    key = b.recipe.teacher.model_dump_json()  # loaded here, not sent: TorchScript and ONNX teachers cannot be pickled
    if key not in _child["teachers"]:
        _child["teachers"][key] = load_teacher(b.recipe.teacher, _child["data"].spec)[0]
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Prefixed(out, b.name), _Prefixed(err, b.name)
    try:
        return build(b, _child["data"], _child["teachers"][key], _child["tinfo"])
    finally:
        sys.stdout.flush()
        sys.stdout, sys.stderr = out, err


class _Prefixed:
    """A text stream that starts each line with ``[name] `` and is not a terminal (tqdm draws no bar on it)."""

    def __init__(self, stream, name: str):
        self.stream, self.prefix, self.at_start = stream, f"[{name}] ", True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            if self.at_start:
                self.stream.write(self.prefix)
            self.stream.write(part)
            self.at_start = part.endswith(("\n", "\r"))
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def full_schedule(r: Recipe, name: str, root: Path, state: Path | None = None) -> Build:
    """``r`` trained on its whole schedule and the whole training split: the chosen candidate that
    search.halving kept to its short schedule or that trained on search.train_fraction of the split,
    cached like a baseline so that a report run again does not train it again. With
    ``state``, the restart state its short schedule saved, the schedule goes on from there (``train_``)."""
    return Build(name, r, root, label="model", state=state)


def unmeasurable(recipe: Recipe) -> dict[str, str]:
    """The baselines the latency target cannot run, each with why: int8 graphs on CUDA without
    onnxruntime-gpu (PyTorch measures there, fp32 only)."""
    if backend_for(recipe.target.device) != "torch":
        return {}
    return {"teacher_int8": f"latency on target.device {recipe.target.device!r} is measured with PyTorch, "
                            "which cannot run int8 ONNX graphs (install onnxruntime-gpu to compare it)"}


def teacher_int8(recipe: Recipe, root: Path) -> Build:
    """The teacher, unpruned and untrained, quantized with the recipe's own quantize settings; a TargetError,
    before any work, where the latency target cannot run int8 graphs."""
    why = unmeasurable(recipe).get("teacher_int8")
    if why:
        raise TargetError(why)
    r = with_values(recipe, {"student.model": TEACHER_FAMILY, "prune.enabled": False, "quantize.enabled": True})
    return Build("teacher_int8", r, root)


def teacher_pruned(recipe: Recipe, root: Path) -> Build:
    """The teacher with ``search.baseline_prune_ratio`` of its channels pruned and fine-tuned on hard labels
    for ``search.baseline_finetune``; fp32: what a user who only prunes would ship, without this tool (no
    distillation, none of the study's settings)."""
    s = recipe.search
    r = with_values(recipe, {"student.model": TEACHER_FAMILY, "distill.enabled": False, "prune.enabled": True,
                             "prune.ratio": s.baseline_prune_ratio, "prune.finetune": s.baseline_finetune.model_dump(),
                             "quantize.enabled": False})
    return Build(f"teacher_pruned{int(round(100 * s.baseline_prune_ratio))}", r, root)


def student_without_kd(chosen: Recipe, root: Path) -> Build:
    """The chosen candidate's recipe with distillation off: same architecture, pruning and quantization."""
    return Build("student_no_kd", with_values(chosen, {"distill.enabled": False}), root)
