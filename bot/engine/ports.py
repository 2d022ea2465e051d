"""What the engine needs from the outside, as Protocols, and the supervisor its background work runs under.

The engine never imports Slack: it tells a `Notifier` what happened (an incident opened, a run ended) in
plain data, and the Slack adapter decides what the channel sees. Verification is asked of a
`VerificationScheduler`, which the leader's APScheduler implements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.errors import UserFacingError
from bot.incidents.models import ApprovalRequest, Incident, PhaseRun
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult
from bot.runbook.base import PhaseResult, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thread:
    """Where an incident's conversation lives (for Slack: channel and root message ts)."""

    channel: str
    ts: str


class RunProgress(Progress, Protocol):
    def steps_json(self) -> str:
        """The steps as shown, for the run's record."""
        ...


class Notifier(Protocol):
    # The incident's root message and thread.
    async def post_incident(self, incident: Incident) -> Thread | None: ...
    async def refresh_incident(self, incident_id: int) -> None: ...
    def run_progress(self, incident: Incident, run: PhaseRun) -> RunProgress: ...
    async def run_finished(
        self, incident: Incident, run: PhaseRun, result: PhaseResult, progress: RunProgress, seconds: float
    ) -> None: ...
    async def run_interrupted(self, incident: Incident, run: PhaseRun, reason: str) -> None: ...
    async def thread_note(self, incident: Incident, text: str) -> None: ...
    async def verification_scheduled(self, incident: Incident, when: datetime) -> None: ...
    async def check_intact_now(self, incident: Incident, user: str) -> None: ...
    async def approval_requested(self, incident: Incident, request: ApprovalRequest) -> str | None: ...
    async def approval_answered(self, incident: Incident, request: ApprovalRequest) -> None: ...
    # Outside any incident.
    async def check_verdict(self, channel: str, user: str, result: CheckResult) -> None: ...
    async def broken_elsewhere(self, channel: str, user: str, incident: Incident) -> None: ...
    async def scan_summary(
        self, channel: str, user: str | None, scans: Sequence[ScanResult], live: RunProgress | None = None
    ) -> None:
        """A scan's summary, every registry's: in `live` (the message that showed its progress) when given,
        else in a new message."""
        ...

    async def channel_note(self, text: str) -> None: ...
    async def info_alert(self, alertname: str, instance: str, summary: str, count: int) -> Thread | None: ...
    async def info_alert_changed(
        self,
        channel: str,
        ts: str,
        alertname: str,
        instance: str,
        summary: str,
        count: int,
        note: str,
        ended: bool = False,
    ) -> None: ...
    async def tell(self, channel: str, user: str, text: str) -> None: ...
    def live_message(self, channel: str, heading: str) -> RunProgress:
        """A message in `channel` that shows long work's progress, edited as it goes."""
        ...


class VerificationScheduler(Protocol):
    async def schedule_verification(self, incident: Incident, delay: float | None = None) -> datetime:
        """Verify `incident` after VERIFY_DELAY (or `delay` seconds), on whichever replica leads then."""
        ...


Tell = Callable[[str], Awaitable[None]]  # tells the person who asked, in one line only they see


class Supervisor:
    """Background work: its failure is logged, told to whoever asked, never lost, never crashes the bot."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        what: str,
        tell: Tell | None = None,
        gate: asyncio.Semaphore | None = None,
    ) -> asyncio.Task[Any]:
        async def guarded() -> Any:
            try:
                if gate is None:
                    return await coro
                async with gate:
                    return await coro
            except asyncio.CancelledError:
                raise
            except UserFacingError as exc:
                log.warning("%s failed: %s", what, exc)
                if tell:
                    await tell(str(exc))
            except Exception:
                log.exception("%s failed unexpectedly", what)
                if tell:
                    await tell(f"{what} failed unexpectedly; the bot's log has the details.")

        task = asyncio.create_task(guarded(), name=what)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Audit:
    """Every action and refusal, as a row; a database outage is logged, never raised into the flow."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def __call__(self, action: str, outcome: str, **fields: Any) -> None:
        try:
            await asyncio.to_thread(self.store.audit, action, outcome, **fields)
        except UserFacingError as exc:
            log.error("audit %s/%s not written: %s", action, outcome, exc)
