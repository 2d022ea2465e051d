"""Slack's Web API as the bot uses it, with delivery that survives rate limits and outages.

- slack_sdk's own retry handlers retry each call a few times: on `ratelimited` (HTTP 429, after
  Retry-After), on 5xx and on connection errors.
- Past those, an outage is waited out: the call is sent again with backoff (Retry-After for a 429) for up
  to SLACK_RETRY_FOR seconds, so messages sent while Slack is down arrive once it is back.
- Errors a retry cannot fix (channel_not_found, not_in_channel, invalid_auth, ...): logged once with the fix,
  never raised into the caller's flow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics

log = logging.getLogger(__name__)

FIXES = {
    "channel_not_found": "the channel ID is wrong or the channel is private: check SLACK_CHANNEL and invite the bot",
    "not_in_channel": "the bot is not in the channel: invite it with /invite @registry-bot",
    "is_archived": "the channel is archived: unarchive it or change SLACK_CHANNEL",
    "invalid_auth": "SLACK_BOT_TOKEN is not valid: reinstall the app and update the token",
    "not_authed": "SLACK_BOT_TOKEN is missing",
    "account_inactive": "the app was uninstalled or its token revoked: reinstall it",
    "token_revoked": "the bot token was revoked: reinstall the app",
    "missing_scope": "the app lacks a scope: compare its scopes with manifests/slack-app.yaml",
    "message_not_found": "the message was deleted in Slack",
    "user_not_in_channel": "the user left the channel",
}
UNRETRYABLE = set(FIXES) | {"invalid_blocks", "msg_too_long", "no_text", "cant_update_message", "invalid_arguments"}


@dataclass
class Posted:
    channel: str
    ts: str


class SlackGateway:
    def __init__(self, token: str, base_url: str, retry_for: float = 900.0) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        retries = [
            AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            AsyncServerErrorRetryHandler(max_retry_count=2),
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
        ]
        self.client = AsyncWebClient(token=token, base_url=base_url, timeout=10, retry_handlers=retries)
        self.retry_for = retry_for
        self.team_url = ""
        self.bot_user_id = ""
        self._group_cache: dict[str, tuple[float, set[str]]] = {}
        self._group_lock = asyncio.Lock()

    async def identify(self) -> bool:
        response = await self._call("auth_test")
        if response is None:
            return False
        self.team_url = str(response.get("url") or "")
        self.bot_user_id = str(response.get("user_id") or "")
        return True

    # --- messages --------------------------------------------------------------------------------------

    async def post(
        self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None, thread_ts: str | None = None
    ) -> Posted | None:
        kwargs: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if blocks is not None:
            kwargs["blocks"] = blocks
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        response = await self._call("chat_postMessage", **kwargs)
        if response is None:
            return None
        return Posted(str(response["channel"]), str(response["ts"]))

    async def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> bool:
        kwargs: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        kwargs["blocks"] = blocks if blocks is not None else []
        return await self._call("chat_update", **kwargs) is not None

    async def ephemeral(self, channel: str, user: str, text: str, blocks: list[dict[str, Any]] | None = None) -> bool:
        kwargs: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if blocks is not None:
            kwargs["blocks"] = blocks
        return await self._call("chat_postEphemeral", **kwargs) is not None

    def permalink(self, channel: str, ts: str) -> str:
        """A message's link, built locally (no chat.getPermalink round trip)."""
        base = self.team_url.rstrip("/") or "https://slack.com"
        return f"{base}/archives/{channel}/p{ts.replace('.', '')}"

    # --- user groups ------------------------------------------------------------------------------------

    async def group_members(self, group: str, ttl: float = 60.0) -> set[str] | None:
        """Members of a user group (by ID, or by handle), cached for `ttl` seconds. None if Slack cannot say."""
        async with self._group_lock:
            cached = self._group_cache.get(group)
            if cached and cached[0] > time.monotonic():
                return cached[1]
            group_id = group
            if not group.startswith("S"):
                listing = await self._call("usergroups_list", retry=False)
                if listing is None:
                    return None
                handle = group.lstrip("@")
                match = [g for g in listing.get("usergroups", []) if g.get("handle") == handle]
                if not match:
                    log.warning("Slack user group @%s does not exist; APPROVER_GROUP names no one", handle)
                    self._group_cache[group] = (time.monotonic() + ttl, set())
                    return set()
                group_id = str(match[0]["id"])
            response = await self._call("usergroups_users_list", usergroup=group_id, retry=False)
            if response is None:
                return None
            members = {str(u) for u in response.get("users", [])}
            self._group_cache[group] = (time.monotonic() + ttl, members)
            return members

    # --- the one place calls go out -------------------------------------------------------------------

    async def _call(self, method: str, *, retry: bool = True, **kwargs: Any) -> Any:
        deadline = time.monotonic() + (self.retry_for if retry else 0)
        delay = 1.0
        name = method.replace("_", ".", 1) if method != "auth_test" else "auth.test"
        while True:
            try:
                response = await getattr(self.client, method)(**kwargs)
                return response
            except SlackApiError as exc:
                error = str(exc.response.get("error", "")) if exc.response is not None else ""
                status = exc.response.status_code if exc.response is not None else 0
                metrics.SLACK_API_ERRORS.labels(method=name, error=error or str(status)).inc()
                if status == 429 or error == "ratelimited":
                    wait = _retry_after(exc)
                    if time.monotonic() + wait > deadline:
                        log.error("Slack %s: still rate-limited after %.0fs; giving up this message", name, wait)
                        return None
                    log.warning("Slack %s: rate-limited, retrying in %.0fs as Slack asks", name, wait)
                    await asyncio.sleep(wait)
                    continue
                if error in UNRETRYABLE or (status and status < 500):
                    fix = FIXES.get(error, "")
                    log.error("Slack %s failed: %s%s", name, error or status, f" — {fix}" if fix else "")
                    return None
                problem = f"HTTP {status} {error}".strip()
            except (TimeoutError, OSError) as exc:
                metrics.SLACK_API_ERRORS.labels(method=name, error=type(exc).__name__).inc()
                problem = type(exc).__name__
            except Exception as exc:  # aiohttp's errors and the like: Slack unreachable
                metrics.SLACK_API_ERRORS.labels(method=name, error=type(exc).__name__).inc()
                problem = type(exc).__name__
            if time.monotonic() + delay > deadline:
                log.error("Slack %s failed (%s) and kept failing; giving up this message", name, problem)
                return None
            log.warning("Slack %s failed (%s); retrying in %.0fs", name, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


def _retry_after(exc: SlackApiError) -> float:
    try:
        return max(float(exc.response.headers.get("Retry-After", "1")), 0.0)
    except (AttributeError, TypeError, ValueError):
        return 1.0
