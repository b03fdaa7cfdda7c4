"""`make dashboard` in the background for the tests (a helper module, not a test): start it, read its pages
and JSON API, stop it, keep what it printed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request


class Dashboard:
    def __init__(self, port: int):
        self.port, self.output = port, ""

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return r.read()

    def json(self, path: str) -> dict:
        return json.loads(self.get(path))


@contextlib.contextmanager
def running_dashboard(*make_args: str, ready_within_s: float = 60.0):
    """``make -s <make_args> PORT=<free port>``; yields once /api/studies answers; ``.output`` after the block."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["make", "-s", *make_args, f"PORT={port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    board = Dashboard(port)
    try:
        deadline = time.time() + ready_within_s
        while True:
            try:
                board.get("/api/studies", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, f"optuna-dashboard did not answer within {ready_within_s:.0f} s"
                time.sleep(0.5)
        yield board
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        board.output = proc.communicate(timeout=10)[0].decode()
