"""Secrets from Vault (or OpenBao) KV v2 through hvac, with token, Kubernetes or AppRole auth.

Each failure becomes one sentence that says which: sealed, unreachable, denying, or the secret missing.
hvac is synchronous; async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.config import Settings
from bot.errors import SecretUnavailable

log = logging.getLogger(__name__)


class Vault:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None

    def _login(self) -> Any:
        import hvac  # imported only when Vault is configured: it costs ~120 ms
        import requests

        settings = self.settings
        addr = settings.vault_addr
        method = settings.vault_auth or ("token" if settings.vault_token else "kubernetes")
        client = hvac.Client(url=addr, timeout=settings.vault_timeout)
        try:
            if method == "token":
                if not settings.vault_token:
                    raise SecretUnavailable("VAULT_AUTH=token needs VAULT_TOKEN.")
                client.token = settings.vault_token.reveal()
            elif method == "approle":
                if not settings.vault_role_id or not settings.vault_secret_id:
                    raise SecretUnavailable("VAULT_AUTH=approle needs VAULT_ROLE_ID and VAULT_SECRET_ID.")
                client.auth.approle.login(role_id=settings.vault_role_id, secret_id=settings.vault_secret_id.reveal())
            else:
                try:
                    with open(settings.vault_jwt_path, encoding="utf-8") as handle:
                        jwt = handle.read().strip()
                except OSError:
                    raise SecretUnavailable(
                        f"Vault Kubernetes auth needs the ServiceAccount token at {settings.vault_jwt_path}, "
                        "which is not there; set VAULT_TOKEN or VAULT_AUTH=approle outside a cluster."
                    ) from None
                client.auth.kubernetes.login(
                    role=settings.vault_role, jwt=jwt, mount_point=settings.vault_kubernetes_mount
                )
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise SecretUnavailable(self._explain(exc, f"logging in to Vault ({method})")) from None
        return client

    def read(self, path: str, field: str, mount: str | None = None) -> str:
        """One field of a KV v2 secret."""
        import hvac
        import requests

        mount = mount or self.settings.vault_kv_mount
        where = f"{mount}/{path}"
        for attempt in (1, 2):
            if self._client is None:
                self._client = self._login()
            try:
                response = self._client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True
                )
                break
            except hvac.exceptions.Forbidden as exc:
                # A token may have expired: log in once more before calling it a denial.
                self._client = None
                if attempt == 2 or self.settings.vault_auth == "token" or self.settings.vault_token:
                    raise SecretUnavailable(self._explain(exc, f"reading {where}")) from None
            except (hvac.exceptions.VaultError, requests.RequestException) as exc:
                raise SecretUnavailable(self._explain(exc, f"reading {where}")) from None
        data = (response or {}).get("data", {}).get("data", {})
        value = data.get(field)
        if not value:
            raise SecretUnavailable(f"Vault secret {where} has no field '{field}'.")
        return str(value)

    def _explain(self, exc: Exception, doing: str) -> str:
        import hvac
        import requests

        addr = self.settings.vault_addr
        if isinstance(exc, hvac.exceptions.VaultDown):
            return f"Vault at {addr} is sealed; {doing} failed. Unseal it, or set the secret directly."
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            return f"Vault at {addr} denied {doing} (permission denied); check the token, role or policy."
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return f"Vault at {addr} has nothing at the path for {doing}; check the mount and path settings."
        if isinstance(exc, requests.Timeout):
            return f"Vault at {addr} did not answer in {self.settings.vault_timeout:g}s while {doing}."
        if isinstance(exc, requests.ConnectionError):
            return f"Vault at {addr} is unreachable while {doing}; check VAULT_ADDR and the network."
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            return f"Vault at {addr} refused {doing} as invalid (check the role or credentials)."
        return f"Vault at {addr} failed {doing} ({type(exc).__name__})."
