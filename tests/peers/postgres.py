"""A throwaway PostgreSQL cluster for tests: fresh initdb in a temp dir, loopback TCP, trust auth."""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psycopg
from psycopg import sql

_SERVICE_USER = "postgres"


def _find_pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` (Debian layout), else the directory of PATH's initdb."""
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()]
    if candidates:

        def major(p: Path) -> int:
            return int(p.parent.name) if p.parent.name.isdigit() else 0

        return max(candidates, key=major)
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin or on PATH; "
        "install the Debian package `postgresql` (e.g. apt-get install postgresql-15)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


class Postgres:
    """``with Postgres() as pg:`` runs a private ``postgres`` on 127.0.0.1:<free port>.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system user and
    initdb/postgres run as that user (via ``subprocess.Popen(user=..., group=...)``, i.e. a plain
    setuid/setgid in the child with no ``runuser``/PAM process in between, so signals reach postgres itself).
    """

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.url = ""
        self._tmpdir: Path | None = None
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        assert self._tmpdir is not None, "server not started"
        return self._tmpdir / "postgres.log"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _conninfo(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=2"

    def _run_as(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(_SERVICE_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root but the `{_SERVICE_USER}` system user does not exist; "
                "install the Debian package `postgresql` (it creates that user)"
            ) from None
        return {"user": _SERVICE_USER, "group": _SERVICE_USER, "extra_groups": []}

    def start(self) -> Self:
        bindir = _find_pg_bindir()
        run_as = self._run_as()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="registry-bot-postgres-"))
        atexit.register(self.stop)
        datadir = self._tmpdir / "data"
        sockdir = self._tmpdir / "sock"
        datadir.mkdir(mode=0o700)
        sockdir.mkdir(mode=0o700)
        self.log_path.touch()
        if run_as:
            service = pwd.getpwnam(_SERVICE_USER)
            for path in (self._tmpdir, datadir, sockdir, self.log_path):
                os.chown(path, service.pw_uid, service.pw_gid)
        # Launch from the temp dir: the service user may not be allowed into the caller's cwd.
        common: dict[str, Any] = {"cwd": self._tmpdir, "stdin": subprocess.DEVNULL, **run_as}
        try:
            initdb = subprocess.run(
                [
                    str(bindir / "initdb"),
                    f"--pgdata={datadir}",
                    "--username=postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                capture_output=True,
                check=False,
                **common,
            )
            if initdb.returncode != 0:
                raise RuntimeError(
                    f"initdb failed ({initdb.returncode}):\n{initdb.stdout.decode()}{initdb.stderr.decode()}"
                )
            self.port = _free_port()
            self.url = self.url_for("postgres")
            self._log = self.log_path.open("ab")
            self._proc = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(datadir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={self.port}",
                    "-c",
                    f"unix_socket_directories={sockdir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                **common,
            )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._proc.returncode} during startup:\n{_log_tail(self.log_path)}"
                )
            try:
                with psycopg.connect(self._conninfo()) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.1)
        raise RuntimeError(
            f"postgres did not accept connections within {self.start_timeout}s ({last_error}):\n"
            f"{_log_tail(self.log_path)}"
        )

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` and return its SQLAlchemy URL."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            # Keeps the name usable verbatim in the returned URL.
            raise ValueError(f"database name must be a plain identifier, got {name!r}")
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self._proc is not None:
            if self._proc.poll() is None:
                # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for every client
                # (e.g. a test's SQLAlchemy pool) to disconnect first.
                self._proc.send_signal(signal.SIGINT)
                try:
                    self._proc.wait(15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
