"""The teacher's logits on a split, computed once per (teacher, data) pair and kept under ``.cache/`` as a
memory-mapped .npy file: distillation without augmentation and the parity reference read them back."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from compress.data import Split
from compress.train import iter_logits, model_device, native_bf16

CACHE_DIR = Path(".cache/teacher_logits")


def cached_teacher_logits(teacher: nn.Module, split: Split, teacher_sha256: str, data_fingerprint: str,
                          cache_dir: Path = CACHE_DIR, exact: bool = False) -> np.ndarray:
    """Teacher logits for every sample of ``split``, computed once and kept under ``.cache/`` as a .npy
    file that is memory-mapped, not read: a large training set's logits need not fit in memory. Keyed by
    the teacher's sha256 and the data's fingerprint, so a changed teacher or dataset never reuses them.
    ``exact``: in fp32, never bf16 (the parity reference of the teacher as it is, ``export.reference_logits``)."""
    path = cache_dir / f"{teacher_sha256[:16]}-{data_fingerprint[:16]}-{len(split)}{'-fp32' if exact else ''}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One process computes them; another worker of the study on this machine waits for the file, then reads it.
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"teacher logits: another process on this machine is computing them; waiting for {path}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _read_or_compute(path, teacher, split, exact)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_or_compute(path: Path, teacher: nn.Module, split: Split, exact: bool = False) -> np.ndarray:
    if path.is_file():
        try:
            logits = np.load(path, mmap_mode="r")
            if logits.ndim == 2 and len(logits) == len(split):
                return logits
        except (ValueError, OSError):
            pass  # a damaged cache file is recomputed below
    if not exact:
        tqdm.write(f"teacher logits for {len(split):,} training samples: computing them once (about a minute for "
                   f"the default teacher on 2 cores), cached as {path}")
    tmp = path.with_name(path.name + ".tmp")
    out = None
    # bf16 where this CPU or GPU computes it natively: soft targets need no more digits, and it is over twice
    # as fast (measured: results/README.md, inference_format.json). Accuracy is never measured this way.
    bf16 = not exact and native_bf16(model_device(teacher))
    # Every core: a neighbour worker (search.workers) that needs them waits for them meanwhile. Not for the exact
    # logits, which one trial needs while the neighbours go on (timing their models, say): this process's share.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads if exact else max(threads, len(os.sched_getaffinity(0))))
    try:
        for idx, logits in iter_logits(teacher, split, 500, bf16=bf16):  # written as computed: never all in memory
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(split), logits.shape[1]))
            out[idx.numpy()] = logits.numpy()
    finally:
        torch.set_num_threads(threads)
    out.flush()
    del out
    tmp.replace(path)
    return np.load(path, mmap_mode="r")
