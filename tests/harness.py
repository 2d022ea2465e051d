"""The bot as a real process (`python -m bot serve`) wired to the test's peers, and ways to talk to it.

Tests drive it only from outside, as Slack, Alertmanager and an SRE would: signed HTTP requests,
webhook payloads, and what the Slack stand-in recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.peers.registry import free_port
from tests.peers.slack_api import SlackStandIn
from tests.peers.slack_requests import block_action, slash_command

SIGNING_SECRET = "signing-s3cret-for-tests"
BOT_TOKEN = "xoxb-test"
ALERT_TOKEN = "alertmanager-t0ken"
CHANNEL = "C0ALERTS"
APPROVER, APPROVER2, VIEWER = "U0APPROVER", "U0APPROVER2", "U0VIEWER"


# Every bot process of the session, so the leak test can read all their logs at the end.
OBSERVED_BOTS: list[BotProcess] = []
# The secret values the suite configures anywhere: none may reach a Slack message or a log line.
SECRETS = (
    "pull-token-s3cret",
    "cleanup-token-s3cret",
    "weak-token",
    "wp-token",
    "gh-token",
    "ghcr-pat-s3cret",
    "ghcr-read-s3cret",
    BOT_TOKEN,
    SIGNING_SECRET,
    ALERT_TOKEN,
)


class BotProcess:
    def __init__(
        self,
        slack: SlackStandIn,
        env: dict[str, str],
        workdir: Path | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        """`wrapper` runs the bot under another command (strace, to record every connection it makes)."""
        OBSERVED_BOTS.append(self)
        self.wrapper = wrapper or []
        self.slack = slack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="bot-"))
        self.log_path = self.workdir / f"bot-{len(OBSERVED_BOTS)}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "VAULT_", "SLACK_", "KUBE"))}
        self.env = {
            **base,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.base_url,
            "SLACK_CHANNEL": CHANNEL,
            "SLACK_RETRY_FOR": "120",
            "ALERTMANAGER_TOKEN": ALERT_TOKEN,
            "BOT_HOST": "127.0.0.1",
            "BOT_PORT": str(self.port),
            "DATABASE_URL": f"sqlite:///{self.workdir / 'bot.db'}",
            "APPROVERS": f"{APPROVER},{APPROVER2}",
            "LOG_FORMAT": "json",
            "KUBE_ENABLED": "false",
            "SCAN_INTERVAL": "0",
            "HEARTBEAT_INTERVAL": "1",
            "REGISTRY_RETRIES": "2",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def __enter__(self) -> BotProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.http.close()

    def start(self, wait: bool = True) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "bot", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a wrapper (strace) and the bot stop together
        )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"the bot exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the bot did not become healthy:\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(5)
        if self.process:
            self._signal_group(signal.SIGKILL)  # anything the wrapper left behind

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.process and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(5)

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.logs().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"message": line})
        return records

    # --- as Slack -------------------------------------------------------------------------------------

    def command(self, text: str, user: str = VIEWER, channel: str = CHANNEL, **kwargs: Any) -> httpx.Response:
        body, headers = slash_command(SIGNING_SECRET, text, user_id=user, channel_id=channel, **kwargs)
        return self.http.post("/slack/events", content=body, headers=headers)

    def click(self, action_id: str, message: dict[str, Any], user: str = VIEWER, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("channel_id", message.get("channel", CHANNEL))
        body, headers = block_action(SIGNING_SECRET, action_id, user_id=user, message=message, **kwargs)
        return self.http.post("/slack/events", content=body, headers=headers)

    # --- as Alertmanager ----------------------------------------------------------------------------

    def alert(self, payload: Any, token: str = ALERT_TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post("/alertmanager", json=payload, headers=headers)


def alert_payload(
    alertname: str = "RegistryManifestIntegrityFailure",
    status: str = "firing",
    instance: str = "127.0.0.1:5000",
    **labels: str,
) -> dict[str, Any]:
    """A notification exactly as Alertmanager 0.25 sends it (webhook payload version 4)."""
    alert_labels = {
        "alertname": alertname,
        "instance": instance,
        "job": "forgejo-integrity-probe",
        "severity": "critical",
        **labels,
    }
    return {
        "receiver": "registry-bot",
        "status": status,
        "alerts": [
            {
                "status": status,
                "labels": alert_labels,
                "annotations": {"summary": f"{alertname} on {instance}"},
                "startsAt": "2026-11-30T10:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-30T11:00:00.000Z",
                "generatorURL": "http://prometheus.local/graph?g0.expr=registry_manifest_integrity_failures",
                "fingerprint": "a1b2c3d4e5f60708",
            }
        ],
        "groupLabels": {"alertname": alertname},
        "commonLabels": alert_labels,
        "commonAnnotations": {"summary": f"{alertname} on {instance}"},
        "externalURL": "http://alertmanager.local",
        "version": "4",
        "groupKey": '{}:{alertname="' + alertname + '"}',
        "truncatedAlerts": 0,
    }


def roots(slack: SlackStandIn, channel: str = CHANNEL) -> list[dict[str, Any]]:
    return [m for m in slack.messages(channel) if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]


def buttons(message: dict[str, Any]) -> list[str]:
    found = []
    for block in message.get("blocks") or []:
        if block.get("type") == "actions":
            found += [e.get("action_id") for e in block.get("elements", [])]
    return found


def message_text(message: dict[str, Any]) -> str:
    """All text of a message, blocks included, for assertions."""
    return json.dumps(message.get("blocks") or [], ensure_ascii=False) + (message.get("text") or "")
