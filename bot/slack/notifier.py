"""The engine's Notifier, for Slack: every message the bot sends about incidents is rendered here (through
blocks.py, which escapes all outside text) and goes out through the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from bot.config import Settings
from bot.engine.ports import RunProgress, Thread
from bot.incidents.models import ApprovalRequest, Incident, PhaseRun
from bot.incidents.store import Store
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult
from bot.runbook.base import PhaseResult
from bot.slack import blocks
from bot.slack.blocks import escape, mention
from bot.slack.gateway import SlackGateway
from bot.slack.progress import SlackProgress


class SlackNotifier:
    def __init__(self, settings: Settings, slack: SlackGateway, store: Store) -> None:
        self.settings = settings
        self.slack = slack
        self.store = store
        self._root_locks: dict[int, asyncio.Lock] = {}

    # --- the incident's root message and thread ---------------------------------------------------------

    async def post_incident(self, incident: Incident) -> Thread | None:
        text, message = blocks.incident_message(incident)
        posted = await self.slack.post(incident.channel or self.settings.slack_channel, text, message)
        return Thread(posted.channel, posted.ts) if posted is not None else None

    async def refresh_incident(self, incident_id: int) -> None:
        """Edit the root message to show the incident as it is now (one edit at a time per incident)."""
        lock = self._root_locks.setdefault(incident_id, asyncio.Lock())
        async with lock:
            incident = await asyncio.to_thread(self.store.get, incident_id)
            if incident is None or not incident.root_ts or not incident.channel:
                return
            running = await asyncio.to_thread(self.store.running_phase, incident_id)
            text, message = blocks.incident_message(incident, running)
            await self.slack.update(incident.channel, incident.root_ts, text, message)

    async def _reply(self, incident: Incident, text: str, message: blocks.Blocks | None = None) -> None:
        if incident.root_ts and incident.channel:
            await self.slack.post(incident.channel, text, message, thread_ts=incident.root_ts)

    def run_progress(self, incident: Incident, run: PhaseRun) -> RunProgress:
        async def remember(ts: str) -> None:
            await asyncio.to_thread(self.store.update_run, run.id, progress_ts=ts)

        return SlackProgress(
            self.slack,
            incident.channel or self.settings.slack_channel,
            incident.root_ts or "",
            blocks.run_heading(run),
            on_posted=remember,
        )

    async def run_finished(
        self, incident: Incident, run: PhaseRun, result: PhaseResult, progress: RunProgress, seconds: float
    ) -> None:
        icon = "✅" if result.ok else "❌"
        if isinstance(progress, SlackProgress):
            progress.set_footer(f"{icon} {'Done' if result.ok else 'Failed'} in {_duration(seconds)}")
        await progress.flush()
        text, message = blocks.run_reply(run, result.ok, result.summary, result.details, result.link)
        await self._reply(incident, text, message)
        await self.refresh_incident(incident.id)
        if result.nodes and self.settings.node_actions:
            text, message = blocks.node_offer(incident.id, result.nodes)
            await self._reply(incident, text, message)

    async def run_interrupted(self, incident: Incident, run: PhaseRun, reason: str) -> None:
        text, message = blocks.run_again(incident, run, reason)
        await self._reply(incident, text, message)

    async def thread_note(self, incident: Incident, text: str) -> None:
        await self._reply(incident, escape(text))

    async def verification_scheduled(self, incident: Incident, when: datetime) -> None:
        await self._reply(incident, f"⏱️ Verification at {when.astimezone(UTC):%H:%M} UTC.")

    async def check_intact_now(self, incident: Incident, user: str) -> None:
        await self._reply(incident, f"ℹ️ `/registry check` by {mention(user)}: intact now.")

    async def refused_not_approver(self, incident: Incident, user: str, phase: str) -> None:
        await self._reply(incident, f"🚫 {mention(user)} asked for {blocks.title(phase)}: refused, not an approver.")

    async def approval_requested(self, incident: Incident, request: ApprovalRequest) -> str | None:
        if not (incident.channel and incident.root_ts):
            return None
        text, message = blocks.approval_message(request)
        posted = await self.slack.post(incident.channel, text, message, thread_ts=incident.root_ts)
        return posted.ts if posted is not None else None

    async def approval_answered(self, incident: Incident, request: ApprovalRequest) -> None:
        if request.message_ts:
            text, message = blocks.approval_answered(request)
            await self.slack.update(incident.channel or "", request.message_ts, text, message)

    # --- outside any incident ---------------------------------------------------------------------------

    async def check_verdict(self, channel: str, user: str, result: CheckResult) -> None:
        text, message = blocks.check_message(result, user)
        await self.slack.post(channel, text, message)

    async def broken_elsewhere(self, channel: str, user: str, incident: Incident) -> None:
        where = blocks.link(self.slack.permalink(incident.channel or "", incident.root_ts or ""), f"#{incident.id}")
        await self.slack.ephemeral(channel, user, f"🔴 {escape(incident.image)} is broken: incident {where}.")

    async def scan_summary(
        self, channel: str, user: str | None, scans: Sequence[ScanResult], live: RunProgress | None = None
    ) -> None:
        text, message = blocks.scan_summary(scans, user)
        if isinstance(live, SlackProgress):
            await live.flush()  # its last progress edit first, so the summary is the message's last word
            if live.ts is not None:
                await self.slack.update(live.channel, live.ts, text, message)
                return
        await self.slack.post(channel, text, message)

    async def channel_note(self, text: str) -> None:
        await self.slack.post(self.settings.slack_channel, escape(text))

    async def info_alert(self, alertname: str, instance: str, summary: str, count: int) -> Thread | None:
        text, message = blocks.info_alert(alertname, instance, summary, count)
        posted = await self.slack.post(self.settings.slack_channel, text, message)
        return Thread(posted.channel, posted.ts) if posted is not None else None

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
    ) -> None:
        text, message = blocks.info_alert(alertname, instance, summary, count, note, ended)
        await self.slack.update(channel, ts, text, message)

    def live_message(self, channel: str, heading: str) -> RunProgress:
        return SlackProgress(self.slack, channel, "", escape(heading))

    async def tell(self, channel: str, user: str, text: str) -> None:
        await self.slack.ephemeral(channel, user, escape(text))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"
