"""The Bolt app: the slash command and one listener per button, each acknowledged at once and worked on in
the background (Slack gives up on an ack after 3 s).

process_before_response=True: each listener acks and returns, and Bolt answers the HTTP request as soon as
the listener returns, instead of polling for the ack every 10 ms (Bolt's default costs ~11 ms per ack).
Authorization of the bot itself is local (`authorize`): no auth.test on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.engine.commands import Commands
from bot.engine.ports import Supervisor
from bot.errors import BadReference
from bot.incidents.lifecycle import PHASES, PhaseSpec
from bot.incidents.store import Store
from bot.refs import parse_reference
from bot.registry.registries import all_hosts
from bot.slack import blocks
from bot.slack.clicks import Click, Clicks
from bot.slack.gateway import SlackGateway

log = logging.getLogger(__name__)
# Work started by Slack requests runs a few at a time, so a burst does not crowd the event loop that acks
# the next ones (benchmarks/ack.py). Phase clicks and approvals have their own slots, which checks and scans
# never take: four viewers' scans cannot hold up an approver's Rebuild.
PHASE_WORK = 4
CHECK_WORK = 4


class SlackApp:
    """Bolt's routing onto the engine: which listener handles what, and the gate their work runs through."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        slack: SlackGateway,
        supervisor: Supervisor,
        commands: Commands,
        clicks: Clicks,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slack = slack
        self.supervisor = supervisor
        self.commands = commands
        self.clicks = clicks
        self.phase_work = asyncio.Semaphore(PHASE_WORK)
        self.check_work = asyncio.Semaphore(CHECK_WORK)
        self.checks_running: dict[str, int] = {}  # user -> checks and scans of theirs in flight

    def work(
        self, coro: Coroutine[Any, Any, Any], what: str, channel: str, user: str, gate: asyncio.Semaphore | None
    ) -> None:
        async def tell(text: str) -> None:
            await self.slack.ephemeral(channel, user, f"⚠️ {blocks.escape(text)}")

        self.supervisor.spawn(coro, what, tell, gate)

    def at_check_limit(self, user: str) -> bool:
        return self.checks_running.get(user, 0) >= self.settings.checks_per_user

    def check_work_for(self, user: str, coro: Coroutine[Any, Any, Any], what: str, channel: str) -> None:
        """Run a check or scan of `user`'s (counted against CHECKS_PER_USER) on the checks' own slots."""
        self.checks_running[user] = self.checks_running.get(user, 0) + 1

        async def counted() -> None:
            try:
                await coro
            finally:
                self.checks_running[user] -= 1
                if not self.checks_running[user]:
                    del self.checks_running[user]

        self.work(counted(), what, channel, user, self.check_work)

    def busy_text(self) -> str:
        n = self.settings.checks_per_user
        return f"⏳ You already have {n} check(s) or scan(s) running (CHECKS_PER_USER); ask again when one ends."

    async def once(self, key: str, work: Coroutine[Any, Any, Any]) -> None:
        """Run a command's work unless another delivery of the same command already did."""
        if await asyncio.to_thread(self.store.claim_delivery, key):
            await work
        else:
            work.close()

    def build(self) -> AsyncApp:
        token = self.settings.slack_bot_token.reveal()
        slack = self.slack

        async def authorize(**kwargs: Any) -> AuthorizeResult:
            return AuthorizeResult(
                enterprise_id=kwargs.get("enterprise_id"),
                team_id=kwargs.get("team_id"),
                bot_token=token,
                bot_user_id=slack.bot_user_id or None,
            )

        app = AsyncApp(
            signing_secret=self.settings.slack_signing_secret.reveal(),
            authorize=authorize,
            client=AsyncWebClient(base_url=slack.client.base_url),
            process_before_response=True,
            raise_error_for_unhandled_request=False,
        )
        app.command("/registry")(self.on_command)
        for spec in PHASES.values():
            app.action(spec.action_id)(self._phase_listener(spec))
        app.action(blocks.APPROVE)(self._listener(lambda click: self.clicks.answer(click, approve=True)))
        app.action(blocks.DENY)(self._listener(lambda click: self.clicks.answer(click, approve=False)))
        app.action(blocks.CHECK_NOW)(self._check_now)
        app.action(re.compile(".*"))(self._listener(self.clicks.unknown))  # any other action_id (Bolt: first match)
        return app

    def _phase_listener(self, spec: PhaseSpec) -> Any:
        return self._listener(lambda click: self.clicks.phase(click, spec))

    def _listener(self, handle: Any) -> Any:
        async def listener(ack: Any, body: dict[str, Any]) -> None:
            await ack()
            click = Click.read(body)
            if click is None:
                log.warning("a block_actions payload without the fields a click has was ignored")
                return
            self.work(handle(click), f"action {click.action_id[:40]}", click.channel, click.user, self.phase_work)

        return listener

    async def _check_now(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        click = Click.read(body)
        if click is None:
            return
        if self.at_check_limit(click.user):
            await self.slack.ephemeral(click.channel, click.user, self.busy_text())
            return
        self.check_work_for(click.user, self.clicks.check_now(click), "check now", click.channel)

    async def on_command(self, ack: Any, command: dict[str, Any]) -> None:
        text = str(command.get("text") or "").strip()
        user, channel = str(command.get("user_id", "")), str(command.get("channel_id", ""))
        words = text.split()
        sub = words[0].lower() if words else ""
        delivery = f"command:{command.get('trigger_id') or command.get('api_app_id')}:{user}:{text[:100]}"
        if sub == "check":
            deep = "--deep" in words[1:]
            given = [w for w in words[1:] if w != "--deep"]
            if len(given) != 1:
                usage = "Usage: `/registry check [--deep] owner/name:tag` (or @sha256:<digest>)."
                await ack(response_type="ephemeral", text=usage)
                return
            try:
                ref = parse_reference(given[0], all_hosts(self.settings))
            except BadReference as exc:
                await ack(response_type="ephemeral", text=f"🚫 {blocks.escape(str(exc))}")
                return
            if self.at_check_limit(user):
                await ack(response_type="ephemeral", text=self.busy_text())
                return
            how = ", hashing every layer" if deep else ""
            await ack(response_type="ephemeral", text=f"🔎 Checking `{blocks.escape(str(ref))}`{how}…")
            work = self.once(delivery, self.commands.command_check(ref, user, channel, deep))
            self.check_work_for(user, work, f"check {ref}", channel)
        elif sub == "scan" and len(words) == 1:
            if self.at_check_limit(user):
                await ack(response_type="ephemeral", text=self.busy_text())
                return
            await ack(response_type="ephemeral", text="🔎 Scanning every tag of every repository…")
            self.check_work_for(user, self.once(delivery, self.commands.command_scan(user, channel)), "scan", channel)
        elif sub == "status" and len(words) == 1:
            await ack(response_type="ephemeral", text="Looking up open incidents…")
            self.work(self.once(delivery, self._status(user, channel)), "status", channel, user, None)
        else:
            await ack(response_type="ephemeral", text=blocks.USAGE)

    async def _status(self, user: str, channel: str) -> None:
        incidents = await self.commands.open_incidents()
        await self.slack.ephemeral(channel, user, blocks.status_list(incidents, self.slack.permalink))
