"""An in-process stand-in for the Slack Web API, for integration tests.

It speaks Slack's wire format closely enough for the real ``slack_sdk`` clients (sync and async) to talk
to it: ``POST /api/<method>`` with a form, JSON or multipart body, the token as ``Authorization: Bearer``
or a ``token`` field, and JSON answers with ``ok``/``error``. Ok=false errors come back as HTTP 200 like
Slack; rate limiting is HTTP 429 with ``Retry-After``.

Usage::

    with SlackStandIn(bot_token="xoxb-test", channels={"C0ALERTS": "alerts"}) as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        ...
        slack.wait_for(lambda s: len(s.messages("C0ALERTS")) == 1)
        print(slack.transcript("C0ALERTS"))

Things it does not try to model: pagination, scopes, private channels, DMs (pass a ``D...`` id in
``channels`` if you need one), message formatting beyond what the transcript renders, and rate limits that
are not injected explicitly.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, quote, urlsplit

TEAM_ID = "T0STANDIN"
TEAM_DOMAIN = "standin"
TEAM_NAME = "Stand-in Workspace"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
BOT_NAME = "registry-bot"
API_APP_ID = "A0STANDIN"

# Fields that Slack accepts as JSON-encoded strings inside form bodies.
_JSON_FIELDS = ("blocks", "attachments", "metadata", "user_auth_blocks")
_MAX_TEXT = 40_000

Params = dict[str, Any]
StubResponse = Mapping[str, Any] | Callable[[Params], Mapping[str, Any]]


class _SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass(frozen=True)
class Call:
    """One request the stand-in received on ``/api/<method>``."""

    method: str
    params: Params
    headers: dict[str, str]  # lower-cased names
    time: float
    status: int  # HTTP status answered; 0 if the connection was dropped
    response: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response and self.response.get("ok"))

    @property
    def error(self) -> str | None:
        return None if self.response is None else self.response.get("error")


@dataclass(frozen=True)
class ResponseUrlPost:
    """One POST to a ``response_url`` served by the stand-in."""

    id: str
    body: Any  # decoded JSON (or the raw text if it was not JSON)
    headers: dict[str, str]
    time: float


@dataclass
class _ResponseHook:
    channel: str | None
    message_ts: str | None
    user: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    standin: SlackStandIn


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.server.standin._handle(self)

    # The async client sends GET (with a query string) for methods slack_sdk marks http_verb="GET".
    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SlackStandIn:
    """A fake Slack workspace with one bot, served over HTTP on 127.0.0.1.

    ``channels`` maps channel id -> name; the bot is a member of all of them except those in
    ``not_member``. ``users`` maps user id -> name, or -> a dict with any of ``name``, ``real_name``,
    ``display_name``, ``email``, ``is_bot``, ``deleted``, ``tz``, ``profile``. ``usergroups`` maps
    usergroup id -> list of user ids, or -> a dict with ``handle``, ``name``, ``description``, ``users``.
    """

    def __init__(
        self,
        bot_token: str = "xoxb-test",
        channels: Mapping[str, str] | None = None,
        users: Mapping[str, str | Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, list[str] | Mapping[str, Any]] | None = None,
        not_member: set[str] | frozenset[str] = frozenset(),
        *,
        validate_blocks: bool = True,
    ) -> None:
        self.bot_token = bot_token
        self.validate_blocks = validate_blocks
        self._lock = threading.RLock()
        self._channels: dict[str, str] = dict(channels or {})
        self._not_member: set[str] = set(not_member)
        self._users_configured = bool(users)
        self._users: dict[str, dict[str, Any]] = {uid: _user_record(uid, u) for uid, u in (users or {}).items()}
        self._users.setdefault(BOT_USER_ID, _user_record(BOT_USER_ID, {"name": BOT_NAME, "is_bot": True}))
        self._usergroups: dict[str, dict[str, Any]] = {
            gid: _usergroup_record(gid, g) for gid, g in (usergroups or {}).items()
        }
        self._calls: list[Call] = []
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._ephemeral: list[dict[str, Any]] = []
        self._responses: list[ResponseUrlPost] = []
        self._hooks: dict[str, _ResponseHook] = {}
        self._rate_limits: dict[str, list[int]] = {}
        self._failures: dict[str, list[str]] = {}
        self._stubs: dict[str, StubResponse] = {}
        self.app_token = "xapp-test"
        self._down_until: float | None = None
        self._down_mode: Literal["503", "close"] = "503"
        self._last_ts_us = 0
        self._seq = itertools.count()
        self._methods: dict[str, Callable[[Params], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        # A short poll interval keeps stop() (and so test teardown) fast.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SlackStandIn is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` to ``WebClient``/``AsyncWebClient``/Bolt's ``App(client=...)``."""
        return f"{self.url}/api/"

    def response_url(
        self, id: str, *, channel: str | None = None, message_ts: str | None = None, user: str | None = None
    ) -> str:
        """A ``response_url`` served by the stand-in; posts to it are listed in ``responses``.

        With ``channel`` (and ``message_ts``/``user``) the URL behaves like Slack's: ``replace_original``
        replaces that message (keeping the old version in ``edits``), ``delete_original`` deletes it,
        ``response_type: in_channel`` posts a new message, and anything else becomes an ephemeral message
        for ``user``.
        """
        with self._lock:
            self._hooks[id] = _ResponseHook(channel, message_ts, user)
        return f"{self.url}/response/{quote(id, safe='')}"

    # ----------------------------------------------------------- configuration

    def add_channel(self, channel_id: str, name: str, *, member: bool = True) -> None:
        with self._lock:
            self._channels[channel_id] = name
            self.set_member(channel_id, member)

    def set_member(self, channel_id: str, member: bool) -> None:
        with self._lock:
            if member:
                self._not_member.discard(channel_id)
            else:
                self._not_member.add(channel_id)

    def set_usergroup_users(self, usergroup_id: str, users: list[str]) -> None:
        with self._lock:
            group = self._usergroups.setdefault(usergroup_id, _usergroup_record(usergroup_id, []))
            group["users"] = list(users)

    def stub(self, method: str, response: StubResponse) -> None:
        """Answer ``method`` with a fixed body or ``response(params)``; ``ok`` defaults to true."""
        with self._lock:
            self._stubs[method] = response

    # --------------------------------------------------------- fault injection

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls of ``method`` (``"*"`` for any) answer 429 with ``Retry-After``."""
        with self._lock:
            self._rate_limits.setdefault(method, []).extend([retry_after] * times)

    def fail(self, method: str, error: str = "channel_not_found", times: int = 1) -> None:
        """The next ``times`` calls of ``method`` (``"*"`` for any) answer ``{"ok": false, "error": error}``."""
        with self._lock:
            self._failures.setdefault(method, []).extend([error] * times)

    def go_down(self, seconds: float | None = None, *, mode: Literal["503", "close"] = "503") -> None:
        """Every request (API and response_url) answers HTTP 503, or has its connection closed without an
        answer (``mode="close"``), until ``come_back()`` or for ``seconds``."""
        with self._lock:
            self._down_until = float("inf") if seconds is None else time.monotonic() + seconds
            self._down_mode = mode

    def come_back(self) -> None:
        with self._lock:
            self._down_until = None

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down_until is not None and time.monotonic() < self._down_until

    # -------------------------------------------------------------- inspection

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.method == method]

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Every message posted to ``channel`` (id or name), thread replies included, in post order.

        Each is a dict with ``channel``, ``ts``, ``thread_ts`` (None for a root message), ``text``,
        ``blocks``, ``attachments``, ``user``, ``username``, ``deleted``, ``edited_ts`` and ``edits``
        (previous versions, oldest first, each with ``text``, ``blocks``, ``attachments``).
        These are copies: mutating them changes nothing.
        """
        with self._lock:
            cid = self._channel_id(channel) or channel
            return copy.deepcopy(self._messages.get(cid, []))

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        with self._lock:
            cid = self._channel_id(channel) or channel
            found = self._find(cid, ts)
            if found is None:
                raise KeyError(f"no message {ts} in {channel}")
            return copy.deepcopy(found)

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """Replies in the thread rooted at ``ts`` (not including the root), in post order."""
        return [m for m in self.messages(channel) if m["thread_ts"] == ts and m["ts"] != ts]

    @property
    def ephemeral(self) -> list[dict[str, Any]]:
        """Ephemeral messages: dicts with ``channel``, ``user``, ``text``, ``blocks``, ``thread_ts``,
        ``message_ts`` and ``source`` (``"chat.postEphemeral"`` or ``"response_url"``)."""
        with self._lock:
            return copy.deepcopy(self._ephemeral)

    @property
    def responses(self) -> list[ResponseUrlPost]:
        with self._lock:
            return list(self._responses)

    def clear(self) -> None:
        """Forget recorded calls, messages, responses and pending faults (configuration stays)."""
        with self._lock:
            self._calls.clear()
            self._messages.clear()
            self._ephemeral.clear()
            self._responses.clear()
            self._rate_limits.clear()
            self._failures.clear()
            self._down_until = None

    def wait_for(self, predicate: Callable[[SlackStandIn], Any], timeout: float = 10, *, interval: float = 0.02) -> Any:
        """Poll until ``predicate(self)`` is truthy and return its value.

        Exceptions from the predicate count as "not yet" (so ``lambda s: s.messages(c)[0]`` is fine). On
        timeout raises AssertionError with the transcript of every channel and the last calls.
        """
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while True:
            try:
                result = predicate(self)
                if result:
                    return result
            except Exception as exc:
                last_exc = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        recent = "\n".join(
            f"  {c.method} -> {c.status} {c.error or 'ok'}  {_short(c.params)}" for c in self.calls[-15:]
        )
        raised = f"\nlast exception from predicate: {last_exc!r}" if last_exc else ""
        raise AssertionError(
            f"condition not met within {timeout}s{raised}\n\n"
            f"--- transcript ---\n{self.transcript() or '(no messages)'}\n\n"
            f"--- last calls ---\n{recent or '  (none)'}"
        )

    # -------------------------------------------------------------- transcript

    def transcript(self, channel: str | None = None, *, include_ephemeral: bool = True) -> str:
        """The channel as a person would read it: root messages in order with their thread replies
        indented beneath. Blocks are rendered to plain text, buttons as ``[Label]``. Without ``channel``,
        every channel that has messages."""
        with self._lock:
            if channel is None:
                ids = sorted(set(self._messages) | {e["channel"] for e in self._ephemeral})
                return "\n\n".join(self.transcript(c, include_ephemeral=include_ephemeral) for c in ids)
            cid = self._channel_id(channel) or channel
            entries = [m for m in self._messages.get(cid, []) if not m["deleted"]]
            if include_ephemeral:
                entries += [e for e in self._ephemeral if e["channel"] == cid]
            entries.sort(key=lambda e: e["seq"])
            roots = [e for e in entries if not e["thread_ts"]]
            root_ts = {e["ts"] for e in roots if not e.get("ephemeral")}
            lines = [f"#{self._channels.get(cid, cid)}"]
            for root in roots:
                lines += self._render_entry(root, "")
                if not root.get("ephemeral"):
                    replies = [e for e in entries if e["thread_ts"] == root["ts"]]
                    for reply in replies:
                        lines += self._render_entry(reply, "    ↳ ")
            orphans: dict[str, list[dict[str, Any]]] = {}
            for e in entries:
                if e["thread_ts"] and e["thread_ts"] not in root_ts:
                    orphans.setdefault(e["thread_ts"], []).append(e)
            for ts, replies in orphans.items():
                lines.append(f"(thread on unknown message {ts})")
                for reply in replies:
                    lines += self._render_entry(reply, "    ↳ ")
            return "\n".join(lines)

    def _render_entry(self, entry: dict[str, Any], prefix: str) -> list[str]:
        who = entry.get("username") or self._users.get(entry.get("user") or "", {}).get("name") or "?"
        if entry.get("ephemeral"):
            viewer = self._users.get(entry["user"], {}).get("name", entry["user"])
            who = f"{BOT_NAME} (only visible to @{viewer})"
        body = [self._unescape(line) for line in render_message(entry)]
        if entry.get("edits"):
            body.append("(edited)")
        if not body:
            body = [""]
        cont = " " * len(prefix) + "  "
        return [f"{prefix}@{who}: {body[0]}"] + [cont + line for line in body[1:]]

    def _unescape(self, text: str) -> str:
        """Turn Slack's ``<...>`` references into what a reader sees."""

        def repl(m: re.Match[str]) -> str:
            target, _, label = m.group(1).partition("|")
            if target.startswith("@"):
                return "@" + (label or self._users.get(target[1:], {}).get("name", target[1:]))
            if target.startswith("#"):
                return "#" + (label or self._channels.get(target[1:], target[1:]))
            if target.startswith("!subteam^"):
                gid = target[len("!subteam^") :]
                return label or "@" + self._usergroups.get(gid, {}).get("handle", gid)
            if target.startswith("!"):
                return label or "@" + target[1:]
            return label or target

        return re.sub(r"<([^<>]+)>", repl, text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    # ------------------------------------------------------------------- HTTP

    def _handle(self, req: _Handler) -> None:
        url = urlsplit(req.path)
        headers = {k.lower(): v for k, v in req.headers.items()}
        try:
            raw = _read_body(req)
        except (ValueError, OSError):
            _send(req, 400, {"ok": False, "error": "invalid_request"})
            return
        now = time.time()
        path = url.path

        with self._lock:
            down = self._down_until is not None and time.monotonic() < self._down_until
            down_mode = self._down_mode

        if path.startswith("/response/"):
            if down and down_mode == "close":
                req.close_connection = True
            elif down:
                _send(req, 503, {"ok": False, "error": "service_unavailable"})
            else:
                self._handle_response_url(req, path[len("/response/") :], raw, headers, now)
            return
        if not path.startswith("/api/"):
            _send(req, 404, "not found", content_type="text/plain")
            return

        method = path[len("/api/") :]
        status: int
        body: dict[str, Any] | None
        extra_headers: dict[str, str] = {}
        params: Params = {}
        parse_error: str | None = None
        try:
            params = _decode_params(url.query, raw, headers.get("content-type", ""))
        except _SlackError as err:
            parse_error = err.error
        if down and down_mode == "close":
            status, body = 0, None
        elif down:
            status, body = 503, {"ok": False, "error": "service_unavailable"}
        elif parse_error:
            status, body = 200, {"ok": False, "error": parse_error}
        else:
            status, body, extra_headers = self._dispatch(method, params, headers)

        with self._lock:
            self._calls.append(Call(method, params, headers, now, status, body))
        if status == 0:
            req.close_connection = True
            return
        _send(req, status, body, extra_headers=extra_headers)

    def _dispatch(
        self, method: str, params: Params, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            stub = self._stubs.get(method)
            handler = self._methods.get(method)
            if stub is None and handler is None:
                return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}

            token = params.get("token")
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[len("bearer ") :].strip()
            if not token:
                return 200, {"ok": False, "error": "not_authed"}, {}
            # apps.connections.open (Socket Mode) takes the app-level token, every other method the bot token.
            expected = self.app_token if method.startswith("apps.") else self.bot_token
            if token != expected:
                return 200, {"ok": False, "error": "invalid_auth"}, {}

            retry_after = _take(self._rate_limits, method)
            if retry_after is not None:
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
            forced = _take(self._failures, method)
            if forced is not None:
                return 200, {"ok": False, "error": forced}, {}

            try:
                if stub is not None:
                    result = dict(stub(params) if callable(stub) else stub)
                    result.setdefault("ok", True)
                    return 200, result, {}
                assert handler is not None
                return 200, {"ok": True, **handler(params)}, {}
            except _SlackError as err:
                return 200, {"ok": False, "error": err.error, **err.extra}, {}

    def _handle_response_url(
        self, req: _Handler, hook_id: str, raw: bytes, headers: dict[str, str], now: float
    ) -> None:
        text = raw.decode("utf-8", errors="replace")
        body: Any
        try:
            body = json.loads(text)
        except ValueError:
            form = dict(parse_qsl(text, keep_blank_values=True))
            try:
                body = json.loads(form["payload"]) if "payload" in form else text
            except ValueError:
                body = text
        with self._lock:
            self._responses.append(ResponseUrlPost(hook_id, body, headers, now))
            hook = self._hooks.get(hook_id)
            if hook is not None and hook.channel is not None and isinstance(body, dict):
                self._apply_response(hook, body)
        _send(req, 200, "ok", content_type="text/plain")

    def _apply_response(self, hook: _ResponseHook, body: dict[str, Any]) -> None:
        assert hook.channel is not None
        cid = self._channel_id(hook.channel) or hook.channel
        original = self._find(cid, hook.message_ts) if hook.message_ts else None
        if _truthy(body.get("delete_original")):
            if original is not None:
                original["deleted"] = True
            return
        if _truthy(body.get("replace_original")) and original is not None:
            self._edit(original, body, replace_all=True)
            return
        if body.get("response_type") == "in_channel":
            self._store_message(cid, body, thread_ts=body.get("thread_ts"))
            return
        self._ephemeral.append(
            {
                "channel": cid,
                "user": hook.user or "",
                "text": body.get("text", ""),
                "blocks": body.get("blocks") or [],
                "attachments": body.get("attachments") or [],
                "thread_ts": body.get("thread_ts"),
                "message_ts": self._next_ts(),
                "source": "response_url",
                "ephemeral": True,
                "seq": next(self._seq),
            }
        )

    # ---------------------------------------------------------------- methods

    def _auth_test(self, params: Params) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: Params) -> dict[str, Any]:
        cid = self._writable_channel(params.get("channel"))
        self._check_content(params)
        thread_ts = params.get("thread_ts") or None
        msg = self._store_message(
            cid,
            params,
            thread_ts=str(thread_ts) if thread_ts else None,
            username=params.get("username"),
        )
        return {"channel": cid, "ts": msg["ts"], "message": self._wire_message(msg)}

    def _chat_update(self, params: Params) -> dict[str, Any]:
        cid = self._existing_channel(params.get("channel"))
        ts = params.get("ts")
        if not ts:
            raise _SlackError("message_not_found")
        msg = self._find(cid, str(ts))
        if msg is None or msg["deleted"]:
            raise _SlackError("message_not_found")
        if msg["user"] != BOT_USER_ID:
            raise _SlackError("cant_update_message")
        self._check_content(params)
        self._edit(msg, params)
        return {"channel": cid, "ts": msg["ts"], "text": msg["text"], "message": self._wire_message(msg)}

    def _chat_post_ephemeral(self, params: Params) -> dict[str, Any]:
        cid = self._writable_channel(params.get("channel"))
        user = params.get("user")
        if not user:
            raise _SlackError("user_not_in_channel")
        # Only enforce membership when the test configured users; otherwise any user id is accepted.
        if self._users_configured and user not in self._users:
            raise _SlackError("user_not_in_channel")
        self._check_content(params)
        ts = self._next_ts()
        self._ephemeral.append(
            {
                "channel": cid,
                "user": user,
                "text": params.get("text") or "",
                "blocks": params.get("blocks") or [],
                "attachments": params.get("attachments") or [],
                "thread_ts": params.get("thread_ts") or None,
                "message_ts": ts,
                "source": "chat.postEphemeral",
                "ephemeral": True,
                "seq": next(self._seq),
            }
        )
        return {"message_ts": ts}

    def _users_info(self, params: Params) -> dict[str, Any]:
        user = self._users.get(str(params.get("user", "")))
        if user is None:
            raise _SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _usergroups_list(self, params: Params) -> dict[str, Any]:
        include_users = _truthy(params.get("include_users"))
        groups = []
        for group in self._usergroups.values():
            out = {k: v for k, v in group.items() if k != "users"}
            out["user_count"] = len(group["users"])
            if include_users:
                out["users"] = list(group["users"])
            groups.append(out)
        return {"usergroups": groups}

    def _usergroups_users_list(self, params: Params) -> dict[str, Any]:
        group = self._usergroups.get(str(params.get("usergroup", "")))
        if group is None:
            raise _SlackError("no_such_subteam")
        return {"users": list(group["users"])}

    def _conversations_info(self, params: Params) -> dict[str, Any]:
        cid = str(params.get("channel", ""))
        if cid not in self._channels:
            raise _SlackError("channel_not_found")
        return {
            "channel": {
                "id": cid,
                "name": self._channels[cid],
                "is_channel": True,
                "is_private": False,
                "is_archived": False,
                "is_member": cid not in self._not_member,
                "context_team_id": TEAM_ID,
            }
        }

    # ---------------------------------------------------------------- helpers

    def _channel_id(self, ref: str) -> str | None:
        if ref in self._channels:
            return ref
        name = ref.removeprefix("#")
        for cid, cname in self._channels.items():
            if cname == name:
                return cid
        return None

    def _existing_channel(self, ref: Any) -> str:
        cid = self._channel_id(str(ref)) if ref else None
        if cid is None:
            raise _SlackError("channel_not_found")
        return cid

    def _writable_channel(self, ref: Any) -> str:
        cid = self._existing_channel(ref)
        if cid in self._not_member:
            raise _SlackError("not_in_channel")
        return cid

    def _check_content(self, params: Params) -> None:
        text, blocks, attachments = params.get("text"), params.get("blocks"), params.get("attachments")
        if not text and not blocks and not attachments:
            raise _SlackError("no_text")
        if text is not None and not isinstance(text, str):
            raise _SlackError("invalid_arguments")
        if text and len(text) > _MAX_TEXT:
            raise _SlackError("msg_too_long")
        if blocks is not None and self.validate_blocks:
            errors = validate_blocks(blocks)
            if errors:
                # Slack's answer: HTTP 200, ok:false, the errors, and each again in response_metadata.
                messages = [f"[ERROR] {error}" for error in errors]
                raise _SlackError("invalid_blocks", errors=errors, response_metadata={"messages": messages})
        if attachments is not None and not isinstance(attachments, list):
            raise _SlackError("invalid_attachments")

    def _next_ts(self) -> str:
        # Real clock so the bot can reason about message age, bumped to stay strictly increasing.
        self._last_ts_us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
        return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def _find(self, cid: str, ts: str) -> dict[str, Any] | None:
        for msg in self._messages.get(cid, []):
            if msg["ts"] == ts:
                return msg
        return None

    def _store_message(
        self, cid: str, params: Mapping[str, Any], *, thread_ts: str | None, username: str | None = None
    ) -> dict[str, Any]:
        if thread_ts:
            parent = self._find(cid, thread_ts)
            # Replying to a reply lands in the parent's thread, as in Slack.
            if parent is not None and parent["thread_ts"] and parent["thread_ts"] != parent["ts"]:
                thread_ts = parent["thread_ts"]
        msg: dict[str, Any] = {
            "channel": cid,
            "ts": self._next_ts(),
            "thread_ts": thread_ts,
            "text": params.get("text") or "",
            "blocks": copy.deepcopy(params.get("blocks") or []),
            "attachments": copy.deepcopy(params.get("attachments") or []),
            "metadata": copy.deepcopy(params.get("metadata")),
            "reply_broadcast": _truthy(params.get("reply_broadcast")),
            "user": BOT_USER_ID,
            "username": username,
            "deleted": False,
            "edits": [],
            "edited_ts": None,
            "seq": next(self._seq),
        }
        self._messages.setdefault(cid, []).append(msg)
        return msg

    def _edit(self, msg: dict[str, Any], params: Mapping[str, Any], *, replace_all: bool = False) -> None:
        """chat.update keeps fields that are left out; a response_url ``replace_original`` replaces the
        whole message (``replace_all``)."""
        msg["edits"].append(copy.deepcopy({k: msg[k] for k in ("text", "blocks", "attachments")}))
        msg["edited_ts"] = self._next_ts()
        for key, empty in (("text", ""), ("blocks", []), ("attachments", [])):
            if params.get(key) is not None:
                msg[key] = copy.deepcopy(params[key])
            elif replace_all:
                msg[key] = empty

    def _wire_message(self, msg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "user": msg["user"],
            "bot_id": BOT_ID,
            "app_id": API_APP_ID,
            "team": TEAM_ID,
            "text": msg["text"],
            "ts": msg["ts"],
        }
        if msg["blocks"]:
            out["blocks"] = copy.deepcopy(msg["blocks"])
        if msg["attachments"]:
            out["attachments"] = copy.deepcopy(msg["attachments"])
        if msg["thread_ts"]:
            out["thread_ts"] = msg["thread_ts"]
        if msg["edited_ts"]:
            out["edited"] = {"user": BOT_USER_ID, "ts": msg["edited_ts"]}
        return out


# -------------------------------------------------------------------- rendering


def render_message(msg: Mapping[str, Any]) -> list[str]:
    """Plain-text lines for a message: its blocks and attachments if any, else its text."""
    lines: list[str] = []
    for block in msg.get("blocks") or []:
        lines += render_block(block)
    for att in msg.get("attachments") or []:
        lines += _render_attachment(att)
    if not lines and msg.get("text"):
        lines = str(msg["text"]).splitlines()
    return lines


def render_block(block: Mapping[str, Any]) -> list[str]:
    kind = block.get("type")
    if kind == "section":
        lines = _text(block.get("text")).splitlines()
        fields = [_text(f).replace("\n", " ") for f in block.get("fields") or []]
        if fields:
            lines.append(" | ".join(fields))
        accessory = _element(block.get("accessory") or {})
        if accessory:
            if lines:
                lines[-1] += " " + accessory
            else:
                lines.append(accessory)
        return lines
    if kind == "header":
        return [_text(block.get("text"))]
    if kind == "context":
        parts = [_text(e) if e.get("type") != "image" else "" for e in block.get("elements") or []]
        return [" | ".join(p.replace("\n", " ") for p in parts if p)]
    if kind == "actions":
        return [" ".join(x for x in (_element(e) for e in block.get("elements") or []) if x)]
    if kind == "divider":
        return ["---"]
    if kind == "image":
        return [f"[image: {block.get('alt_text', '')}]"]
    if kind in ("markdown",):
        return str(block.get("text", "")).splitlines()
    if kind == "rich_text":
        return "".join(_rich_text(e) for e in block.get("elements") or []).splitlines()
    if kind == "input":
        return [f"{_text(block.get('label'))}: [input]"]
    return [f"[{kind} block]"]


def _render_attachment(att: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in ("pretext", "title", "text"):
        if att.get(key):
            lines += str(att[key]).splitlines()
    for fld in att.get("fields") or []:
        lines.append(f"{fld.get('title', '')}: {fld.get('value', '')}")
    for block in att.get("blocks") or []:
        lines += render_block(block)
    if not lines and att.get("fallback"):
        lines.append(str(att["fallback"]))
    return ["| " + line for line in lines]


def _text(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return str(obj.get("text", ""))
    return "" if obj is None else str(obj)


def _element(el: Mapping[str, Any]) -> str:
    kind = el.get("type")
    if kind == "button":
        return f"[{_text(el.get('text'))}]"
    if kind in ("static_select", "external_select", "users_select", "conversations_select", "channels_select"):
        chosen = el.get("initial_option") or {}
        return f"[{_text(chosen.get('text')) or _text(el.get('placeholder')) or 'select'} ▾]"
    if kind == "overflow":
        return "[…]"
    if kind in ("datepicker", "timepicker", "checkboxes", "radio_buttons"):
        return f"[{kind}]"
    return ""


def _rich_text(el: Mapping[str, Any]) -> str:
    kind = el.get("type")
    if "elements" in el:
        inner = "".join(_rich_text(e) for e in el["elements"])
        return inner + "\n" if kind in ("rich_text_section", "rich_text_preformatted", "rich_text_quote") else inner
    if kind == "text":
        return str(el.get("text", ""))
    if kind == "link":
        return str(el.get("text") or el.get("url", ""))
    if kind == "user":
        return f"<@{el.get('user_id', '')}>"
    if kind == "channel":
        return f"<#{el.get('channel_id', '')}>"
    if kind == "usergroup":
        return f"<!subteam^{el.get('usergroup_id', '')}>"
    if kind == "emoji":
        return f":{el.get('name', '')}:"
    return ""


# ------------------------------------------------------------------- validation

_BLOCK_TYPES = {
    "section",
    "divider",
    "image",
    "actions",
    "context",
    "header",
    "input",
    "file",
    "rich_text",
    "video",
    "markdown",
}


def validate_blocks(blocks: Any) -> list[str]:
    """Slack's Block Kit limits (shared/reference/protocols.md, the issue's table), as Slack-style messages.

    Blocks per message 50; section text 3,000, fields 10 of 2,000 each; header 150 (plain_text); context 10
    elements, actions 25; button text 75 (plain_text), value 2,000, url 3,000; action_id and block_id 255, a
    block_id unique in the message, an action_id unique in its block; a confirm dialog's title 100, text 300,
    confirm and deny 30 (plain_text). Returns an empty list when the blocks are acceptable.
    """
    if not isinstance(blocks, list):
        return ["must provide an array [json-pointer:/blocks]"]
    errors: list[str] = []

    def err(msg: str, ptr: str) -> None:
        errors.append(f"{msg} [json-pointer:{ptr}]")

    def text_obj(obj: Any, ptr: str, limit: int, *, plain_only: bool = False) -> None:
        if not isinstance(obj, Mapping) or obj.get("type") not in ("plain_text", "mrkdwn"):
            err("must provide an object with type plain_text or mrkdwn", ptr)
            return
        if plain_only and obj["type"] != "plain_text":
            err("must be a valid enum value [plain_text]", f"{ptr}/type")
        value = obj.get("text")
        if not isinstance(value, str) or not value:
            err("must be more than 0 characters", f"{ptr}/text")
        elif len(value) > limit:
            err(f"must be less than {limit + 1} characters", f"{ptr}/text")

    def element(el: Any, ptr: str) -> None:
        if not isinstance(el, Mapping) or "type" not in el:
            err("must provide an object with a type", ptr)
            return
        if len(str(el.get("action_id", ""))) > 255:
            err("must be less than 256 characters", f"{ptr}/action_id")
        if el["type"] == "button":
            text_obj(el.get("text"), f"{ptr}/text", 75, plain_only=True)
            if len(str(el.get("value", ""))) > 2000:
                err("must be less than 2001 characters", f"{ptr}/value")
            if len(str(el.get("url", ""))) > 3000:
                err("must be less than 3001 characters", f"{ptr}/url")
            if "style" in el and el["style"] not in ("primary", "danger"):
                err("must be a valid enum value", f"{ptr}/style")
        if "confirm" in el:
            confirm(el["confirm"], f"{ptr}/confirm")

    def confirm(dialog: Any, ptr: str) -> None:
        if not isinstance(dialog, Mapping):
            err("must provide an object", ptr)
            return
        for key, limit, plain in (
            ("title", 100, True),
            ("text", 300, False),
            ("confirm", 30, True),
            ("deny", 30, True),
        ):
            text_obj(dialog.get(key), f"{ptr}/{key}", limit, plain_only=plain)  # all four are required
        if "style" in dialog and dialog["style"] not in ("primary", "danger"):
            err("must be a valid enum value", f"{ptr}/style")

    if len(blocks) > 50:
        err("no more than 50 items allowed", "/blocks")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        ptr = f"/blocks/{i}"
        if not isinstance(block, Mapping) or block.get("type") not in _BLOCK_TYPES:
            err("must provide a valid block type", ptr)
            continue
        if "block_id" in block:
            bid = str(block["block_id"])
            if len(bid) > 255:
                err("must be less than 256 characters", f"{ptr}/block_id")
            if bid in block_ids:
                err("duplicate block_id", f"{ptr}/block_id")
            block_ids.add(bid)
        kind = block["type"]
        if kind == "section":
            if "text" not in block and "fields" not in block:
                err("must provide either text or fields", ptr)
            if "text" in block:
                text_obj(block["text"], f"{ptr}/text", 3000)
            fields = block.get("fields") or []
            if len(fields) > 10:
                err("no more than 10 items allowed", f"{ptr}/fields")
            for j, fld in enumerate(fields):
                text_obj(fld, f"{ptr}/fields/{j}", 2000)
            if "accessory" in block:
                element(block["accessory"], f"{ptr}/accessory")
        elif kind == "header":
            text_obj(block.get("text"), f"{ptr}/text", 150, plain_only=True)
        elif kind in ("context", "actions"):
            elements = block.get("elements")
            limit = 10 if kind == "context" else 25
            if not isinstance(elements, list) or not elements:
                err("must provide at least 1 item", f"{ptr}/elements")
                continue
            if len(elements) > limit:
                err(f"no more than {limit} items allowed", f"{ptr}/elements")
            action_ids: set[str] = set()
            for j, el in enumerate(elements):
                if kind == "context":
                    if isinstance(el, Mapping) and el.get("type") in ("plain_text", "mrkdwn"):
                        text_obj(el, f"{ptr}/elements/{j}", 3000)
                    continue
                element(el, f"{ptr}/elements/{j}")
                aid = el.get("action_id") if isinstance(el, Mapping) else None
                if aid is not None:
                    if aid in action_ids:
                        err("duplicate action_id", f"{ptr}/elements/{j}/action_id")
                    action_ids.add(aid)
    return errors


# ---------------------------------------------------------------- wire helpers


def _read_body(req: BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(req.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""


def _decode_params(query: str, body: bytes, content_type: str) -> Params:
    params: Params = dict(parse_qsl(query, keep_blank_values=True))
    mime = content_type.split(";")[0].strip().lower()
    if body:
        if mime == "application/json":
            try:
                data = json.loads(body)
            except ValueError:
                raise _SlackError("invalid_json") from None
            if not isinstance(data, dict):
                raise _SlackError("invalid_json")
            params.update(data)
        elif mime == "multipart/form-data":
            params.update(_parse_multipart(body, content_type))
        else:
            params.update(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    for key in _JSON_FIELDS:
        value = params.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            # Undecodable JSON stays a string, which validation then reports like Slack would.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


def _parse_multipart(body: bytes, content_type: str) -> Params:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    params: Params = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        filename = part.get_filename()
        params[name] = payload if filename else payload.decode("utf-8", errors="replace")
    return params


def _send(
    req: BaseHTTPRequestHandler,
    status: int,
    body: Mapping[str, Any] | str | None,
    *,
    content_type: str = "application/json; charset=utf-8",
    extra_headers: Mapping[str, str] | None = None,
) -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    try:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _take(queues: dict[str, list[Any]], method: str) -> Any:
    for key in (method, "*"):
        queue = queues.get(key)
        if queue:
            return queue.pop(0)
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _short(params: Params) -> str:
    shown = {k: v for k, v in params.items() if k != "token"}
    text = json.dumps(shown, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _user_record(uid: str, spec: str | Mapping[str, Any]) -> dict[str, Any]:
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = str(spec.get("name", uid.lower()))
    real_name = str(spec.get("real_name", name.title()))
    profile = {
        "real_name": real_name,
        "real_name_normalized": real_name,
        "display_name": str(spec.get("display_name", name)),
        "display_name_normalized": str(spec.get("display_name", name)),
        **({"email": spec["email"]} if "email" in spec else {}),
        **dict(spec.get("profile") or {}),
    }
    return {
        "id": uid,
        "team_id": TEAM_ID,
        "name": name,
        "real_name": real_name,
        "deleted": bool(spec.get("deleted", False)),
        "is_bot": bool(spec.get("is_bot", False)),
        "is_admin": bool(spec.get("is_admin", False)),
        "tz": spec.get("tz", "Etc/UTC"),
        "profile": profile,
    }


def _usergroup_record(gid: str, spec: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    spec = {"users": spec} if isinstance(spec, list) else dict(spec)
    handle = str(spec.get("handle", gid.lower()))
    return {
        "id": gid,
        "team_id": TEAM_ID,
        "is_usergroup": True,
        "name": str(spec.get("name", handle)),
        "description": str(spec.get("description", "")),
        "handle": handle,
        "date_delete": 0,
        "users": list(spec.get("users", [])),
    }
