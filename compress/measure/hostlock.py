"""Honest latency with neighbours: while one process on this host times a model, the others pause.

Two workers of a study on one machine would otherwise time their candidates while the other trains, and
every p95 (so every service-level verdict) would include the neighbour's load. All compress processes of
a user on a host share two lock files:

- ``batch()`` wraps every batch of training or evaluation (``compress.data.batches``): it first waits
  while the gate is held (a measurement is running or waiting), then holds the busy lock shared while
  the batch runs.
- ``measuring()`` (latency) takes the gate exclusively (no new batch starts anywhere on the host), then the
  busy lock exclusively: it waits for the batches already running to end. A neighbour's training batch
  can take a second, longer than a whole measurement of a 1 ms model. Measurements are serialised too:
  two models timed at once disturb each other as much as training does.

flock is released by the kernel when a process dies, so a killed worker never leaves its neighbours paused.
Standard library only: ``verify`` and ``bench`` measure without torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path

_held = 0  # measurements this process is inside (nested measure() calls, compare() around measure())
_busy = 0  # batches this process is inside (a batch generator is suspended inside its own batch)
_fds: dict[str, int] = {}
paused_s = 0.0  # time this process spent waiting for a neighbour's measurement (reported per trial)


def lock_dir() -> Path:
    d = Path(os.environ.get("COMPRESS_LOCK_DIR") or Path(tempfile.gettempdir()) / f"compress-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _fd(name: str) -> int:
    if name not in _fds:
        _fds[name] = os.open(lock_dir() / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    return _fds[name]


def enabled() -> bool:
    return os.environ.get("COMPRESS_HOST_LOCK", "1") != "0"


@contextlib.contextmanager
def measuring():
    """Hold the host while timing: no neighbour's batch starts, and running ones are waited for."""
    global _held
    if _held or not enabled():
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    gate, busy = _fd("measure-gate"), _fd("busy")
    if _busy:  # this process's own batch generator is suspended, not running: do not wait for it
        fcntl.flock(busy, fcntl.LOCK_UN)
    fcntl.flock(gate, fcntl.LOCK_EX)
    try:
        fcntl.flock(busy, fcntl.LOCK_EX)
        _held += 1
        try:
            yield
        finally:
            _held -= 1
            fcntl.flock(busy, fcntl.LOCK_SH if _busy else fcntl.LOCK_UN)
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)


def _wait_gate() -> None:
    global paused_s
    gate = _fd("measure-gate")
    try:
        fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        t0 = time.perf_counter()
        fcntl.flock(gate, fcntl.LOCK_SH)
        paused_s += time.perf_counter() - t0
    fcntl.flock(gate, fcntl.LOCK_UN)


@contextlib.contextmanager
def batch():
    """Around one batch of heavy work: waits while another process measures, and lets a measurement that
    starts meanwhile wait for this batch to end."""
    global _busy
    if _held or not enabled():
        yield
        return
    if not _busy:
        _wait_gate()
        fcntl.flock(_fd("busy"), fcntl.LOCK_SH)  # blocks only if a measurement got in since the gate check
    _busy += 1
    try:
        yield
    finally:
        _busy -= 1
        if not _busy:
            fcntl.flock(_fd("busy"), fcntl.LOCK_UN)


def pause_point() -> None:
    """Wait while another process on this host measures (for work outside ``batch``)."""
    if not _held and enabled():
        _wait_gate()
