"""Honest latency with neighbours: while one process on this host times a model, the others pause.

Two workers of a study on one machine would otherwise time their candidates while the other trains, and
every p95 (so every service-level verdict) would include the neighbour's load. All compress processes of
a user on a host share one lock file:

- ``measuring()`` (latency): holds it exclusively. Measurements on the host are serialised too: two
  models timed at once disturb each other as much as training does.
- ``pause_point()`` (every batch of training or evaluation): waits while the gate is held. A batch already
  running when a measurement starts ends within milliseconds, inside the measurement's warm-up runs.

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
    """Hold the host while timing: neighbours pause at their next batch."""
    global _held
    if _held or not enabled():
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    gate = _fd("measure-gate")
    fcntl.flock(gate, fcntl.LOCK_EX)
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        fcntl.flock(gate, fcntl.LOCK_UN)


def pause_point() -> None:
    """Called before each batch of heavy work: returns at once unless another process is measuring."""
    global paused_s
    if _held or not enabled():
        return
    gate = _fd("measure-gate")
    try:
        fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        t0 = time.perf_counter()
        fcntl.flock(gate, fcntl.LOCK_SH)
        paused_s += time.perf_counter() - t0
    fcntl.flock(gate, fcntl.LOCK_UN)
