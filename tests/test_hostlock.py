"""compress.measure.hostlock: a worker's batch waits while another process on the host times a model."""

import json
import os
import subprocess
import sys
import threading

import pytest

from compress.measure import hostlock

# A neighbour on this host (another process, the same lock folder) tries each named lock without waiting,
# and prints which it could take; it lets go of each at once.
NEIGHBOUR_TRY = """
import fcntl, json, os, sys
mode = fcntl.LOCK_EX if sys.argv[1] == "ex" else fcntl.LOCK_SH
free = {}
for name in sys.argv[2:]:
    fd = os.open(os.path.join(os.environ["COMPRESS_LOCK_DIR"], name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        free[name] = True
    except BlockingIOError:
        free[name] = False
    os.close(fd)
print(json.dumps(free))
"""
LOCKS = ("measure-gate", "busy")


def neighbour_can_take(locks, mode: str = "sh", names=LOCKS) -> dict[str, bool]:
    """Could a neighbour process take each lock now (shared by default, ``mode="ex"``: exclusively)?"""
    proc = subprocess.run([sys.executable, "-c", NEIGHBOUR_TRY, mode, *names], capture_output=True, text=True,
                          check=False, timeout=30, env={**os.environ, "COMPRESS_LOCK_DIR": str(locks)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def own_locks(tmp_path, monkeypatch):
    """A lock folder of this test's own, the host lock on, and this process's lock files closed afterwards."""
    locks = tmp_path / "locks"
    locks.mkdir()
    monkeypatch.setenv("COMPRESS_LOCK_DIR", str(locks))
    monkeypatch.delenv("COMPRESS_HOST_LOCK", raising=False)
    monkeypatch.setattr(hostlock, "_fds", {})
    yield locks
    if hostlock._held == 0 and hostlock._busy == 0:  # not left inside a deadlocked thread
        for fd in hostlock._fds.values():
            os.close(fd)


class Stepped:
    """``body(step)`` runs in a daemon thread; each ``step()`` in it waits there until the test has made its
    checks (``reach``), so a lock that deadlocks its own process fails the test with a message instead of
    hanging the suite."""

    def __init__(self, body, bound_s: float = 10.0):
        self.bound_s, self.errors = bound_s, []
        self._barrier = threading.Barrier(2, timeout=bound_s)

        def target():
            try:
                body(self._barrier.wait)
            except BaseException as err:  # noqa: BLE001 - reported by the test thread
                self.errors.append(err)
                self._barrier.abort()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def reach(self, where: str) -> None:
        """Wait for the body's next ``step()``: it is then at ``where``."""
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            pytest.fail(f"deadlock: this process did not get {where} within {self.bound_s} s"
                        + (f" (it raised {self.errors[0]!r})" if self.errors else ""))

    def go_on(self) -> None:
        """Let the body go on from its ``step()``."""
        self.reach("past the step")

    def finish(self) -> None:
        self.thread.join(self.bound_s)
        assert not self.thread.is_alive(), f"deadlock: this process did not leave its locks within {self.bound_s} s"
        assert not self.errors, self.errors

CHILD = """
import sys, time
from pathlib import Path
from compress.measure.hostlock import measuring
with measuring():
    print("measuring", flush=True)
    time.sleep(1.0)
    Path(sys.argv[1]).write_text("done")  # written while still holding the lock
"""


def test_pause_point_waits_for_a_neighbours_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(hostlock, "_fds", {})
    flag = tmp_path / "flag"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(flag)], stdout=subprocess.PIPE, text=True,
                             env={**__import__("os").environ, "COMPRESS_LOCK_DIR": str(tmp_path / "locks")})
    assert child.stdout.readline().strip() == "measuring"
    before = hostlock.paused_s
    hostlock.pause_point()  # blocks until the child releases
    assert flag.read_text() == "done"
    assert hostlock.paused_s > before
    child.wait(timeout=30)


def test_measuring_in_this_process_does_not_block_its_own_batches(own_locks):
    """compare() inside measure(), and a pause point or a batch of this process inside its own measurement,
    go on at once (waiting would mean waiting for itself), while the neighbours stay locked out until the
    outer measurement ends."""
    assert neighbour_can_take(own_locks) == {"measure-gate": True, "busy": True}
    seen = []

    def body(step):
        with hostlock.measuring():
            with hostlock.measuring():  # re-entrant
                hostlock.pause_point()  # would deadlock on its own lock if it waited
                with hostlock.batch():
                    seen.append("own batch ran")
                step()  # 1: inside both measurements
                step()
            step()  # 2: the inner one left, the outer one still held
            step()

    run = Stepped(body)
    run.reach("through pause_point() and batch() inside its own measurement")
    assert seen == ["own batch ran"]
    assert neighbour_can_take(own_locks) == {"measure-gate": False, "busy": False}
    run.go_on()
    run.reach("out of the inner measuring()")
    assert neighbour_can_take(own_locks) == {"measure-gate": False, "busy": False}  # the inner one kept the locks
    run.go_on()
    run.finish()
    assert neighbour_can_take(own_locks) == {"measure-gate": True, "busy": True}  # released at the outer end
    assert neighbour_can_take(own_locks, "ex") == {"measure-gate": True, "busy": True}
    assert hostlock._held == 0


NEIGHBOUR_BATCH = """
import sys, time
from pathlib import Path
from compress.measure.hostlock import batch
with batch():
    print("in batch", flush=True)
    time.sleep(1.0)
    Path(sys.argv[1]).write_text("batch done")  # written before the batch ends
"""


def test_a_measurement_waits_for_a_neighbours_running_batch(tmp_path, monkeypatch):
    """A neighbour's batch that started before the measurement ends before the timing begins."""
    import os

    monkeypatch.setenv("COMPRESS_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(hostlock, "_fds", {})
    flag = tmp_path / "flag"
    child = subprocess.Popen([sys.executable, "-c", NEIGHBOUR_BATCH, str(flag)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "COMPRESS_LOCK_DIR": str(tmp_path / "locks")})
    assert child.stdout.readline().strip() == "in batch"
    with hostlock.measuring():
        assert flag.read_text() == "batch done"
    child.wait(timeout=30)


def test_own_suspended_batch_does_not_block_own_measurement(own_locks):
    """A batches() generator of this process, suspended inside its batch, does not make this process's
    measurement wait for it; the measurement still locks the neighbours out, and the batch's shared hold
    comes back afterwards until the generator is closed."""

    def gen():
        with hostlock.batch():
            yield 1

    def body(step):
        g = gen()
        next(g)  # suspended inside its batch, as a half-consumed batches() generator would be
        step()  # 1: inside the batch
        step()
        with hostlock.measuring():
            step()  # 2: measuring, the batch still suspended
            step()
        step()  # 3: measured, the batch still suspended
        step()
        g.close()

    run = Stepped(body)
    run.reach("into its batch")
    # A running batch holds busy shared: neighbours' batches may run too, a neighbour's measurement may not.
    assert neighbour_can_take(own_locks) == {"measure-gate": True, "busy": True}
    assert neighbour_can_take(own_locks, "ex", ["busy"]) == {"busy": False}
    run.go_on()
    run.reach("into measuring() past its own suspended batch")
    assert neighbour_can_take(own_locks) == {"measure-gate": False, "busy": False}
    run.go_on()
    run.reach("out of measuring()")
    assert neighbour_can_take(own_locks) == {"measure-gate": True, "busy": True}
    assert neighbour_can_take(own_locks, "ex", ["busy"]) == {"busy": False}  # the batch holds busy again
    run.go_on()
    run.finish()
    assert neighbour_can_take(own_locks, "ex") == {"measure-gate": True, "busy": True}  # all released
    assert hostlock._held == 0 and hostlock._busy == 0
