"""What a click goes through after Slack has its ack: one delivery only, the incident it belongs to, the
channel it came from, an approver where the phase needs one; then the engine decides, and the clicker is
told the outcome in a line only they see. Every refusal is audited.

These checks run after the ack, not as Bolt listener middleware in front of it: each reads the database
(and the approver check may ask Slack for a user group), and Bolt answers Slack's HTTP request only when its
middleware chain and listener have returned, so they would add their latency to every ack.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from bot.config import Settings
from bot.engine.commands import Commands
from bot.engine.ports import Audit
from bot.engine.requests import AwaitingApproval, Decision, Denied, Refused, Requests
from bot.engine.runner import Busy, Started
from bot.incidents import lifecycle
from bot.incidents.approvals import Guard
from bot.incidents.lifecycle import PhaseSpec, State
from bot.incidents.models import Incident
from bot.incidents.store import Store
from bot.slack import blocks
from bot.slack.blocks import escape, mention
from bot.slack.gateway import SlackGateway
from bot.slack.notifier import SlackNotifier

log = logging.getLogger(__name__)
MAX_VALUE = 300
_ID = re.compile(r"^[0-9]{1,12}$")
_NODE_VALUE = re.compile(r"^([0-9]{1,12}):([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$")


@dataclass(frozen=True)
class Click:
    action_id: str
    value: str
    action_ts: str
    user: str
    channel: str
    message_ts: str
    thread_ts: str | None

    @classmethod
    def read(cls, body: dict[str, Any]) -> Click | None:
        """The fields of a click, read defensively: a signed payload may still be crafted."""
        try:
            action = body["actions"][0]
            container = body.get("container") or {}
            message = body.get("message") or {}
            click = cls(
                action_id=str(action["action_id"])[:MAX_VALUE],
                value=str(action.get("value") or "")[:MAX_VALUE],
                action_ts=str(action.get("action_ts") or "")[:40],
                user=str(body["user"]["id"])[:40],
                channel=str((body.get("channel") or {}).get("id") or container.get("channel_id") or "")[:40],
                message_ts=str(container.get("message_ts") or message.get("ts") or "")[:40],
                thread_ts=str(container.get("thread_ts") or message.get("thread_ts") or "")[:40] or None,
            )
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return click if click.user and click.channel else None


class Clicks:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        slack: SlackGateway,
        notifier: SlackNotifier,
        commands: Commands,
        requests: Requests,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slack = slack
        self.notifier = notifier
        self.commands = commands
        self.requests = requests
        self.guard = Guard(settings, slack)
        self.audit = Audit(store)

    # --- the checks ------------------------------------------------------------------------------------

    async def first_delivery(self, click: Click) -> bool:
        """A Slack retry, or the same click delivered to another replica, does nothing twice."""
        key = f"action:{click.action_ts}:{click.user}:{click.action_id}"
        if await asyncio.to_thread(self.store.claim_delivery, key):
            return True
        log.info("duplicate delivery of %s by %s ignored", click.action_id, click.user)
        return False

    async def refuse(self, click: Click, reason: str, incident_id: int | None = None, phase: str | None = None) -> None:
        """`reason` is Slack text already (it may mention people)."""
        await self.audit("refuse", "refused", user=click.user, incident_id=incident_id, phase=phase, detail=reason)
        await self.slack.ephemeral(click.channel, click.user, f"🚫 {reason}")

    async def incident_of(self, click: Click, incident_id: int) -> Incident | None:
        """The incident the click's button belongs to, in the channel and message it was posted in."""
        incident = await asyncio.to_thread(self.store.get, incident_id)
        if incident is None:
            await self.refuse(click, f"Incident #{incident_id} does not exist; nothing was done.")
            return None
        if click.channel != incident.channel or incident.root_ts not in (click.message_ts, click.thread_ts):
            await self.refuse(
                click, f"That button does not belong to incident #{incident_id}; nothing was done.", incident_id
            )
            return None
        return incident

    async def approver(self, click: Click, incident: Incident | None, what: str, phase: str | None = None) -> bool:
        """Asked of Slack afresh: someone removed from APPROVER_GROUP a minute ago approves nothing."""
        if await self.guard.is_approver(click.user, fresh=True):
            return True
        await self.refuse(
            click,
            f"Only approvers may {what}: {blocks.approvers_text(self.settings)}.",
            incident.id if incident else None,
            phase,
        )
        return False

    # --- the clicks ------------------------------------------------------------------------------------

    async def phase(self, click: Click, spec: PhaseSpec) -> None:
        if not await self.first_delivery(click):
            return
        target: str | None = None
        node = _NODE_VALUE.match(click.value) if spec.phase is lifecycle.Phase.NODE else None
        if node is not None:
            incident_id, target = int(node[1]), node[2]
        elif spec.phase is not lifecycle.Phase.NODE and _ID.match(click.value):
            incident_id = int(click.value)
        else:
            await self.refuse(click, "That button's value is malformed; nothing was done.")
            return
        incident = await self.incident_of(click, incident_id)
        if incident is None:
            return
        if incident.state == State.RESOLVED:
            await self.slack.ephemeral(click.channel, click.user, f"Incident #{incident.id} is already resolved.")
            return
        if spec.destructive and not await self.approver(click, incident, f"run {blocks.title(spec.phase)}", spec.phase):
            await self.notifier.refused_not_approver(incident, click.user, spec.phase)
            return
        decision = await self.requests.request(incident, spec.phase, click.user, target)
        await self.tell(click, decision)

    async def answer(self, click: Click, approve: bool) -> None:
        if not await self.first_delivery(click):
            return
        if not _ID.match(click.value):
            await self.refuse(click, "That button's value is malformed; nothing was done.")
            return
        request = await asyncio.to_thread(self.store.get_approval, int(click.value))
        incident = await asyncio.to_thread(self.store.get, request.incident_id) if request else None
        if request is None or incident is None:
            await self.refuse(click, "That approval request does not exist; nothing was done.")
            return
        if click.channel != incident.channel or request.message_ts != click.message_ts:
            await self.refuse(click, "That button does not belong to this request; nothing was done.", incident.id)
            return
        if not await self.approver(click, incident, "answer", request.phase):
            return
        if approve and not await self.guard.is_approver(request.requested_by, fresh=True):
            reason = f"{mention(request.requested_by)} who asked for it is no longer an approver; nothing was done."
            await self.refuse(click, reason, incident.id, request.phase)
            return
        await self.tell(click, await self.requests.answer(request, incident, click.user, approve))

    async def check_now(self, click: Click) -> None:
        if not await self.first_delivery(click):
            return
        await self.audit("check_now", "requested", user=click.user)
        await self.commands.command_scan(click.user, click.channel)

    async def unknown(self, click: Click) -> None:
        if await self.first_delivery(click):
            await self.refuse(click, f"Unknown action `{escape(click.action_id[:40])}`; nothing was done.")

    async def tell(self, click: Click, decision: Decision) -> None:
        """Say what the engine decided, to the clicker only (a start shows in the thread for everyone)."""
        if isinstance(decision, Busy):
            run = decision.run
            since, by = f"{run.started_at:%H:%M} UTC", mention(run.requested_by)
            text = f"⏳ {blocks.title(run.phase)} is already running since {since}, started by {by}."
        elif isinstance(decision, AwaitingApproval) and decision.already_asked:
            request = decision.request
            text = (
                f"⏳ {mention(request.requested_by)} already asked for {blocks.title(request.phase)}; "
                "it waits for a second approver."
            )
        elif isinstance(decision, Refused):
            by = f" by {mention(decision.by)}" if decision.by else ""
            text = f"🚫 {escape(decision.reason.rstrip('.'))}{by}."
        else:
            assert isinstance(decision, Started | AwaitingApproval | Denied)
            return
        await self.slack.ephemeral(click.channel, click.user, text)
