"""What every phase shares: the context it runs in, the progress sink it reports to, the result it returns.

Phases produce plain text: no chat markup, nothing escaped. Whoever shows it (the Slack notifier, the command
line) formats and escapes it at its own boundary.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.config import Settings
from bot.incidents.lifecycle import Outcome, StepState
from bot.incidents.models import Incident
from bot.integrations.kube import Kube, Workload
from bot.registry.client import RegistryClient
from bot.registry.model import CheckResult
from bot.registry.session import RegistryObserver, open_registry
from bot.secrets import SecretResolver


@dataclass(frozen=True)
class Link:
    """A link a step or result points at (a CI pipeline): `text` is the part of the line that links."""

    url: str
    text: str


class Progress(Protocol):
    async def step(self, key: str, text: str, state: StepState = StepState.RUNNING, link: Link | None = None) -> None:
        """Add or replace the line `key`."""

    async def flush(self) -> None:
        """Make sure the last state is shown."""


@dataclass
class Step:
    key: str
    text: str
    state: StepState
    link: Link | None = None
    at: float = field(default_factory=time.time)

    def plain(self) -> str:
        """The line without markup: a link's address follows it."""
        return self.text + (f" ({self.link.url})" if self.link else "")

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.plain(), "state": str(self.state)}


class RecordingProgress:
    """Keeps the steps in order; the command line prints them, tests read them."""

    def __init__(self, echo: bool = False) -> None:
        self.steps: dict[str, Step] = {}
        self.history: list[tuple[str, str, str]] = []
        self.echo = echo

    async def step(self, key: str, text: str, state: StepState = StepState.RUNNING, link: Link | None = None) -> None:
        step = Step(key, text, StepState(state), link)
        self.steps[key] = step
        self.history.append((key, str(step.state), step.plain()))
        if self.echo:
            print(f"[{step.state}] {step.plain()}", flush=True)

    async def flush(self) -> None:
        return None


@dataclass
class PhaseResult:
    outcome: Outcome
    summary: str
    details: list[str] = field(default_factory=list)  # lines worth reading in full, e.g. a failed build's log
    link: Link | None = None
    check: CheckResult | None = None  # the image as the phase last saw it
    consumers: list[Workload] | None = None  # the workloads using the image; None when not looked up
    nodes: list[str] = field(default_factory=list)  # nodes where pods still cannot pull it
    schedule_verification: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @classmethod
    def succeeded(cls, summary: str, **fields: Any) -> PhaseResult:
        return cls(Outcome.SUCCEEDED, summary, **fields)

    @classmethod
    def failed(cls, summary: str, **fields: Any) -> PhaseResult:
        return cls(Outcome.FAILED, summary, **fields)


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
