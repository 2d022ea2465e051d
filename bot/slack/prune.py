"""Prune in Slack: the engine's PruneNotifier (every message rendered through blocks.py), and the clicks on a
plan's Apply button and on its two-person request, each checked as a phase click is (first delivery, the
message it belongs to, an approver asked afresh)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from bot.config import Settings
from bot.engine.ports import RunProgress
from bot.engine.prune import PruneFlow
from bot.incidents.models import PrunePlan
from bot.incidents.store import Store
from bot.prune import Outcome
from bot.slack import prune_blocks
from bot.slack.blocks import escape, mention
from bot.slack.clicks import Click, Clicks
from bot.slack.gateway import SlackGateway
from bot.slack.progress import SlackProgress

_ID = re.compile(r"^[0-9]{1,12}$")


class SlackPruneNotifier:
    def __init__(self, settings: Settings, slack: SlackGateway) -> None:
        self.settings = settings
        self.slack = slack

    async def prune_plan(self, record: PrunePlan, outcome: Outcome) -> str | None:
        text, message = prune_blocks.prune_plan(record.id, outcome, record.source, record.requested_by)
        posted = await self.slack.post(record.channel, text, message)
        return posted.ts if posted is not None else None

    async def prune_not_planned(self, channel: str, user: str | None, registry: str, error: str) -> None:
        await self.slack.post(channel, prune_blocks.prune_not_planned(registry, error, user))

    async def prune_approval(self, record: PrunePlan) -> str | None:
        if not record.message_ts:
            return None
        text, message = prune_blocks.prune_approval(
            record.id, record.registry_host, record.apply_by or "", record.expires_at
        )
        posted = await self.slack.post(record.channel, text, message, thread_ts=record.message_ts)
        return posted.ts if posted is not None else None

    async def prune_answered(self, record: PrunePlan) -> None:
        if record.approval_ts:
            text, message = prune_blocks.prune_answered(record.id, record.apply_by, record.status, record.approved_by)
            await self.slack.update(record.channel, record.approval_ts, text, message)

    def prune_progress(self, record: PrunePlan) -> RunProgress:
        heading = f"🧹 Applying prune plan #{record.id} on {escape(record.registry_host)}"
        if record.approved_by:
            heading += f" — approved by {mention(record.approved_by)}"
        return SlackProgress(self.slack, record.channel, record.message_ts or "", heading)

    async def prune_applied(self, record: PrunePlan, outcome: Outcome) -> None:
        text, message = prune_blocks.prune_applied(record.id, outcome)
        await self.slack.post(record.channel, text, message, thread_ts=record.message_ts)


class PruneClicks:
    def __init__(self, store: Store, slack: SlackGateway, clicks: Clicks, flow: PruneFlow) -> None:
        self.store = store
        self.slack = slack
        self.clicks = clicks
        self.flow = flow

    async def _plan_of(self, click: Click, approval: bool) -> PrunePlan | None:
        if not _ID.match(click.value):
            await self.clicks.refuse(click, "That button's value is malformed; nothing was done.")
            return None
        record = await asyncio.to_thread(self.store.get_prune_plan, int(click.value))
        where = record.approval_ts if (record and approval) else (record.message_ts if record else None)
        if record is None or click.channel != record.channel or where != click.message_ts:
            await self.clicks.refuse(click, "That button does not belong to a prune plan here; nothing was done.")
            return None
        return record

    async def apply(self, click: Click, message: dict[str, Any]) -> None:
        if not await self.clicks.first_delivery(click):
            return
        record = await self._plan_of(click, approval=False)
        if record is None or not await self.clicks.approver(click, None, "apply a prune"):
            return
        if message.get("blocks"):  # the button gives way to who clicked it, so nobody clicks twice
            shown = prune_blocks.prune_clicked(list(message["blocks"]), click.user)
            await self.slack.update(click.channel, click.message_ts, str(message.get("text") or ""), shown)
        reason = await self.flow.ask(record.id, click.user)
        if reason:
            await self.slack.ephemeral(click.channel, click.user, f"🚫 {escape(reason.rstrip('.'))}.")

    async def answer(self, click: Click, approve: bool) -> None:
        if not await self.clicks.first_delivery(click):
            return
        record = await self._plan_of(click, approval=True)
        if record is None or not await self.clicks.approver(click, None, "answer"):
            return
        if approve and not await self.clicks.guard.is_approver(record.apply_by or "", fresh=True):
            reason = f"{mention(record.apply_by)} who asked for it is no longer an approver; nothing was done."
            await self.clicks.refuse(click, reason)
            return
        refusal = await self.flow.answer(record.id, click.user, approve)
        if refusal:
            await self.slack.ephemeral(click.channel, click.user, f"🚫 {escape(refusal.rstrip('.'))}.")
