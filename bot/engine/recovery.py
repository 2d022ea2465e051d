"""Crash safety: heartbeats for the runs this replica executes, and the maintenance that finds what a crash
or an outage left behind (interrupted runs, expired approvals, unposted roots, stranded incidents)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.config import Settings
from bot.engine.ports import Audit, Notifier, Supervisor
from bot.engine.runner import Runner
from bot.errors import UserFacingError
from bot.incidents import lifecycle
from bot.incidents.lifecycle import DURING_STATES, State
from bot.incidents.models import ApprovalRequest, Incident, PhaseRun
from bot.incidents.store import Store

log = logging.getLogger(__name__)
UNPOSTED_GRACE = timedelta(seconds=30)  # a root message still missing after this is posted again
DELIVERIES_KEPT = timedelta(days=2)


class Recovery:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        notifier: Notifier,
        supervisor: Supervisor,
        runner: Runner,
        is_leader: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.supervisor = supervisor
        self.runner = runner
        self.is_leader = is_leader
        self.audit = Audit(store)

    def start(self) -> None:
        self.supervisor.spawn(self.heartbeats(), "heartbeats")
        self.supervisor.spawn(self.maintain(), "maintenance")

    async def heartbeats(self) -> None:
        """Only the database: a Slack outage must never stop them (others would think our phases died)."""
        while True:
            try:
                await asyncio.to_thread(self.store.heartbeat, list(self.runner.running))
            except Exception as exc:
                log.warning("heartbeat not written: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def maintain(self) -> None:
        while True:
            try:
                await self.maintain_once()
            except UserFacingError as exc:
                log.warning("maintenance skipped: %s", exc)
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def maintain_once(self) -> None:
        """What is found here is reported in the background, so one slow report holds up no other."""
        stale_after = timedelta(seconds=self.settings.heartbeat_interval * 3 + 5)
        for run in await asyncio.to_thread(self.store.claim_interrupted, stale_after):
            self.supervisor.spawn(self.report_interrupted(run), f"reporting interrupted run {run.id}")
        for request in await asyncio.to_thread(self.store.expire_approvals):
            self.supervisor.spawn(self.report_expired(request), f"reporting expired approval {request.id}")
        if not self.is_leader():
            return
        for incident in await asyncio.to_thread(self.store.list_open):
            if not incident.root_ts and incident.created_at < datetime.now(UTC) - UNPOSTED_GRACE:
                self.supervisor.spawn(self.post_missing_root(incident.id), f"posting incident {incident.id}")
        for incident in await asyncio.to_thread(self.store.stranded, DURING_STATES):
            self.supervisor.spawn(self.report_stranded(incident), f"repairing incident {incident.id}")
        await asyncio.to_thread(self.store.forget_deliveries, DELIVERIES_KEPT)

    async def report_expired(self, request: ApprovalRequest) -> None:
        await self.audit(
            "expire",
            lifecycle.ApprovalStatus.EXPIRED,
            incident_id=request.incident_id,
            phase=request.phase,
            detail=f"approval request #{request.id} by {request.requested_by}",
        )
        incident = await asyncio.to_thread(self.store.get, request.incident_id)
        if incident is not None and request.message_ts:
            await self.notifier.approval_answered(incident, request)

    async def post_missing_root(self, incident_id: int) -> None:
        """An incident whose root message never reached Slack (Slack down past the retries): post it now."""
        incident = await asyncio.to_thread(self.store.get, incident_id)
        if incident is None or incident.root_ts:
            return
        thread = await self.notifier.post_incident(incident)
        if thread is not None:
            await asyncio.to_thread(self.store.update, incident.id, root_ts=thread.ts, channel=thread.channel)

    async def report_stranded(self, incident: Incident) -> None:
        """An incident left in a during-phase state with no phase running (its run ended unrecorded)."""
        reason = f"The incident was left {incident.state}: its phase ended without a recorded result."
        await self._fail(incident.id, reason)
        await self.audit("repair", State.FAILED, incident_id=incident.id, detail=reason)
        await self.notifier.thread_note(incident, f"⚠️ {reason} Check the steps above, then run the phase again.")
        await self.notifier.refresh_incident(incident.id)

    async def report_interrupted(self, run: PhaseRun) -> None:
        title = lifecycle.spec(run.phase).title
        await self.audit(
            "interrupted",
            lifecycle.RunStatus.INTERRUPTED,
            incident_id=run.incident_id,
            phase=run.phase,
            detail=f"attempt {run.attempt}, last heartbeat {run.heartbeat_at:%H:%M:%S} UTC",
        )
        reason = f"{title} (attempt {run.attempt}) was interrupted: the bot stopped while it ran."
        incident = await self._fail(run.incident_id, reason)
        await self.notifier.run_interrupted(incident, run, reason)
        await self.notifier.refresh_incident(incident.id)

    async def _fail(self, incident_id: int, reason: str) -> Incident:
        return await asyncio.to_thread(
            self.store.update,
            incident_id,
            state=State.FAILED,
            failure_reason=reason,
            status_note="",
            clicked="{}",
        )
