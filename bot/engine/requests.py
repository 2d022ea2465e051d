"""A person asks for a phase, or answers a two-person request: the engine decides, from the lifecycle
table, whether it starts now, waits for a second approver, or is refused, and says which."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from bot.config import Settings
from bot.engine.ports import Audit, Notifier
from bot.engine.runner import Busy, Runner, Started
from bot.incidents import lifecycle
from bot.incidents.approvals import Guard
from bot.incidents.lifecycle import Phase
from bot.incidents.models import ApprovalRequest, Incident
from bot.incidents.store import Store


@dataclass(frozen=True)
class AwaitingApproval:
    request: ApprovalRequest
    already_asked: bool = False  # someone asked for the same phase before and it still waits


@dataclass(frozen=True)
class Refused:
    reason: str
    by: str | None = None  # the user whose earlier answer settled it


@dataclass(frozen=True)
class Denied:
    request: ApprovalRequest


Decision = Started | Busy | AwaitingApproval | Refused | Denied


class Requests:
    def __init__(self, settings: Settings, store: Store, notifier: Notifier, runner: Runner) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.runner = runner
        self.guard = Guard(settings)
        self.audit = Audit(store)

    # --- asking -------------------------------------------------------------------------------------------

    async def request(self, incident: Incident, phase: Phase, user: str, target: str | None = None) -> Decision:
        """A person asks for a phase (authorized already): start it, or ask a second approver, or say why not."""
        spec = lifecycle.spec(phase)
        running = await asyncio.to_thread(self.store.running_phase, incident.id)
        if running is not None:  # the usual double click: say what runs, not that the state forbids it
            return await self.runner.busy(incident, running, user, phase)
        if not lifecycle.may_start(phase, incident.state):
            return await self._refuse(
                f"{spec.title} does not apply while the incident is {incident.state}.", user, incident, phase
            )
        if phase not in self.runner.phases:
            return await self._refuse(f"{spec.title} is not available on this bot.", user, incident, phase)
        if self.guard.needs_two_people(phase):
            return await self._ask_second_approver(incident, phase, user, target)
        await self.audit("request", "accepted", user=user, incident_id=incident.id, phase=phase)
        approved_by = user if spec.destructive else None
        return await self.runner.start(incident, phase, requested_by=user, approved_by=approved_by, target=target)

    async def _ask_second_approver(self, incident: Incident, phase: Phase, user: str, target: str | None) -> Decision:
        pending = [
            r
            for r in await asyncio.to_thread(self.store.pending_approvals, incident.id)
            if (r.phase, r.target) == (phase, target)
        ]
        if pending:
            return AwaitingApproval(pending[0], already_asked=True)
        ttl = timedelta(seconds=self.settings.approval_ttl)
        request = await asyncio.to_thread(self.store.create_approval, incident.id, phase, user, ttl, target)
        await self.audit(
            "request",
            "pending",
            user=user,
            incident_id=incident.id,
            phase=phase,
            detail=f"approval request #{request.id}" + (f" for {target}" if target else ""),
        )
        ts = await self.notifier.approval_requested(incident, request)
        if ts is not None:
            await asyncio.to_thread(self.store.set_approval_message, request.id, ts)
        return AwaitingApproval(request)

    async def answer(self, request: ApprovalRequest, incident: Incident, user: str, approve: bool) -> Decision:
        """An approver (authorized already) answers a two-person request."""
        phase = Phase(request.phase)
        if approve and not lifecycle.may_start(phase, incident.state):
            title = lifecycle.spec(phase).title
            return await self._refuse(f"{title} no longer applies: the incident is {incident.state}.", user, incident)
        answer = await asyncio.to_thread(self.store.answer_approval, request.id, user, approve)
        if not answer.accepted:
            settled = answer.request
            if settled is not None and settled.status == lifecycle.ApprovalStatus.EXPIRED and request.message_ts:
                await self.notifier.approval_answered(incident, settled)
            by = settled.answered_by if settled is not None else None
            return await self._refuse(f"Not done: {answer.reason}", user, incident, phase, by=by)
        decided = answer.request
        assert decided is not None
        await self.audit(
            "approve" if approve else "deny",
            decided.status,
            user=user,
            incident_id=incident.id,
            phase=phase,
            detail=f"approval request #{request.id} by {request.requested_by}",
        )
        await self.notifier.approval_answered(incident, decided)
        if not approve:
            await asyncio.to_thread(self.store.clear_clicked, incident.id)
            await self.notifier.refresh_incident(incident.id)
            return Denied(decided)
        return await self.runner.start(
            incident,
            phase,
            requested_by=request.requested_by,
            approved_by=user,
            target=request.target,
            requested_at=request.requested_at,
        )

    async def _refuse(
        self, reason: str, user: str | None, incident: Incident, phase: Phase | None = None, by: str | None = None
    ) -> Refused:
        await self.audit("refuse", "refused", user=user, incident_id=incident.id, phase=phase, detail=reason)
        return Refused(reason, by)
