"""Tests of the Slack stand-in, driven by the real slack_sdk clients (and Bolt) so the wire format is checked
against what the bot will actually send."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from .slack_api import BOT_USER_ID, SlackStandIn
from .slack_requests import block_action, sign, slash_command

TOKEN = "xoxb-test"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ALERTS = "C0ALERTS"

BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "Broken image"}},
    {
        "type": "section",
        "block_id": "summary",
        "text": {"type": "mrkdwn", "text": "*registry.example/app:1.2* fails to pull, cc <@U1>"},
        "fields": [
            {"type": "mrkdwn", "text": "*Layers:*\n3 missing"},
            {"type": "mrkdwn", "text": "*Since:*\n5m"},
        ],
    },
    {"type": "context", "elements": [{"type": "mrkdwn", "text": "seen by <!subteam^S0ONCALL>"}]},
    {
        "type": "actions",
        "block_id": "decide",
        "elements": [
            {
                "type": "button",
                "action_id": "fix",
                "text": {"type": "plain_text", "text": "Fix it"},
                "value": "app:1.2",
                "style": "primary",
            },
            {"type": "button", "action_id": "ignore", "text": {"type": "plain_text", "text": "Ignore"}},
        ],
    },
]


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn(
        bot_token=TOKEN,
        channels={ALERTS: "alerts", "C0QUIET": "quiet"},
        users={"U1": "alice", "U2": {"name": "bob", "real_name": "Bob Builder", "email": "bob@example.com"}},
        usergroups={"S0ONCALL": {"handle": "oncall", "users": ["U1", "U2"]}, "S0EMPTY": []},
        not_member={"C0QUIET"},
    ) as standin:
        yield standin


@pytest.fixture
def client(slack: SlackStandIn) -> WebClient:
    return WebClient(token=TOKEN, base_url=slack.base_url)


def test_base_url_shape(slack: SlackStandIn) -> None:
    assert slack.base_url.startswith("http://127.0.0.1:")
    assert slack.base_url.endswith("/api/")


def test_auth_test(client: WebClient) -> None:
    resp = client.auth_test()
    assert resp["ok"] is True
    assert resp["user_id"] == BOT_USER_ID
    assert {"url", "team", "team_id", "user", "bot_id"} <= set(resp.data)  # type: ignore[arg-type]


def test_post_update_and_thread(slack: SlackStandIn, client: WebClient) -> None:
    root = client.chat_postMessage(channel=ALERTS, text="registry.example/app:1.2 is broken", blocks=BLOCKS)
    assert root["channel"] == ALERTS
    assert root["message"]["blocks"][0]["type"] == "header"

    reply = client.chat_postMessage(channel=ALERTS, thread_ts=root["ts"], text="Fixing…")
    nested = client.chat_postMessage(channel=ALERTS, thread_ts=reply["ts"], text="Reply to the reply")
    assert nested["message"]["thread_ts"] == root["ts"]  # Slack puts it in the parent's thread

    updated = client.chat_update(channel=ALERTS, ts=root["ts"], text="fixed", blocks=[])
    assert updated["ts"] == root["ts"]
    assert updated["text"] == "fixed"

    messages = slack.messages(ALERTS)
    assert [m["text"] for m in messages] == ["fixed", "Fixing…", "Reply to the reply"]
    assert messages[0]["edits"][0]["blocks"] == BLOCKS
    assert messages[0]["blocks"] == []
    assert messages[0]["user"] == BOT_USER_ID
    assert [m["text"] for m in slack.thread(ALERTS, root["ts"])] == ["Fixing…", "Reply to the reply"]
    assert slack.messages("#alerts") == messages

    call = slack.calls_to("chat.postMessage")[0]
    assert call.params["blocks"] == BLOCKS
    assert call.headers["authorization"] == f"Bearer {TOKEN}"


def test_update_keeps_fields_that_are_left_out(slack: SlackStandIn, client: WebClient) -> None:
    ts = client.chat_postMessage(channel=ALERTS, text="hello", blocks=BLOCKS)["ts"]
    client.chat_update(channel=ALERTS, ts=ts, text="hello again")
    msg = slack.message(ALERTS, ts)
    assert msg["text"] == "hello again"
    assert msg["blocks"] == BLOCKS


def test_timestamps_unique_and_increasing(slack: SlackStandIn, client: WebClient) -> None:
    results: list[str] = []

    def post(n: int) -> None:
        for i in range(10):
            results.append(client.chat_postMessage(channel=ALERTS, text=f"{n}-{i}")["ts"])

    threads = [threading.Thread(target=post, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [m["ts"] for m in slack.messages(ALERTS)]
    assert len(set(results)) == 50
    assert sorted(results) == stored
    assert [float(ts) for ts in stored] == sorted(float(ts) for ts in stored)
    assert all(len(ts.split(".")[1]) == 6 for ts in stored)


def test_reply_to_unknown_ts_is_accepted(slack: SlackStandIn, client: WebClient) -> None:
    resp = client.chat_postMessage(channel=ALERTS, thread_ts="1600000000.000100", text="orphan")
    assert resp["ok"]
    assert [m["text"] for m in slack.thread(ALERTS, "1600000000.000100")] == ["orphan"]
    assert "(thread on unknown message 1600000000.000100)" in slack.transcript(ALERTS)


def test_form_encoded_blocks_are_decoded(slack: SlackStandIn, client: WebClient) -> None:
    resp = client.api_call("chat.postMessage", params={"channel": ALERTS, "blocks": json.dumps(BLOCKS)})
    assert resp["ok"]
    assert slack.messages(ALERTS)[0]["blocks"] == BLOCKS


def test_token_in_form_field(slack: SlackStandIn) -> None:
    anonymous = WebClient(base_url=slack.base_url)
    resp = anonymous.api_call("chat.postMessage", params={"token": TOKEN, "channel": ALERTS, "text": "hi"})
    assert resp["ok"]


def test_transcript(slack: SlackStandIn, client: WebClient) -> None:
    root = client.chat_postMessage(channel=ALERTS, text="fallback", blocks=BLOCKS)
    client.chat_postMessage(channel=ALERTS, thread_ts=root["ts"], text="on it, <@U2>")
    client.chat_postEphemeral(channel=ALERTS, user="U1", text="only you can see this")
    client.chat_postMessage(channel=ALERTS, text="second root")
    client.chat_update(channel=ALERTS, ts=root["ts"], text="fallback", blocks=BLOCKS[:2])

    assert slack.transcript(ALERTS) == "\n".join(
        [
            "#alerts",
            "@registry-bot: Broken image",
            "  *registry.example/app:1.2* fails to pull, cc @alice",
            "  *Layers:* 3 missing | *Since:* 5m",
            "  (edited)",
            "    ↳ @registry-bot: on it, @bob",
            "@registry-bot (only visible to @alice): only you can see this",
            "@registry-bot: second root",
        ]
    )


def test_transcript_renders_context_and_buttons(slack: SlackStandIn, client: WebClient) -> None:
    client.chat_postMessage(channel=ALERTS, text="fallback", blocks=BLOCKS)
    transcript = slack.transcript()
    assert "seen by @oncall" in transcript
    assert "[Fix it] [Ignore]" in transcript
    assert "fallback" not in transcript


def test_channel_errors(slack: SlackStandIn, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as missing:
        client.chat_postMessage(channel="C0NOPE", text="hi")
    assert missing.value.response["error"] == "channel_not_found"
    assert missing.value.response.status_code == 200

    with pytest.raises(SlackApiError) as not_member:
        client.chat_postMessage(channel="C0QUIET", text="hi")
    assert not_member.value.response["error"] == "not_in_channel"

    slack.set_member("C0QUIET", True)
    assert client.chat_postMessage(channel="#quiet", text="hi")["channel"] == "C0QUIET"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_message_errors(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as no_text:
        client.chat_postMessage(channel=ALERTS)
    assert no_text.value.response["error"] == "no_text"

    with pytest.raises(SlackApiError) as not_found:
        client.chat_update(channel=ALERTS, ts="1600000000.000100", text="x")
    assert not_found.value.response["error"] == "message_not_found"


def test_invalid_blocks(client: WebClient) -> None:
    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=ALERTS, text="t", blocks=too_long)
    assert err.value.response["error"] == "invalid_blocks"
    assert err.value.response["errors"] == ["must be less than 3001 characters [json-pointer:/blocks/0/text/text]"]


def test_auth_errors(slack: SlackStandIn) -> None:
    with pytest.raises(SlackApiError) as wrong:
        WebClient(token="xoxb-wrong", base_url=slack.base_url).auth_test()
    assert wrong.value.response["error"] == "invalid_auth"

    with pytest.raises(SlackApiError) as missing:
        WebClient(base_url=slack.base_url).auth_test()
    assert missing.value.response["error"] == "not_authed"


def test_unknown_method(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.api_call("chat.teleport", json={"channel": ALERTS})
    assert err.value.response["error"] == "unknown_method"


def test_rate_limit_is_http_429_with_retry_after(slack: SlackStandIn, client: WebClient) -> None:
    slack.rate_limit("chat.postMessage", times=1, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=ALERTS, text="hi")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert err.value.response["error"] == "ratelimited"
    assert client.auth_test()["ok"]  # other methods are unaffected

    assert client.chat_postMessage(channel=ALERTS, text="hi")["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]
    assert len(slack.messages(ALERTS)) == 1


def test_rate_limit_retry_handler_recovers(slack: SlackStandIn) -> None:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[RateLimitErrorRetryHandler()])
    slack.rate_limit("*", times=1, retry_after=0)
    assert client.chat_postMessage(channel=ALERTS, text="hi")["ok"]
    assert [c.status for c in slack.calls] == [429, 200]


def test_forced_failure(slack: SlackStandIn, client: WebClient) -> None:
    slack.fail("chat.update", error="cant_update_message", times=2)
    ts = client.chat_postMessage(channel=ALERTS, text="hi")["ts"]
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_update(channel=ALERTS, ts=ts, text="edit")
        assert err.value.response["error"] == "cant_update_message"
    assert client.chat_update(channel=ALERTS, ts=ts, text="edit")["ok"]


def test_outage(slack: SlackStandIn, client: WebClient) -> None:
    slack.go_down()
    with pytest.raises(SlackApiError) as err:
        client.auth_test()
    assert err.value.response.status_code == 503
    slack.come_back()
    assert client.auth_test()["ok"]

    slack.go_down(seconds=0.3)
    with pytest.raises(SlackApiError):
        client.auth_test()
    time.sleep(0.35)
    assert client.auth_test()["ok"]


def test_outage_closing_connections(slack: SlackStandIn) -> None:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])
    slack.go_down(mode="close")
    with pytest.raises(Exception) as err:
        client.auth_test()
    assert not isinstance(err.value, SlackApiError)
    assert slack.calls[-1].status == 0
    slack.come_back()
    assert client.auth_test()["ok"]


def test_ephemeral(slack: SlackStandIn, client: WebClient) -> None:
    resp = client.chat_postEphemeral(channel=ALERTS, user="U1", text="psst", blocks=BLOCKS[:1])
    assert resp["message_ts"]
    [eph] = slack.ephemeral
    assert (eph["channel"], eph["user"], eph["text"], eph["blocks"]) == (ALERTS, "U1", "psst", BLOCKS[:1])
    with pytest.raises(SlackApiError) as err:
        client.chat_postEphemeral(channel=ALERTS, user="U9", text="psst")
    assert err.value.response["error"] == "user_not_in_channel"


def test_users_usergroups_and_conversations(client: WebClient) -> None:
    bob = client.users_info(user="U2")["user"]
    assert (bob["id"], bob["name"], bob["real_name"]) == ("U2", "bob", "Bob Builder")
    assert bob["profile"]["email"] == "bob@example.com"
    with pytest.raises(SlackApiError) as no_user:
        client.users_info(user="U404")
    assert no_user.value.response["error"] == "user_not_found"

    assert client.usergroups_users_list(usergroup="S0ONCALL")["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as no_group:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert no_group.value.response["error"] == "no_such_subteam"

    groups = client.usergroups_list(include_users=True)["usergroups"]
    assert {(g["id"], g["handle"], tuple(g["users"])) for g in groups} == {
        ("S0ONCALL", "oncall", ("U1", "U2")),
        ("S0EMPTY", "s0empty", ()),
    }
    assert "users" not in client.usergroups_list()["usergroups"][0]

    alerts = client.conversations_info(channel=ALERTS)["channel"]
    assert (alerts["id"], alerts["name"], alerts["is_member"]) == (ALERTS, "alerts", True)
    assert client.conversations_info(channel="C0QUIET")["channel"]["is_member"] is False
    with pytest.raises(SlackApiError) as no_channel:
        client.conversations_info(channel="C0NOPE")
    assert no_channel.value.response["error"] == "channel_not_found"


async def test_async_client(slack: SlackStandIn) -> None:
    client = AsyncWebClient(token=TOKEN, base_url=slack.base_url)
    root = await client.chat_postMessage(channel=ALERTS, text="async", blocks=BLOCKS)
    await client.chat_postMessage(channel=ALERTS, text="reply", thread_ts=root["ts"])
    assert (await client.users_info(user="U1"))["user"]["name"] == "alice"  # sent as GET
    assert (await client.usergroups_list(include_users=True))["usergroups"][0]["users"] == ["U1", "U2"]
    assert [m["text"] for m in slack.thread(ALERTS, root["ts"])] == ["reply"]

    slack.rate_limit("chat.update", retry_after=2)
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel=ALERTS, ts=root["ts"], text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "2"


def _post_json(url: str, body: dict[str, object]) -> str:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode()


def test_response_url(slack: SlackStandIn, client: WebClient) -> None:
    assert _post_json(slack.response_url("plain"), {"text": "hello"}) == "ok"
    assert slack.responses[0].id == "plain"
    assert slack.responses[0].body == {"text": "hello"}

    ts = client.chat_postMessage(channel=ALERTS, text="approve?", blocks=BLOCKS)["ts"]
    url = slack.response_url("act-1", channel=ALERTS, message_ts=ts, user="U1")
    _post_json(url, {"replace_original": True, "text": "approved by alice"})
    msg = slack.message(ALERTS, ts)
    assert msg["text"] == "approved by alice"
    assert msg["blocks"] == []  # unlike chat.update, replace_original replaces the whole message
    assert msg["edits"][0]["blocks"] == BLOCKS
    _post_json(url, {"text": "just for you"})
    assert slack.ephemeral[-1]["text"] == "just for you"
    _post_json(url, {"response_type": "in_channel", "text": "announced"})
    assert slack.messages(ALERTS)[-1]["text"] == "announced"
    _post_json(url, {"delete_original": True})
    assert slack.message(ALERTS, ts)["deleted"] is True
    assert "approved by alice" not in slack.transcript(ALERTS)


def test_wait_for(slack: SlackStandIn, client: WebClient) -> None:
    threading.Timer(0.1, lambda: client.chat_postMessage(channel=ALERTS, text="late")).start()
    msg = slack.wait_for(lambda s: s.messages(ALERTS)[0], timeout=5)
    assert msg["text"] == "late"

    with pytest.raises(AssertionError) as err:
        slack.wait_for(lambda s: len(s.messages(ALERTS)) == 2, timeout=0.1)
    assert "@registry-bot: late" in str(err.value)
    assert "chat.postMessage -> 200 ok" in str(err.value)


# ------------------------------------------------------------------ signed requests


def _verifier() -> SignatureVerifier:
    return SignatureVerifier(SECRET)


def test_slash_command_is_signed_and_complete() -> None:
    body, headers = slash_command(SECRET, "fix registry.example/app:1.2", response_url="http://x/response/1")
    assert _verifier().is_valid_request(body, headers)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    assert list(fields) == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    ]
    assert fields["command"] == "/registry"
    assert fields["text"] == "fix registry.example/app:1.2"
    assert fields["response_url"] == "http://x/response/1"


def test_forged_and_stale_signatures_are_rejected() -> None:
    forged_body, forged_headers = slash_command("some-other-secret", "fix")
    assert not _verifier().is_valid_request(forged_body, forged_headers)

    stale_body, stale_headers = slash_command(SECRET, "fix", timestamp=time.time() - 600)
    assert not _verifier().is_valid_request(stale_body, stale_headers)

    body, headers = slash_command(SECRET, "fix")
    assert not _verifier().is_valid_request(body.replace(b"fix", b"pwn"), headers)


def test_sign_arbitrary_body() -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc"})
    headers = sign(SECRET, body, content_type="application/json")
    assert _verifier().is_valid_request(body, headers)
    assert headers["Content-Type"] == "application/json"


def test_block_action_payload(slack: SlackStandIn, client: WebClient) -> None:
    posted = client.chat_postMessage(channel=ALERTS, text="approve?", blocks=BLOCKS)
    [message] = slack.messages(ALERTS)
    body, headers = block_action(SECRET, "fix", user_id="U2", channel_id=ALERTS, message=message)
    assert _verifier().is_valid_request(body, headers)

    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == "U2"
    assert payload["container"] == {
        "type": "message",
        "message_ts": posted["ts"],
        "channel_id": ALERTS,
        "is_ephemeral": False,
    }
    assert payload["message"]["ts"] == posted["ts"]
    assert payload["message"]["blocks"] == BLOCKS
    assert "edits" not in payload["message"]
    [action] = payload["actions"]
    assert action["action_id"] == "fix"
    assert action["block_id"] == "decide"
    assert action["value"] == "app:1.2"
    assert action["text"]["text"] == "Fix it"
    assert action["type"] == "button"

    with pytest.raises(ValueError, match="no element with action_id"):
        block_action(SECRET, "delete-everything", message=message)


def test_block_action_without_message_in_thread() -> None:
    body, headers = block_action(
        SECRET, "retry", "job-7", "U1", ALERTS, "1700000000.000200", thread_ts="1700000000.000100"
    )
    assert _verifier().is_valid_request(body, headers)
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["container"]["thread_ts"] == "1700000000.000100"
    assert payload["message"]["thread_ts"] == "1700000000.000100"
    assert payload["actions"][0]["value"] == "job-7"


def test_bolt_app_end_to_end(slack: SlackStandIn) -> None:
    """Bolt verifies our signatures, calls auth.test at start-up and replies via the stand-in."""
    app = App(token=TOKEN, signing_secret=SECRET, client=WebClient(token=TOKEN, base_url=slack.base_url))

    @app.command("/registry")
    def on_command(ack, respond, command, client):  # type: ignore[no-untyped-def]
        ack()
        respond(f"checking {command['text']}")
        client.chat_postMessage(channel=command["channel_id"], text="check started", blocks=BLOCKS)

    @app.action("fix")
    def on_fix(ack, body, respond):  # type: ignore[no-untyped-def]
        ack()
        respond(replace_original=True, text=f"fixing, requested by <@{body['user']['id']}>")

    body, headers = slash_command(SECRET, "app:1.2", response_url=slack.response_url("cmd", channel=ALERTS))
    assert app.dispatch(BoltRequest(body=body.decode(), headers=headers)).status == 200
    root = slack.wait_for(lambda s: s.messages(ALERTS)[0])
    slack.wait_for(lambda s: s.ephemeral)
    assert slack.ephemeral[0]["text"] == "checking app:1.2"

    url = slack.response_url("act", channel=ALERTS, message_ts=root["ts"], user="U1")
    body, headers = block_action(SECRET, "fix", user_id="U1", response_url=url, message=root)
    assert app.dispatch(BoltRequest(body=body.decode(), headers=headers)).status == 200
    slack.wait_for(lambda s: s.message(ALERTS, root["ts"])["text"] == "fixing, requested by <@U1>")
    assert "(edited)" in slack.transcript(ALERTS)

    forged_body, forged_headers = slash_command("wrong-secret", "app:1.2")
    assert app.dispatch(BoltRequest(body=forged_body.decode(), headers=forged_headers)).status == 401


# --- Slack's documented limits (the table; shared/reference/protocols.md) -------------------------------


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(action_id: str = "b", text: str = "Go", value: str = "v", **extra: object) -> dict:
    return {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": text}, "value": value} | (
        extra
    )


def _confirm(title: str = "Sure?", text: str = "Really.", confirm: str = "Yes", deny: str = "No") -> dict:
    return {
        "title": {"type": "plain_text", "text": title},
        "text": {"type": "mrkdwn", "text": text},
        "confirm": {"type": "plain_text", "text": confirm},
        "deny": {"type": "plain_text", "text": deny},
    }


def _actions(*elements: dict, block_id: str | None = None) -> dict:
    block: dict = {"type": "actions", "elements": list(elements)}
    if block_id is not None:
        block["block_id"] = block_id
    return block


LIMITS = {
    "blocks per message (50)": lambda n: [{"type": "divider"}] * n,
    "section text (3,000)": lambda n: [_section("x" * n)],
    "field text (2,000)": lambda n: [{"type": "section", "fields": [{"type": "mrkdwn", "text": "x" * n}]}],
    "fields per section (10)": lambda n: [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * n}],
    "header (150)": lambda n: [{"type": "header", "text": {"type": "plain_text", "text": "h" * n}}],
    "button text (75)": lambda n: [_actions(_button(text="t" * n))],
    "button value (2,000)": lambda n: [_actions(_button(value="v" * n))],
    "button url (3,000)": lambda n: [_actions(_button(url="https://x.example/" + "u" * (n - 18)))],
    "action_id (255)": lambda n: [_actions(_button(action_id="a" * n))],
    "block_id (255)": lambda n: [_actions(_button(), block_id="b" * n)],
    "context elements (10)": lambda n: [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * n}],
    "actions elements (25)": lambda n: [_actions(*(_button(action_id=f"a{i}") for i in range(n)))],
    "confirm title (100)": lambda n: [_actions(_button(confirm=_confirm(title="t" * n)))],
    "confirm text (300)": lambda n: [_actions(_button(confirm=_confirm(text="t" * n)))],
    "confirm button (30)": lambda n: [_actions(_button(confirm=_confirm(confirm="c" * n)))],
    "deny button (30)": lambda n: [_actions(_button(confirm=_confirm(deny="d" * n)))],
}
LIMIT_VALUES = {name: int(name.split("(")[1].rstrip(")").replace(",", "")) for name in LIMITS}


@pytest.mark.parametrize("method", ["chat_postMessage", "chat_update", "chat_postEphemeral"])
@pytest.mark.parametrize("limit", list(LIMITS))
def test_every_limit_is_enforced_as_slack_does(slack: SlackStandIn, client: WebClient, limit: str, method: str) -> None:
    n = LIMIT_VALUES[limit]
    root = client.chat_postMessage(channel=ALERTS, text="root")
    target = {"chat_update": {"ts": root["ts"]}, "chat_postEphemeral": {"user": "U1"}}.get(method, {})
    send = getattr(client, method)
    assert send(channel=ALERTS, text="fits", blocks=LIMITS[limit](n), **target)["ok"]
    with pytest.raises(SlackApiError) as refused:
        send(channel=ALERTS, text="too much", blocks=LIMITS[limit](n + 1), **target)
    answer = refused.value.response
    assert answer.status_code == 200  # Slack answers ok:false with HTTP 200
    assert answer["ok"] is False and answer["error"] == "invalid_blocks"
    [error] = answer["errors"]
    assert re.fullmatch(r".+ \[json-pointer:/blocks(/[\w]+)*\]", error), error
    assert answer["response_metadata"]["messages"] == [f"[ERROR] {error}"]


def test_duplicate_ids_are_refused_in_their_scope(client: WebClient) -> None:
    twice = [_actions(_button("registry_node"), _button("registry_node"))]
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel=ALERTS, text="t", blocks=twice)
    assert refused.value.response["errors"] == ["duplicate action_id [json-pointer:/blocks/0/elements/1/action_id]"]
    # One action_id in two blocks is another scope: accepted.
    assert client.chat_postMessage(channel=ALERTS, text="t", blocks=[_actions(_button("x")), _actions(_button("x"))])
    with pytest.raises(SlackApiError) as block_ids:
        client.chat_postMessage(channel=ALERTS, text="t", blocks=[_actions(_button(), block_id="b")] * 2)
    assert block_ids.value.response["error"] == "invalid_blocks"


@pytest.mark.parametrize("method", ["chat_postMessage", "chat_update", "chat_postEphemeral"])
def test_message_text_over_40000_is_msg_too_long(client: WebClient, method: str) -> None:
    root = client.chat_postMessage(channel=ALERTS, text="root")
    target = {"chat_update": {"ts": root["ts"]}, "chat_postEphemeral": {"user": "U1"}}.get(method, {})
    send = getattr(client, method)
    assert send(channel=ALERTS, text="x" * 40_000, **target)["ok"]
    with pytest.raises(SlackApiError) as refused:
        send(channel=ALERTS, text="x" * 40_001, **target)
    assert refused.value.response.status_code == 200
    assert refused.value.response.data == {"ok": False, "error": "msg_too_long"}


def test_a_refused_message_is_not_posted(slack: SlackStandIn, client: WebClient) -> None:
    with pytest.raises(SlackApiError):
        client.chat_postMessage(channel=ALERTS, text="t", blocks=[_section("x" * 3001)])
    assert slack.messages(ALERTS) == []
    assert [c.error for c in slack.calls_to("chat.postMessage")] == ["invalid_blocks"]
