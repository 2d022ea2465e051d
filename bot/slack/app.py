"""The Bolt app: slash commands and button clicks, acknowledged at once, worked on in the background.

process_before_response=True: each listener acks and returns, and Bolt answers the HTTP request as soon
as the listener returns, instead of polling for the ack every 10 ms (Bolt's default costs ~11 ms per ack).
Authorization of the bot itself is local (`authorize`): no auth.test on the request path.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import BadReference
from bot.flows import RegistryBot
from bot.refs import parse_reference
from bot.slack import blocks

log = logging.getLogger(__name__)
MAX_VALUE = 300


def build_bolt(bot: RegistryBot) -> AsyncApp:
    settings = bot.settings
    token = settings.slack_bot_token.reveal()

    async def authorize(**kwargs: Any) -> AuthorizeResult:
        return AuthorizeResult(
            enterprise_id=kwargs.get("enterprise_id"),
            team_id=kwargs.get("team_id"),
            bot_token=token,
            bot_user_id=bot.slack.bot_user_id or None,
        )

    app = AsyncApp(
        signing_secret=settings.slack_signing_secret.reveal(),
        authorize=authorize,
        client=AsyncWebClient(base_url=bot.slack.client.base_url),
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )

    @app.command("/registry")
    async def on_command(ack: Any, command: dict[str, Any]) -> None:
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
                ref = parse_reference(words[1], settings.all_registry_hosts)
            except BadReference as exc:
                await ack(response_type="ephemeral", text=f"🚫 {exc}")
                return
            await ack(response_type="ephemeral", text=f"🔎 Checking `{ref}`…")
            bot.spawn(
                _once(bot, delivery, bot.command_check(ref, text, user, channel)),
                f"check {ref}",
                (channel, user),
                bot.request_work,
            )
        elif sub == "scan" and len(words) == 1:
            await ack(response_type="ephemeral", text="🔎 Scanning every tag of every repository…")
            bot.spawn(_once(bot, delivery, bot.command_scan(user, channel)), "scan", (channel, user))
        elif sub == "status" and len(words) == 1:
            await ack(response_type="ephemeral", text="Looking up open incidents…")
            bot.spawn(_once(bot, delivery, _status(bot, user, channel)), "status", (channel, user))
        else:
            await ack(response_type="ephemeral", text=blocks.USAGE)

    @app.action(re.compile(".*"))
    async def on_action(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        action = read_action(body)
        if action is None:
            log.warning("a block_actions payload without the fields a click has was ignored")
            return
        bot.spawn(
            bot.on_action(action),
            f"action {action['action_id'][:40]}",
            (action["channel"], action["user"]),
            bot.request_work,
        )

    return app


def read_action(body: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of a click, read defensively: a signed payload may still be crafted."""
    try:
        action = body["actions"][0]
        container = body.get("container") or {}
        message = body.get("message") or {}
        fields = {
            "action_id": str(action["action_id"])[:MAX_VALUE],
            "value": str(action.get("value") or "")[:MAX_VALUE],
            "action_ts": str(action.get("action_ts") or "")[:40],
            "user": str(body["user"]["id"])[:40],
            "channel": str((body.get("channel") or {}).get("id") or container.get("channel_id") or "")[:40],
            "message_ts": str(container.get("message_ts") or message.get("ts") or "")[:40],
            "thread_ts": str(container.get("thread_ts") or message.get("thread_ts") or "")[:40] or None,
        }
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return fields if fields["user"] and fields["channel"] else None


async def _once(bot: RegistryBot, key: str, work: Any) -> None:
    """Run a command's work unless another delivery of the same command already did."""
    if await bot.db(bot.store.claim_delivery, key):
        await work
    else:
        work.close()


async def _status(bot: RegistryBot, user: str, channel: str) -> None:
    await bot.slack.ephemeral(channel, user, await bot.status_text())
