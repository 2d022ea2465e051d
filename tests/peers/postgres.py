"""A throwaway PostgreSQL cluster for tests: fresh initdb in a temp dir, loopback TCP, trust auth."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql

from tests.peers.process import ServerProcess

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


class Postgres(ServerProcess):
    """``with Postgres() as pg:`` runs a private ``postgres`` on 127.0.0.1:<free port>.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system user and
    initdb/postgres run as that user (via ``subprocess.Popen(user=..., group=...)``, i.e. a plain
    setuid/setgid in the child with no ``runuser``/PAM process in between, so signals reach postgres itself).
    """

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for every client
    # (e.g. a test's SQLAlchemy pool) to disconnect first.
    stop_signal = signal.SIGINT
    stop_timeout = 15.0

    def __init__(self, start_timeout: float = 30.0) -> None:
        super().__init__(start_timeout)
        self.url = ""
        self._bindir = Path()
        self._run_as_options: dict[str, Any] = {}

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
        self._bindir = _find_pg_bindir()
        self._run_as_options = self._run_as()
        return super().start()

    def _server_popen_options(self) -> dict[str, Any]:
        return self._run_as_options

    def _prepare(self, tmpdir: Path) -> None:
        datadir = tmpdir / "data"
        sockdir = tmpdir / "sock"
        datadir.mkdir(mode=0o700)
        sockdir.mkdir(mode=0o700)
        self.log_path.touch()
        if self._run_as_options:
            service = pwd.getpwnam(_SERVICE_USER)
            for path in (tmpdir, datadir, sockdir, self.log_path):
                os.chown(path, service.pw_uid, service.pw_gid)
        initdb = subprocess.run(
            [
                str(self._bindir / "initdb"),
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
            # Launch from the temp dir (ServerProcess does so for postgres too): the service user may not be
            # allowed into the caller's cwd.
            cwd=tmpdir,
            stdin=subprocess.DEVNULL,
            **self._run_as_options,
        )
        if initdb.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({initdb.returncode}):\n{initdb.stdout.decode()}{initdb.stderr.decode()}"
            )

    def _server_command(self) -> list[str]:
        assert self.tmpdir is not None
        self.url = self.url_for("postgres")
        return [
            str(self._bindir / "postgres"),
            "-D",
            str(self.tmpdir / "data"),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.tmpdir / 'sock'}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]

    def _wait_until_ready(self) -> None:
        self.wait_until(self._accepts_connections, "postgres to accept connections", (psycopg.OperationalError,))

    def _accepts_connections(self) -> bool:
        with psycopg.connect(self._conninfo()) as conn:
            conn.execute("SELECT 1")
        return True

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` and return its SQLAlchemy URL."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            # Keeps the name usable verbatim in the returned URL.
            raise ValueError(f"database name must be a plain identifier, got {name!r}")
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)
