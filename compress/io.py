"""Small file helpers: atomic writes and hashes, so no half-written file ever looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def copy_atomic(source: str | Path, path: str | Path) -> Path:
    """Copy ``source`` to ``path`` through a file beside it: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    shutil.copyfile(source, tmp)
    return tmp.replace(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def staging_dir(out: Path) -> Path:
    """An empty ``.<name>.partial`` folder beside ``out``, where a result is built before ``publish``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)  # leftovers of an interrupted run: nothing in them was complete
    stage.mkdir()
    return stage


def publish(staging: Path, out: Path) -> None:
    """Move a finished staging folder into place, replacing ``out``; the old one is gone only after."""
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def fault(point: str) -> None:
    """Fault injection for the tests: ``COMPRESS_KILL_AT=<point>`` kills this process there, as kill -9 would."""
    if os.environ.get("COMPRESS_KILL_AT") == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
