"""Where each secret comes from: its setting (environment or file) first, else Vault when VAULT_ADDR is set.

A secret setting may name its Vault source in its metadata (`path#field` under VAULT_KV_MOUNT); the
environment variable `<NAME>_VAULT` (e.g. `SLACK_BOT_TOKEN_VAULT=viktor#slack_bot_token`) overrides it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from bot.config import Settings, setting_fields
from bot.errors import ConfigError


def vault_source(settings: Settings, name: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    env = os.environ if environ is None else environ
    if name == "registry_password":
        return settings.vault_registry_path, settings.vault_registry_field
    override = env.get(f"{name.upper()}_VAULT")
    spec = override
    if spec is None:
        spec = next((str(f.metadata.get("vault", "")) for f in setting_fields() if f.name == name), "")
    if not spec:
        return None
    path, sep, field = spec.partition("#")
    if not sep or not path or not field:
        raise ConfigError(f"{name.upper()}_VAULT must be path#field, not '{spec}'.")
    return path, field


def resolve_secrets(settings: Settings, names: tuple[str, ...]) -> Settings:
    """Fill the named secret settings from Vault where they are not set. Raises SecretUnavailable."""
    from bot.config import Secret

    missing = [name for name in names if not getattr(settings, name)]
    if not missing or not settings.vault_addr:
        return settings
    from bot.integrations.vault import Vault

    vault = Vault(settings)
    values = {}
    for name in missing:
        source = vault_source(settings, name)
        if source is not None:
            values[name] = Secret(vault.read(*source))
    return settings.with_values(**values)


class SecretResolver:
    """Secrets resolved when first needed, for the command line and the bot alike: a Vault outage fails
    the one check or phase that needed the secret, never the bot's start. Every value is masked in logs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> str:
        """The secret's value; "" when it is neither set nor in Vault. Raises SecretUnavailable."""
        from bot.logsetup import register_secret

        async with self._lock:
            if name not in self._cache:
                settings = await asyncio.to_thread(resolve_secrets, self.settings, (name,))
                value = getattr(settings, name)
                self._cache[name] = value.reveal() if value else ""
                register_secret(self._cache[name])  # never in a log line, wherever it came from
            return self._cache[name]

    async def read_vault(self, path: str, field: str) -> str:
        """One field of a Vault KV secret (a registry entry's `password_vault`), cached; masked in logs.
        Raises SecretUnavailable, or ConfigError when VAULT_ADDR is not set."""
        from bot.logsetup import register_secret

        key = f"vault:{path}#{field}"
        async with self._lock:
            if key not in self._cache:
                if not self.settings.vault_addr:
                    raise ConfigError(f"A registry's secret is in Vault ({path}#{field}), but VAULT_ADDR is not set.")
                from bot.integrations.vault import Vault

                self._cache[key] = await asyncio.to_thread(Vault(self.settings).read, path, field)
                register_secret(self._cache[key])
            return self._cache[key]
