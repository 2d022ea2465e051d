"""A registry client for one registry of the list, logged in with that registry's own password (from its
setting, environment variable or Vault), closed after use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from bot.config import Settings
from bot.errors import ConfigError
from bot.registry.client import RegistryClient
from bot.registry.registries import RegistryConfig, password_of, registry_list
from bot.secrets import SecretResolver

RegistryObserver = Callable[[str, int, float], None]  # (method, status, seconds) of every answer


class EntryClient(RegistryClient):
    """A client of one entry of the registry list: its settings are that entry's view, and it can reach the
    entry's other secrets (GHCR's REST API token) when they are needed."""

    def __init__(
        self,
        entry: RegistryConfig,
        settings: Settings,
        password: str,
        secrets: SecretResolver,
        observer: RegistryObserver | None = None,
    ) -> None:
        super().__init__(entry.view(settings), password, observer=observer)
        self.entry = entry
        self.secrets = secrets


@asynccontextmanager
async def open_registry(
    settings: Settings,
    secrets: SecretResolver,
    observer: RegistryObserver | None = None,
    registry: RegistryConfig | None = None,
) -> AsyncIterator[RegistryClient]:
    """`registry`: which entry (default: the first, which in a per-registry view is that registry)."""
    if registry is None:
        entries = registry_list(settings)
        if not entries:
            raise ConfigError("No registry configured: set REGISTRY_URL, or list `registries:` in REGISTRY_BOT_CONFIG.")
        registry = entries[0]
    client = EntryClient(registry, settings, await password_of(registry, secrets), secrets, observer)
    try:
        yield client
    finally:
        await client.aclose()
