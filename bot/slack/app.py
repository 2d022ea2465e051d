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
from bot.engine.intake import Intake
from bot.engine.ports import Supervisor
from bot.errors import BadReference
from bot.incidents.lifecycle import PHASES, PhaseSpec
from bot.incidents.store import Store
from bot.refs import parse_reference
from bot.slack import blocks
from bot.slack.clicks import Click, Clicks
from bot.slack.gateway import SlackGateway

log = logging.getLogger(__name__)
REQUEST_WORK = 4  # work started by Slack requests runs this many at a time (benchmarks/ack.py)


class SlackApp:
    """Bolt's routing onto the engine: which listener handles what, and the gate their work runs through."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        slack: SlackGateway,
        supervisor: Supervisor,
        intake: Intake,
        clicks: Clicks,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slack = slack
        self.supervisor = supervisor
        self.intake = intake
        self.clicks = clicks
        # A burst of clicks must not crowd the event loop that acknowledges the next ones.
        self.request_work = asyncio.Semaphore(REQUEST_WORK)

    def work(self, coro: Coroutine[Any, Any, Any], what: str, channel: str, user: str, gated: bool = True) -> None:
        async def tell(text: str) -> None:
            await self.slack.ephemeral(channel, user, f"⚠️ {blocks.escape(text)}")

        self.supervisor.spawn(coro, what, tell, self.request_work if gated else None)

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
        app.action(blocks.CHECK_NOW)(self._listener(self.clicks.check_now))
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
            self.work(handle(click), f"action {click.action_id[:40]}", click.channel, click.user)

        return listener

    async def on_command(self, ack: Any, command: dict[str, Any]) -> None:
        text = str(command.get("text") or "").strip()
        user, channel = str(command.get("user_id", "")), str(command.get("channel_id", ""))
        words = text.split()
        sub = words[0].lower() if words else ""
        delivery = f"command:{command.get('trigger_id') or command.get('api_app_id')}:{user}:{text[:100]}"
        if sub == "check":
            if len(words) != 2:
                await ack(
                    response_type="ephemeral", text="Usage: `/registry check owner/name:tag` (or @sha256:<digest>)."
                )
                return
            try:
                ref = parse_reference(words[1], self.settings.all_registry_hosts)
            except BadReference as exc:
                await ack(response_type="ephemeral", text=f"🚫 {blocks.escape(str(exc))}")
                return
            await ack(response_type="ephemeral", text=f"🔎 Checking `{blocks.escape(str(ref))}`…")
            self.work(self.once(delivery, self.intake.command_check(ref, user, channel)), f"check {ref}", channel, user)
        elif sub == "scan" and len(words) == 1:
            await ack(response_type="ephemeral", text="🔎 Scanning every tag of every repository…")
            work = self.once(delivery, self.intake.command_scan(user, channel))
            self.work(work, "scan", channel, user, gated=False)
        elif sub == "status" and len(words) == 1:
            await ack(response_type="ephemeral", text="Looking up open incidents…")
            self.work(self.once(delivery, self._status(user, channel)), "status", channel, user, gated=False)
        else:
            await ack(response_type="ephemeral", text=blocks.USAGE)

    async def _status(self, user: str, channel: str) -> None:
        incidents = await self.intake.open_incidents()
        await self.slack.ephemeral(channel, user, blocks.status_list(incidents, self.slack.permalink))
