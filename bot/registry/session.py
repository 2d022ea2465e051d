"""A registry client logged in with the pull token (from its setting or Vault), closed after use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from bot.config import Settings
from bot.registry.client import RegistryClient
from bot.secrets import SecretResolver

RegistryObserver = Callable[[str, int, float], None]  # (method, status, seconds) of every answer


@asynccontextmanager
async def open_registry(
    settings: Settings, secrets: SecretResolver, observer: RegistryObserver | None = None
) -> AsyncIterator[RegistryClient]:
    client = RegistryClient(settings, await secrets.get("registry_password"), observer=observer)
    try:
        yield client
    finally:
        await client.aclose()
