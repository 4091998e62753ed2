"""A private PostgreSQL on a free port, for the bridge's tests, the demo and benchmarks.

Like ``broker.py`` for mosquitto: the real server, started from scratch in a
directory of our own, never the machine's own PostgreSQL (which may listen on
5432).  PostgreSQL refuses to run as root, so as root (CI) ``initdb`` and
``postgres`` run as the ``postgres`` system user the Debian package creates.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

from simulators.broker import free_port

__all__ = ["PostgresServer", "find_bindir"]

# Unix socket paths (sun_path) hold 107 characters on Linux.
_SOCKET_PATH_MAX = 100


def _version(bindir: Path) -> tuple[int, ...]:
    """Debian's /usr/lib/postgresql/<version>/bin, as a number to sort by."""
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` are: the newest Debian install, else pg_config's."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin "
        "or pg_config --bindir: install the Debian package postgresql (scripts/ensure-deps.sh)"
    )


def _server_user() -> pwd.struct_passwd:
    """The OS user the server runs as: ourselves, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, and PostgreSQL refuses to run as root: the 'postgres' system "
            "user is needed (the Debian package postgresql creates it)"
        ) from None


class PostgresServer:
    """``initdb`` into ``workdir/pgdata`` and run ``postgres`` on 127.0.0.1:``port``.

    ``fsync=False`` (tests) turns fsync and full_page_writes off: a commit
    survives ``kill()`` but not a power cut; benchmarks pass True to measure
    what a real server would do.  The
    data survives ``stop()`` and ``kill()``, so ``start()`` again is a restart.
    """

    def __init__(self, workdir: Path, port: int | None = None, fsync: bool = False) -> None:
        self.bindir = find_bindir()
        self.workdir = workdir.resolve()
        self.port = port or free_port()
        self.fsync = fsync
        self.log_path = self.workdir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = _server_user()
        self._as_other = self._user.pw_uid != os.geteuid()
        self.user = self._user.pw_name if self._as_other else getpass.getuser()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir = self._rundir()
        self.pgdata = self.rundir / "pgdata"

    # -- where the server's files live -------------------------------------------

    def _rundir(self) -> Path:
        """``workdir`` when the server's user can use it and its socket path fits.

        Else (pytest's tmp dirs under a 0700 /tmp/pytest-of-root, long paths) a
        short private directory in /tmp, linked from ``workdir/pgdata`` and
        removed when this process exits.
        """
        if self._as_other:
            os.chown(self.workdir, self._user.pw_uid, self._user.pw_gid)
        socket = self.workdir / f".s.PGSQL.{self.port}.lock"
        if len(str(socket)) <= _SOCKET_PATH_MAX and self._reachable(self.workdir):
            return self.workdir
        link = self.workdir / "pgdata"
        if link.is_symlink():
            if link.resolve().parent.is_dir():
                return link.resolve().parent  # restarting a server made by an earlier object
            link.unlink()  # its process has exited and removed the data
        rundir = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        os.chmod(rundir, 0o700)
        if self._as_other:
            os.chown(rundir, self._user.pw_uid, self._user.pw_gid)
        link.symlink_to(rundir / "pgdata")
        atexit.register(self._remove_rundir, rundir)
        return rundir

    def _reachable(self, path: Path) -> bool:
        """Whether the server's user may create files in ``path`` (every parent searchable)."""
        if not self._as_other:
            return os.access(path, os.W_OK | os.X_OK)
        probe = subprocess.run(
            [
                "runuser",
                "-u",
                self._user.pw_name,
                "--",
                "test",
                "-w",
                str(path),
                "-a",
                "-x",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return probe.returncode == 0

    def _remove_rundir(self, rundir: Path) -> None:
        with contextlib.suppress(OSError, ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        shutil.rmtree(rundir, ignore_errors=True)

    # -- running -------------------------------------------------------------------

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """Popen's user, group and extra_groups: the server's user when it is not us."""
        if not self._as_other:
            return None, None, None
        return self._user.pw_uid, self._user.pw_gid, []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**env, "LC_ALL": "C", "HOME": self._user.pw_dir}

    def _initdb(self) -> None:
        uid, gid, groups = self._run_as()
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                stdout=log,
                stderr=log,
                cwd=self.rundir,
                env=self._env(),
                check=False,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}); see {self.log_path}")

    def _settings(self) -> list[str]:
        durable = "on" if self.fsync else "off"
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.rundir),
            "fsync": durable,
            # Not off even for tests: an asynchronous commit is lost when kill()
            # takes the WAL buffers with it, and crash tests need acknowledged
            # commits to survive.  With fsync off it costs a write(), no flush.
            "synchronous_commit": "on",
            "full_page_writes": durable,
            "logging_collector": "off",
            "log_destination": "stderr",
            "timezone": "UTC",
        }
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """Create the cluster if new, start the server, return once it accepts a login."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        uid, gid, groups = self._run_as()
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.pgdata), *self._settings()],
                stdout=log,
                stderr=log,
                cwd=self.rundir,
                env=self._env(),
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        error = "not tried"
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(
                    f"postgres exited at start; see {self.log_path}:\n{self._tail()}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                error = str(exc).strip()
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"postgres on port {self.port} not ready after {timeout}s ({error}); "
                    f"see {self.log_path}"
                )
            time.sleep(0.05)

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, data is kept); SIGKILL if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server and its backends, as a crash would (the data stays)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- using it ------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for psycopg 3 (TCP on 127.0.0.1, the initdb role)."""
        user, db = quote(self.user, safe=""), quote(dbname, safe="")
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """Create a database; return its dsn."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
