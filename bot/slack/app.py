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
from bot.errors import BadReference, UserFacingError
from bot.incidents.lifecycle import PHASES, PhaseSpec
from bot.incidents.store import Store
from bot.refs import parse_reference
from bot.registry.registries import all_hosts
from bot.slack import blocks, prune_blocks
from bot.slack.clicks import Click, Clicks
from bot.slack.gateway import SlackGateway
from bot.slack.prune import PruneClicks

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
        prune: PruneClicks | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slack = slack
        self.supervisor = supervisor
        self.commands = commands
        self.clicks = clicks
        self.prune = prune
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
        if self.prune is not None:
            prune = self.prune
            app.action(prune_blocks.PRUNE_APPLY)(self._with_message(prune.apply))
            app.action(prune_blocks.PRUNE_APPROVE)(self._listener(lambda click: prune.answer(click, approve=True)))
            app.action(prune_blocks.PRUNE_DENY)(self._listener(lambda click: prune.answer(click, approve=False)))
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

    def _with_message(self, handle: Any) -> Any:
        """A listener whose work also gets the clicked message (to replace its button)."""

        async def listener(ack: Any, body: dict[str, Any]) -> None:
            await ack()
            click = Click.read(body)
            if click is None:
                return
            message = body.get("message") if isinstance(body.get("message"), dict) else {}
            self.work(
                handle(click, message), f"action {click.action_id[:40]}", click.channel, click.user, self.phase_work
            )

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
        elif sub == "prune" and self.prune is not None:
            await self._prune_command(ack, words[1:], user, channel, delivery)
        elif sub == "status" and len(words) == 1:
            await ack(response_type="ephemeral", text="Looking up open incidents…")
            self.work(self.once(delivery, self._status(user, channel)), "status", channel, user, None)
        else:
            await ack(response_type="ephemeral", text=blocks.USAGE)

    async def _prune_command(self, ack: Any, words: list[str], user: str, channel: str, delivery: str) -> None:
        """`/registry prune [registry] [keep=N] [older=DURATION]`: approvers only; the plan is posted with an Apply
        button."""
        from bot.prune import Policy
        from bot.registry.multiscan import select_registries

        keep = [w.partition("=")[2] for w in words if w.lower().startswith("keep=")]
        older = [w.partition("=")[2] for w in words if w.lower().startswith("older=")]
        hosts = [w for w in words if not w.lower().startswith(("keep=", "older="))]
        try:
            if len(keep) > 1 or len(older) > 1 or len(hosts) > 1:
                raise UserFacingError(prune_blocks.PRUNE_USAGE)
            age = older[0] if older else self.settings.prune_older_than or None
            policy = Policy.parse(keep[0] if keep else None, None, age)
            entry = select_registries(self.settings, hosts or None)[0]
        except (UserFacingError, IndexError) as exc:
            text = str(exc) if isinstance(exc, UserFacingError) else "No registry is configured."
            await ack(response_type="ephemeral", text=f"🚫 {blocks.escape(text)}")
            return
        await ack(response_type="ephemeral", text=f"🧹 Planning a prune of {blocks.escape(entry.host)}…")
        assert self.prune is not None
        prune = self.prune

        async def plan() -> None:
            if await self.clicks.guard.is_approver(user, fresh=True):
                await prune.flow.post_plan(entry, policy, user, channel)
                return
            reason = f"Only approvers may prune: {blocks.approvers_text(self.settings)}."
            await self.clicks.audit("refuse", "refused", user=user, detail=f"/registry prune: {reason}")
            await self.slack.ephemeral(channel, user, f"🚫 {reason}")

        self.work(self.once(delivery, plan()), "prune plan", channel, user, self.phase_work)

    async def _status(self, user: str, channel: str) -> None:
        incidents = await self.commands.open_incidents()
        await self.slack.ephemeral(channel, user, blocks.status_list(incidents, self.slack.permalink))
