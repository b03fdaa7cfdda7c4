"""compress.hostlock: a worker's batch waits while another process on the host times a model."""

import subprocess
import sys

from compress import hostlock

CHILD = """
import sys, time
from pathlib import Path
from compress.hostlock import measuring
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


def test_measuring_in_this_process_does_not_block_its_own_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(hostlock, "_fds", {})
    with hostlock.measuring():
        with hostlock.measuring():  # compare() inside measure(): re-entrant
            hostlock.pause_point()  # would deadlock on its own lock if it waited


NEIGHBOUR_BATCH = """
import sys, time
from pathlib import Path
from compress.hostlock import batch
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


def test_own_suspended_batch_does_not_block_own_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(hostlock, "_fds", {})

    def gen():
        with hostlock.batch():
            yield 1

    g = gen()
    next(g)  # suspended inside its batch, as a half-consumed batches() generator would be
    with hostlock.measuring():
        pass
    g.close()
