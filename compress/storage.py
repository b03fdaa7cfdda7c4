"""Where a study lives, and the few decisions that many workers sharing it must take one at a time.

Storage URLs: ``sqlite:///path`` (the default, one machine), ``postgresql+psycopg2://user@host/db`` (many
machines; any SQLAlchemy URL Optuna's RDB storage takes) or ``journal:PATH`` (Optuna's journal file: many
processes on one machine without a server). A password is best left out of the URL: libpq reads
``PGPASSWORD`` and ``~/.pgpass``. Every output, log and the dashboard get the URL through ``mask``.

``StudyLock`` serialises the claim of the next trial, the covering grid, re-queues and the finisher: a
PostgreSQL advisory lock (MySQL's GET_LOCK) held on its own connection, or an flock beside a SQLite or
journal file. Both are released by the operating system when their process dies, even by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sqlite3
import sys
import time
import warnings
from pathlib import Path

import optuna

from compress.errors import CompressError

HEARTBEAT_S = 20  # a live worker's trial is touched this often ...
GRACE_S = 60  # ... and failed by any other worker this long after its last beat
CONNECT_RETRY_S = 120.0  # a database server restarting is waited for this long before giving up
# Several processes on one SQLite file wait this long for each other's writes (tests shorten it).
SQLITE_BUSY_S = float(os.environ.get("COMPRESS_SQLITE_BUSY_S", 60.0))


class StorageError(CompressError):
    """The study's storage cannot be used; the message names it (password masked) and the fix."""


def kind(url: str) -> str:
    if url.startswith("journal:"):
        return "journal"
    return url.split(":", 1)[0].split("+", 1)[0]  # sqlite, postgresql, mysql, ...


def file_of(url: str) -> Path | None:
    """The file behind a SQLite or journal URL."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):].removeprefix("//"))
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def mask(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***``: what outputs, logs and the dashboard show."""
    if not url or kind(url) in ("sqlite", "journal"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide everything between '//' and '@'
        head, sep, rest = url.partition("//")
        return head + sep + ("***@" + rest.split("@", 1)[1] if "@" in rest else rest)


def _check_sqlite(path: Path) -> None:
    """A clear error for a file that is not a SQLite database, is damaged, or is held by another process;
    the file is only read (read-only URI), never changed."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise StorageError(
            f"{path} is not a SQLite database (its first bytes are {head[:8]!r}); it was left untouched. Move it "
            "aside to start a new study there, restore the study from a copy, or pass --storage with another file.")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=SQLITE_BUSY_S)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err):
            raise StorageError(
                f"{path} is locked by another process (waited {SQLITE_BUSY_S:.0f} s; see `fuser {path}`). Wait for "
                "it, stop it, or give several workers a server (--storage postgresql+psycopg2://...) or a journal "
                "file (--storage journal:PATH).") from None
        raise StorageError(f"{path}: cannot be read as a SQLite database ({err}); it was left untouched.") from None
    except sqlite3.DatabaseError as err:
        row = (str(err),)
    if row and row[0] != "ok":
        raise StorageError(
            f"{path} is a damaged SQLite database ({row[0]}); it was left untouched. Restore it from a copy, or "
            "move it aside to start the study again (`sqlite3 FILE .recover` may save its trials).")


def _is_auth_error(err: Exception) -> bool:
    text = str(err).lower()
    return "password" in text or "authentication" in text or "role" in text and "does not exist" in text


def open_storage(url: str, retry_s: float = CONNECT_RETRY_S) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``url``: heartbeats on databases (a dead worker's trial is failed by the others),
    a wait for a database server that is down (restarting), errors that name the file or the server."""
    path = file_of(url)
    if kind(url) == "journal":
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        # The open-lock works on network file systems too (the symlink lock does not everywhere).
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), JournalFileOpenLock(str(path))))
    engine_kwargs: dict = {"pool_pre_ping": True}  # a connection broken by a server restart is replaced
    if kind(url) == "sqlite":
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_sqlite(path)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_S}}

    def connect() -> optuna.storages.RDBStorage:
        # Under the lock: two workers creating the tables of a new database at once collide.
        with warnings.catch_warnings(), StudyLock(url, "(schema)"):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # No stale-trial callback: compress re-queues failed trials itself, under the study lock, once.
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)

    try:  # a server that is down (restarting) is waited for; anything else is named at once
        return retrying(connect, retry_s=retry_s, what=f"storage {mask(url)}")
    except StorageError:
        raise
    except ModuleNotFoundError as err:
        raise StorageError(f"storage {mask(url)}: its database driver is not installed ({err}); "
                           "pip install psycopg2-binary for PostgreSQL") from None
    except Exception as err:  # sqlalchemy.exc.OperationalError and friends
        if kind(url) == "sqlite":
            raise StorageError(f"storage {path}: {err}. The file was left untouched.") from None
        if _is_auth_error(err):
            raise StorageError(
                f"storage {mask(url)}: the server refused the login ({_first_line(err)}). "
                "Give the password the way libpq reads it: PGPASSWORD=... or a line in ~/.pgpass "
                "(host:port:database:user:password, chmod 600), not in the URL.") from None
        raise StorageError(f"storage {mask(url)}: {_first_line(err)}") from None


def retrying(fn, *args, retry_s: float = CONNECT_RETRY_S, what: str = "the study's database", **kwargs):
    """Call ``fn``; while the database server is down (a restart), wait and try again for ``retry_s``."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_connection_error(err) or time.monotonic() > deadline:
                if is_connection_error(err):
                    raise StorageError(f"{what} did not answer for {retry_s:.0f} s ({_first_line(err)}). Start it (or "
                                       "check host, port and firewall) and run the same command again: completed "
                                       "trials are kept.") from None
                raise
            print(f"{what} unreachable ({_first_line(err)[:120]}); retrying", file=sys.stderr, flush=True)
            time.sleep(3.0)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def is_connection_error(err: BaseException | None) -> bool:
    """A database server that went away (restart, network), here or as the cause of Optuna's own error."""
    try:
        from sqlalchemy import exc
    except ImportError:
        return False
    seen = 0
    while err is not None and seen < 5:
        if _is_auth_error(err):  # the server answered: waiting will not help
            return False
        if isinstance(err, exc.DBAPIError) and err.connection_invalidated or isinstance(err, exc.InterfaceError):
            return True
        if isinstance(err, exc.OperationalError):
            text = str(err).lower()
            if "locked" not in text and any(s in text for s in (
                    "connection", "server closed", "terminating", "shutting down", "could not connect", "starting up",
                    "the database system is")):
                return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


# --- identity of this worker --------------------------------------------------------------------------------

def _host_id() -> str:
    """This machine and process namespace: host names repeat (every container may be "vm" or "localhost"), a
    boot id and the pid namespace do not, and a pid means something only within both."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


HOST = _host_id()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me() -> dict:
    return {"host": HOST, "pid": os.getpid(), "start": _start_time(os.getpid())}


def alive(worker: dict | None) -> bool | None:
    """Whether the worker process is running: True/False on this host, None (cannot tell) on another."""
    if not worker or worker.get("host") != HOST:
        return None
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _start_time(int(worker["pid"]))
    return started is None or worker.get("start") is None or started == worker["start"]


# --- the study lock -----------------------------------------------------------------------------------------

class StudyLock:
    """Mutual exclusion among every worker of one study; ``release`` may be called early and more than once."""

    def __init__(self, url: str, study_name: str):
        self.url, self.name = url, study_name
        self._fd: int | None = None
        self._conn = None
        self._engine = None
        where = ""  # one key per database and study, however the password is given
        if kind(url) not in ("sqlite", "journal"):
            from sqlalchemy.engine import make_url

            u = make_url(url)
            where = f"{u.host}:{u.port}/{u.database}"
        self.key = int.from_bytes(hashlib.sha256(f"compress:{where}:{study_name}".encode()).digest()[:8], "big",
                                  signed=True)

    def acquire(self) -> None:
        k, path = kind(self.url), file_of(self.url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(f"{path}.lock-compress", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        elif k in ("postgresql", "mysql"):
            retrying(self._db_lock, what=f"storage {mask(self.url)}")
        # Other storages: no lock; several workers may then overrun the trial budget by a trial each.

    def _db_lock(self) -> None:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        self._conn = self._engine.connect()
        if kind(self.url) == "postgresql":
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        else:
            self._conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": f"compress:{self.key}"})

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a lost connection has released the lock already
                self._conn.close()  # closing the session ends the advisory lock
            self._conn = None

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
