"""What every phase shares: the context it runs in, the progress sink it reports to, the result it returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.config import Settings
from bot.incidents.models import Incident
from bot.integrations.kube import Kube
from bot.logsetup import register_secret
from bot.registry.client import RegistryClient


class Progress(Protocol):
    async def step(self, key: str, text: str, state: str = "running") -> None:
        """Add or replace the line `key`; state is running, done, failed, skipped, info or warning."""

    async def flush(self) -> None:
        """Make sure the last state is shown."""


class RecordingProgress:
    """Keeps the steps in order; the command line prints them, tests read them."""

    def __init__(self, echo: bool = False) -> None:
        self.steps: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[str, str, str]] = []
        self.echo = echo

    async def step(self, key: str, text: str, state: str = "running") -> None:
        self.steps[key] = {"key": key, "text": text, "state": state, "at": time.time()}
        self.history.append((key, state, text))
        if self.echo:
            print(f"[{state}] {text}", flush=True)

    async def flush(self) -> None:
        return None

    def lines(self) -> list[dict[str, Any]]:
        return list(self.steps.values())


class SecretResolver:
    """Secrets the phases need, resolved when first needed (so a Vault outage fails a phase, not the bot)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> str:
        async with self._lock:
            if name not in self._cache:
                from bot.secrets import resolve_secrets

                settings = await asyncio.to_thread(resolve_secrets, self.settings, (name,))
                value = getattr(settings, name)
                if name == "registry_password" and not value and not self.settings.vault_addr:
                    return ""
                self._cache[name] = value.reveal() if value else ""
                register_secret(self._cache[name])  # never in a log line, wherever it came from
            return self._cache[name]

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


@dataclass
class PhaseResult:
    ok: bool
    summary: str
    state: str | None = None  # the incident's next state; None leaves it
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


RegistryObserver = Callable[[str, int, float], None]


@dataclass
class PhaseContext:
    settings: Settings
    incident: Incident
    secrets: SecretResolver
    kube: Kube | None = None
    actor: str | None = None
    target: str | None = None  # the node, for node actions
    registry_observer: RegistryObserver | None = None  # the bot's metrics

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run

    def registry(self) -> AbstractAsyncContextManager[RegistryClient]:
        return open_registry(self.settings, self.secrets, self.registry_observer)


@asynccontextmanager
async def open_registry(
    settings: Settings, secrets: SecretResolver, observer: RegistryObserver | None = None
) -> AsyncIterator[RegistryClient]:
    """A registry client logged in with the pull token (from its setting or Vault), closed after use."""
    client = RegistryClient(settings, await secrets.get("registry_password"), observer=observer)
    try:
        yield client
    finally:
        await client.aclose()
