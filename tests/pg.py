"""A throwaway PostgreSQL server on loopback for the tests (a helper module, not a test).

    with PostgresServer() as pg:          # initdb in a temp dir, start on 127.0.0.1:<free port>
        storage = optuna.storages.RDBStorage(pg.url)
        pg.restart()                      # stop, start again on the same port, same data
    # stopped, data dir removed

The server binaries come from PATH, then /usr/lib/postgresql/*/bin (newest version first); on Debian
`make setup` installs them (package `postgresql`). `available()` says whether this machine can run one,
and why not, so tests can skip with the reason.

PostgreSQL refuses to run as root: under euid 0 initdb, pg_ctl and the server run as the `postgres`
system user (created by Debian's package; created here with `useradd --system` when missing) through
`runuser -u postgres --`, in a temp dir under /tmp that user owns. The server listens only on
127.0.0.1, its Unix socket is in the data dir (no /var/run/postgresql), and password authentication
(scram-sha-256) is on for every connection.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

RUN_AS = "postgres"  # the system user the server runs as when we are root
BINDIR_ENV = "COMPRESS_PG_BINDIR"  # a directory with initdb and pg_ctl, tried first when set
_TOOLS = ("initdb", "pg_ctl")


def _version_key(path: str) -> tuple:
    # /usr/lib/postgresql/15/bin -> (15,), /usr/lib/postgresql/9.6/bin -> (9, 6)
    name = Path(path).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (-1,)


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: $COMPRESS_PG_BINDIR, PATH, then the newest
    /usr/lib/postgresql/<version>/bin."""
    candidates: list[str] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(os.environ[BINDIR_ENV])
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, t), os.X_OK) for t in _TOOLS):
            return Path(d)
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


def available() -> tuple[bool, str]:
    """(True, "") when a server can be started here, else (False, why not)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False, "psycopg2 is not installed (pip install psycopg2-binary; `make setup` does)"
    if find_bindir() is None:
        return False, ("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                       "/usr/lib/postgresql/*/bin: run `make setup` as root on Debian "
                       "(installs package postgresql), or set " + BINDIR_ENV)
    if _as_root():
        if shutil.which("runuser") is None:
            return False, "running as root and `runuser` is missing (PostgreSQL refuses to run as root)"
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            if shutil.which("useradd") is None:
                return False, (f"running as root, no `{RUN_AS}` user to run the server as, and no "
                               "`useradd` to create one")
    return True, ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    """A PostgreSQL server of its own: a temp data dir, 127.0.0.1 and a free port, superuser
    `user` with a random password, and a database `dbname`.

    Attributes once started: url, url_without_password, password, port, host, user, dbname,
    base_dir, data_dir, log_file, bindir. Methods: start(), stop(), restart(), close() (stop and
    remove the data), url_for(db), create_database(name) -> url, drop_database(name), log_tail().
    """

    def __init__(self, user: str = "compress", dbname: str = "compress", *,
                 max_connections: int = 200, startup_timeout: float = 60.0,
                 durable: bool = False, bindir: str | os.PathLike | None = None):
        self.user = user
        self.dbname = dbname
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.password = secrets.token_urlsafe(18)
        self.max_connections = max_connections
        self.startup_timeout = startup_timeout
        self.durable = durable  # False: fsync off (a throwaway server; clean stops still keep data)
        self.bindir = Path(bindir) if bindir else find_bindir()
        self.base_dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_file: Path | None = None
        self.running = False
        self._atexit = False
        self._uid: int | None = None
        self._gid: int | None = None

    # -- URLs -----------------------------------------------------------------------------------
    def url_for(self, dbname: str, *, password: bool = True) -> str:
        auth = quote(self.user, safe="")
        if password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    @property
    def url_without_password(self) -> str:
        return self.url_for(self.dbname, password=False)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.url_without_password if self.port else '(not started)'} {state}>"

    # -- running commands -----------------------------------------------------------------------
    def _ensure_run_as_user(self) -> None:
        try:
            pw = pwd.getpwnam(RUN_AS)
        except KeyError:
            if shutil.which("useradd") is None:
                raise PostgresError(f"running as root and there is no `{RUN_AS}` user to run "
                                    "PostgreSQL as (it refuses root), nor `useradd` to create one")
            # Like Debian's postgresql-common, so a later `apt-get install postgresql` accepts it.
            r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                                "--home-dir", "/var/lib/postgresql", "--shell", "/bin/bash",
                                "--comment", "PostgreSQL administrator", RUN_AS],
                               capture_output=True, text=True)
            if r.returncode not in (0, 9):  # 9: created meanwhile
                raise PostgresError(f"could not create system user `{RUN_AS}` to run PostgreSQL "
                                    f"as (it refuses root): useradd: {r.stderr.strip()}")
            pw = pwd.getpwnam(RUN_AS)
        if shutil.which("runuser") is None:
            raise PostgresError("running as root and `runuser` is missing: cannot run PostgreSQL "
                                f"as `{RUN_AS}` (it refuses root)")
        self._uid, self._gid = pw.pw_uid, pw.pw_gid

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"  # a fresh machine may have no locale matching $LANG
        env.pop("LANG", None)
        env.pop("LANGUAGE", None)
        return env

    def _run(self, tool: str, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if _as_root():
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        try:
            r = subprocess.run(cmd, cwd=self.base_dir, env=self._env(), capture_output=True,
                               text=True, timeout=timeout or self.startup_timeout + 30)
        except subprocess.TimeoutExpired as e:
            raise PostgresError(f"{tool} timed out after {e.timeout:.0f}s\n{self.log_tail()}") from e
        if r.returncode != 0:
            raise PostgresError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n"
                                f"{r.stdout.strip()}\n{r.stderr.strip()}\n{self.log_tail()}".strip())
        return r

    def _chown(self, path: Path) -> None:
        if self._uid is not None:
            os.chown(path, self._uid, self._gid)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return "server log (last lines):\n" + "\n".join(text) if text else ""

    # -- lifecycle ------------------------------------------------------------------------------
    def _init(self) -> None:
        if self.bindir is None:
            ok, why = available()
            raise PostgresError(why or "no PostgreSQL server binaries (initdb, pg_ctl)")
        if _as_root():
            self._ensure_run_as_user()
            # /tmp (not $TMPDIR, which may sit under an unreachable /root) so `postgres` can reach it.
            self.base_dir = Path(tempfile.mkdtemp(prefix="compress-pg-", dir="/tmp"))
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="compress-pg-"))
        os.chmod(self.base_dir, 0o700)
        self._chown(self.base_dir)
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        pwfile = self.base_dir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)
        self.port = free_port(self.host)
        self._write_config()

    def _write_config(self) -> None:
        # postgresql.auto.conf is read last, so these win over postgresql.conf.
        conf = [
            f"listen_addresses = '{self.host}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.data_dir}'",
            f"max_connections = {self.max_connections}",
            "password_encryption = 'scram-sha-256'",
            "logging_collector = off",
        ]
        if not self.durable:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        auto = self.data_dir / "postgresql.auto.conf"
        with open(auto, "a") as f:
            f.write("\n# compress tests (tests/pg.py)\n" + "\n".join(conf) + "\n")

    def _pg_ctl_start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                  "-t", str(int(self.startup_timeout)), "start")

    def start(self) -> "PostgresServer":
        """initdb on the first call, then start the server and create `dbname`."""
        if self.running:
            return self
        first = self.data_dir is None
        if first:
            self._init()
        for attempt in range(3):
            try:
                self._pg_ctl_start()
                break
            except PostgresError:
                # The free port may have been taken meanwhile: only the first start may move.
                if not first or attempt == 2 or "already in use" not in self.log_tail(50):
                    raise
                self.port = free_port(self.host)
                self._write_config()
        self.running = True
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        if first:
            self.create_database(self.dbname)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (mode fast: roll back open transactions, close connections)."""
        if not self.running:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w",
                      "-t", str(int(self.startup_timeout)), "stop")
        except PostgresError:
            if mode == "immediate":
                raise
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        self.running = False

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, wait `down_s` seconds, start again on the same port with the same data."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its data dir."""
        try:
            self.stop()
        finally:
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = self.data_dir = None
            if self._atexit:
                atexit.unregister(self.close)
                self._atexit = False

    cleanup = close

    def __enter__(self) -> "PostgresServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- databases ------------------------------------------------------------------------------
    def connect(self, dbname: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=dbname, connect_timeout=10)
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its URL."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.url_for(name)

    def drop_database(self, name: str, force: bool = True) -> None:
        """DROP DATABASE `name` (with force: closing other sessions on it first)."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                q = "DROP DATABASE IF EXISTS {} WITH (FORCE)" if force else "DROP DATABASE IF EXISTS {}"
                cur.execute(sql.SQL(q).format(sql.Identifier(name)))
        finally:
            conn.close()
