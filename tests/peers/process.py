"""The lifecycle shared by the real servers the tests run as subprocesses (OpenBao, PostgreSQL, Prometheus...).

A subclass supplies the command line and the readiness check; ``ServerProcess`` owns the rest: a private temp
dir (also the child's cwd) holding the server's log, a free loopback port, waiting for readiness with a
timeout, stopping on ``stop()``/``with`` exit/interpreter exit, and cleaning up after a failed start.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``with Server() as server:`` runs the server until the block exits; ``start()``/``stop()`` work too.

    Subclasses set ``name`` (temp dir prefix, log file name, error messages) and implement
    ``_server_command`` and ``_wait_until_ready`` (usually a ``wait_until`` call); the other ``_server_*`` and
    ``_pick_port``/``_prepare`` hooks and the ``stop_*`` settings have defaults.
    """

    name = "server"
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout = 10.0

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.tmpdir: Path | None = None
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
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / f"{self.name}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "<no log>"

    # --- hooks ---------------------------------------------------------------------------------------------

    def _prepare(self, tmpdir: Path) -> None:
        """Set up files in ``tmpdir`` before the port is picked (e.g. initdb)."""

    def _pick_port(self) -> int:
        return free_port()

    def _server_command(self) -> list[str]:
        """The command line; ``self.port`` and ``self.tmpdir`` are set (derive URLs from them here)."""
        raise NotImplementedError

    def _server_env(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return None

    def _server_popen_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` keyword arguments (e.g. ``user``/``group``)."""
        return {}

    def _wait_until_ready(self) -> None:
        raise NotImplementedError

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"registry-bot-{self.name}-"))
        atexit.register(self.stop)
        try:
            self._prepare(self.tmpdir)
            self.port = self._pick_port()
            command = self._server_command()
            self._log = self.log_path.open("ab")
            self._proc = subprocess.Popen(
                command,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmpdir,
                env=self._server_env(),
                **self._server_popen_options(),
            )
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until(self, ready: Callable[[], bool], what: str, retry_on: tuple[type[Exception], ...] = ()) -> None:
        """Poll ``ready`` until true; RuntimeError with the log tail if the server exits or time runs out.

        Exceptions of a ``retry_on`` type count as "not ready yet"; the last one is quoted on timeout.
        """
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} while waiting for {what}:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except retry_on as exc:
                last_error = exc
            time.sleep(0.1)
        detail = f" ({last_error})" if last_error is not None else ""
        raise RuntimeError(f"timed out after {self.start_timeout}s waiting for {what}{detail}:\n{self.log_tail()}")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(self.stop_signal)
                try:
                    self._proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
