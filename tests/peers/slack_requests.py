"""Requests shaped and signed exactly as Slack sends them to an app's Request URL.

Every builder returns ``(body_bytes, headers)`` ready to POST to the app (or to hand to Bolt as a
``BoltRequest(body=body.decode(), headers=headers)``). Signatures are Slack's v0 scheme, so the app's real
verification code runs. To test rejection, pass a different ``signing_secret`` (forged) or a
``timestamp`` more than five minutes from now (stale)::

    body, headers = slash_command(SECRET, "fix registry.example/app:1.2")
    body, headers = slash_command("not-the-secret", "fix ...")            # forged
    body, headers = slash_command(SECRET, "fix ...", timestamp=time.time() - 600)   # stale
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from .slack_api import API_APP_ID, BOT_ID, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID

VERIFICATION_TOKEN = "verification-token-standin"
SLACK_USER_AGENT = "Slackbot 1.0 (+https://api.slack.com/robots)"
FORM = "application/x-www-form-urlencoded"

DEFAULT_COMMAND_RESPONSE_URL = f"https://hooks.slack.com/commands/{TEAM_ID}/1234567890123/standinResponseUrl"
DEFAULT_ACTION_RESPONSE_URL = f"https://hooks.slack.com/actions/{TEAM_ID}/1234567890123/standinResponseUrl"

Timestamp = int | float | str | None


def sign(
    signing_secret: str, body: bytes | str, timestamp: Timestamp = None, *, content_type: str = FORM
) -> dict[str, str]:
    """Headers Slack would send with ``body``: Content-Type, the v0 signature and its timestamp.

    ``timestamp`` defaults to now; pass an old one to produce a stale (replayed) request.
    """
    ts = str(int(time.time() if timestamp is None else float(timestamp)))
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {
        "Content-Type": content_type,
        "User-Agent": SLACK_USER_AGENT,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def slash_command(
    signing_secret: str,
    text: str,
    user_id: str = "U1",
    user_name: str = "alice",
    channel_id: str = "C0ALERTS",
    command: str = "/registry",
    response_url: str = DEFAULT_COMMAND_RESPONSE_URL,
    timestamp: Timestamp = None,
    *,
    channel_name: str = "alerts",
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = API_APP_ID,
    token: str = VERIFICATION_TOKEN,
    trigger_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed slash command invocation, with the fields (and field order) Slack uses."""
    fields = {
        "token": token,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _trigger_id(),
    }
    body = urlencode(fields).encode()
    return body, sign(signing_secret, body, timestamp)


def block_action(
    signing_secret: str,
    action_id: str,
    value: str | None = None,
    user_id: str = "U1",
    channel_id: str = "C0ALERTS",
    message_ts: str | None = None,
    thread_ts: str | None = None,
    response_url: str = DEFAULT_ACTION_RESPONSE_URL,
    timestamp: Timestamp = None,
    message: Mapping[str, Any] | None = None,
    *,
    user_name: str = "alice",
    channel_name: str = "alerts",
    block_id: str | None = None,
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = API_APP_ID,
    token: str = VERIFICATION_TOKEN,
    is_ephemeral: bool = False,
    trigger_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed ``block_actions`` interaction: a user clicking button ``action_id``.

    Pass the clicked ``message`` (e.g. from ``SlackStandIn.messages()`` or a ``chat.postMessage``
    response's ``message``) to embed it as Slack does; the button is then looked up in its blocks for
    its ``block_id``, label, style and (when ``value`` is None) value, and ``message_ts``/``thread_ts``
    default to the message's. Raises ValueError if the message has no such button, which usually means
    the test is clicking something the bot never showed.
    """
    button: Mapping[str, Any] = {}
    found_block_id: str | None = None
    if message is not None:
        message_ts = message_ts or message.get("ts")
        thread_ts = thread_ts or message.get("thread_ts")
        hit = _find_action(message.get("blocks") or [], action_id)
        if hit is None:
            raise ValueError(f"message {message_ts} has no element with action_id {action_id!r}")
        found_block_id, button = hit
    if not message_ts:
        raise ValueError("block_action needs message_ts or message")
    if value is None:
        value = button.get("value")

    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id or found_block_id or "standin-block",
        "text": button.get("text") or {"type": "plain_text", "text": action_id, "emoji": True},
        "type": button.get("type", "button"),
        "action_ts": f"{time.time():.6f}",
    }
    if value is not None:
        action["value"] = value
    if "style" in button:
        action["style"] = button["style"]

    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": is_ephemeral,
    }
    if thread_ts:
        container["thread_ts"] = thread_ts

    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": token,
        "container": container,
        "trigger_id": trigger_id or _trigger_id(),
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "message": _slack_message(message, message_ts, thread_ts),
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }
    body = urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()
    return body, sign(signing_secret, body, timestamp)


def _find_action(blocks: list[Any], action_id: str) -> tuple[str | None, Mapping[str, Any]] | None:
    for block in blocks:
        if not isinstance(block, Mapping):
            continue
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if isinstance(block.get("accessory"), Mapping):
            elements.append(block["accessory"])
        for element in elements:
            if isinstance(element, Mapping) and element.get("action_id") == action_id:
                return block.get("block_id"), element
    return None


def _slack_message(message: Mapping[str, Any] | None, ts: str, thread_ts: str | None) -> dict[str, Any]:
    """The message as it appears inside an interaction payload (no stand-in bookkeeping fields)."""
    source = message or {}
    out: dict[str, Any] = {
        "type": "message",
        "user": source.get("user") or BOT_USER_ID,
        "bot_id": source.get("bot_id") or BOT_ID,
        "app_id": source.get("app_id") or API_APP_ID,
        "text": source.get("text") or "",
        "ts": ts,
        "team": TEAM_ID,
        "blocks": list(source.get("blocks") or []),
    }
    if source.get("attachments"):
        out["attachments"] = list(source["attachments"])
    if thread_ts:
        out["thread_ts"] = thread_ts
    return out


def _trigger_id() -> str:
    return f"{int(time.time() * 1000)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
