"""`registry-bot serve` end to end over HTTP: slash commands, buttons, the webhook, health and metrics.

The bot runs as its own process; Slack is the loopback stand-in; the registry is real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    APPROVER,
    CHANNEL,
    SIGNING_SECRET,
    VIEWER,
    BotProcess,
    alert_payload,
    buttons,
    message_text,
    roots,
)
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.slack_requests import slash_command


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    users = {APPROVER: "approver", VIEWER: "viewer", "U0APPROVER2": "approver2"}
    with SlackStandIn(channels={CHANNEL: "alerts", "C0OTHER": "other"}, users=users) as stand_in:
        yield stand_in


@pytest.fixture
def fresh_registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture
def bot(slack: SlackStandIn, fresh_registry: Registry) -> Iterator[BotProcess]:
    env = {"REGISTRY_URL": fresh_registry.url, "REGISTRY_KIND": "distribution"}
    with BotProcess(slack, env) as process:
        yield process


def broken_image(registry: Registry, name: str = "viktor/payslip-ingest", tag: str = "latest"):
    pusher = ImagePusher(registry.url)
    image = pusher.push_image(name, tag)
    registry.break_manifest_link(name, image.children["linux/amd64"])
    pusher.close()
    return image


def wait_root(slack: SlackStandIn, image: str, timeout: float = 15) -> dict:
    return slack.wait_for(
        lambda s: next((m for m in roots(s) if image in (m.get("text") or "")), None), timeout=timeout
    )


def test_missing_settings_stop_the_process_with_one_line_naming_each(slack):
    process = BotProcess(slack, {"SLACK_CHANNEL": "", "ALERTMANAGER_TOKEN": ""})
    process.start(wait=False)
    assert process.process.wait(20) == 2
    output = process.logs().strip().splitlines()
    assert output == ["registry-bot: Missing required settings: REGISTRY_URL, SLACK_CHANNEL, ALERTMANAGER_TOKEN."]


def test_health_readiness_and_metrics(bot):
    assert bot.http.get("/healthz").text == "ok\n"
    ready = bot.http.get("/readyz").json()
    assert ready["ready"] is True and ready["role"] in ("leader", "standby")
    metrics = bot.http.get("/metrics").text
    assert "registry_bot_phase_runs" in metrics


def test_a_broken_image_from_the_slash_command_opens_an_incident_and_is_diagnosed(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    answer = bot.command(f"check {image.reference}", user=VIEWER)
    assert answer.status_code == 200
    assert "Checking" in answer.json()["text"]
    root = wait_root(slack, image.reference)
    assert buttons(root) == ["registry_diagnose", "registry_rebuild", "registry_restart"]
    text = message_text(root)
    assert "linux/amd64" in text and "missing" in text
    assert f"<@{VIEWER}>" in text  # who asked
    # Diagnose runs on its own and reports in the thread: one progress message, then a result.
    thread = slack.wait_for(lambda s: len(s.thread(CHANNEL, root["ts"])) >= 2 and s.thread(CHANNEL, root["ts"]))
    assert "Diagnose" in thread[0]["text"]
    assert "Confirmed broken" in thread[-1]["text"]
    final = slack.wait_for(lambda s: "Diagnosed" in message_text(s.message(CHANNEL, root["ts"])) and s)
    assert final


def test_an_intact_image_gets_its_verdict_in_the_channel(bot, slack, fresh_registry):
    pusher = ImagePusher(fresh_registry.url)
    image = pusher.push_single("viktor/api", "v1")
    bot.command(f"check {image.reference}", channel="C0OTHER")
    posted = slack.wait_for(lambda s: s.messages("C0OTHER"))
    assert posted[0]["text"].startswith("INTACT viktor/api:v1")
    assert roots(slack) == []


def test_a_bare_name_is_checked_as_latest(bot, slack, fresh_registry):
    pusher = ImagePusher(fresh_registry.url)
    pusher.push_single("viktor/api", "latest")
    answer = bot.command("check viktor/api", channel="C0OTHER").json()
    assert answer["response_type"] == "ephemeral"
    assert answer["text"] == "🔎 Checking `viktor/api:latest`…"
    posted = slack.wait_for(lambda s: s.messages("C0OTHER"))
    assert posted[0]["text"].startswith("INTACT viktor/api:latest")


@pytest.mark.parametrize("text", ["check Viktor/App:1", "check ghcr.io/viktor/app:1", "check viktor/app:ünï"])
def test_a_malformed_reference_is_answered_only_to_the_caller_and_nothing_leaves_the_bot(bot, slack, text):
    before = len(slack.calls)
    answer = bot.command(text)
    assert answer.status_code == 200
    body = answer.json()
    assert body["response_type"] == "ephemeral"
    assert body["text"].startswith("🚫 ") and "\n" not in body["text"]
    time.sleep(0.5)
    assert len(slack.calls) == before


@pytest.mark.parametrize("text", ["", "help", "frobnicate", "check a b"])
def test_anything_else_gets_the_usage_only_to_the_caller(bot, text):
    body = bot.command(text).json()
    assert body["response_type"] == "ephemeral"
    assert "/registry check" in body["text"] or "Usage" in body["text"]


def test_forged_and_stale_requests_are_refused_with_401(bot):
    body, headers = slash_command("not-the-secret", "check viktor/app:1")
    assert bot.http.post("/slack/events", content=body, headers=headers).status_code == 401
    body, headers = slash_command(SIGNING_SECRET, "check viktor/app:1", timestamp=time.time() - 600)
    assert bot.http.post("/slack/events", content=body, headers=headers).status_code == 401


def test_status_lists_open_incidents_with_links(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    bot.command(f"check {image.reference}")
    root = wait_root(slack, image.reference)
    bot.command("status", user=VIEWER)
    note = slack.wait_for(lambda s: next((e for e in s.ephemeral if "open incident" in e["text"]), None))
    assert f"p{root['ts'].replace('.', '')}" in note["text"]
    assert note["user"] == VIEWER


def test_a_non_approver_clicking_rebuild_is_refused_privately_and_audited(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    bot.command(f"check {image.reference}")
    root = wait_root(slack, image.reference)
    assert bot.click("registry_rebuild", root, user=VIEWER).status_code == 200
    refusal = slack.wait_for(
        lambda s: next((e for e in s.ephemeral if e["user"] == VIEWER and "🚫" in e["text"]), None)
    )
    assert "Only approvers" in refusal["text"]
    slack.wait_for(lambda s: any("refused, not an approver" in m["text"] for m in s.thread(CHANNEL, root["ts"])))
    audit = bot_audit(bot)
    assert any(e["action"] == "refuse" and e["user"] == VIEWER and e["phase"] == "rebuild" for e in audit)
    assert not any(e["action"] == "start" and e["phase"] == "rebuild" for e in audit)


def bot_audit(bot: BotProcess) -> list[dict]:
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "--json"], env=bot.env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_webhook_refuses_a_wrong_token_and_a_body_that_is_not_a_payload(bot):
    assert bot.alert(alert_payload(), token="wrong").status_code == 401
    assert bot.alert(alert_payload(), token="").status_code == 401
    refused = bot.http.post(
        "/alertmanager", content=b"{not json", headers={"Authorization": "Bearer alertmanager-t0ken"}
    )
    assert refused.status_code == 400 and "not JSON" in refused.text
    bad = alert_payload()
    bad["version"] = "3"
    answer = bot.alert(bad)
    assert answer.status_code == 400 and "version" in answer.text
    answer = bot.alert({"alerts": "many"} | {"version": "4", "status": "firing"})
    assert answer.status_code == 400 and "alerts must be a list" in answer.text


def test_a_firing_alert_without_a_cluster_scans_and_opens_one_incident_per_broken_image(bot, slack, fresh_registry):
    first = broken_image(fresh_registry, "viktor/one")
    second = broken_image(fresh_registry, "viktor/two")
    ImagePusher(fresh_registry.url).push_single("viktor/fine", "v1")
    assert bot.alert(alert_payload(instance=fresh_registry.host)).status_code == 200
    wait_root(slack, first.reference)
    wait_root(slack, second.reference)
    time.sleep(1)
    assert len(roots(slack)) == 2
    assert "Alertmanager" in message_text(roots(slack)[0])


def test_a_repeated_notification_updates_the_root_message_never_a_duplicate(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    bot.alert(alert_payload(instance=fresh_registry.host))
    root = wait_root(slack, image.reference)
    bot.alert(alert_payload(instance=fresh_registry.host))
    slack.wait_for(lambda s: "(2×)" in message_text(s.message(CHANNEL, root["ts"])))
    assert len(roots(slack)) == 1


def test_a_resolved_notification_is_noted_in_the_incident_thread(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    bot.alert(alert_payload(instance=fresh_registry.host))
    root = wait_root(slack, image.reference)
    bot.alert(alert_payload(instance=fresh_registry.host, status="resolved"))
    slack.wait_for(lambda s: any("resolved" in m["text"] for m in s.thread(CHANNEL, root["ts"])))


def test_alerts_for_another_instance_and_other_alerts_are_ignored(bot, slack):
    assert bot.alert(alert_payload(instance="other.example")).status_code == 200
    assert bot.alert(alert_payload(alertname="KubePodCrashLooping")).status_code == 200
    time.sleep(1)
    assert roots(slack) == []


@pytest.mark.parametrize("alertname", ["RegistryCatalogInaccessible", "RegistryIntegrityProbeStale"])
def test_info_alerts_post_a_message_with_a_check_now_button(bot, slack, fresh_registry, alertname):
    bot.alert(alert_payload(alertname=alertname, instance=fresh_registry.host))
    message = slack.wait_for(lambda s: next((m for m in roots(s) if alertname in m["text"]), None))
    assert buttons(message) == ["registry_check_now"]
    bot.click("registry_check_now", message, user=VIEWER)
    slack.wait_for(lambda s: any("Scan of" in m["text"] for m in s.messages(CHANNEL)))


def test_slack_rate_limits_are_waited_out_and_nothing_is_lost(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    slack.rate_limit("chat.postMessage", times=2, retry_after=1)
    bot.command(f"check {image.reference}")
    wait_root(slack, image.reference, timeout=20)
    limited = [c for c in slack.calls_to("chat.postMessage") if c.status == 429]
    assert len(limited) == 2


def test_slack_down_for_a_while_then_messages_are_delivered(bot, slack, fresh_registry):
    image = broken_image(fresh_registry)
    slack.go_down()
    bot.command(f"check {image.reference}")
    time.sleep(3)
    slack.come_back()
    wait_root(slack, image.reference, timeout=30)


def test_a_channel_the_bot_is_not_in_is_logged_with_the_fix(bot, slack, fresh_registry):
    slack.set_member(CHANNEL, False)
    image = broken_image(fresh_registry)
    bot.command(f"check {image.reference}")
    deadline = time.time() + 15
    while time.time() < deadline and "invite" not in bot.logs():
        time.sleep(0.2)
    assert "not_in_channel" in bot.logs() and "invite" in bot.logs()
    assert bot.http.get("/healthz").status_code == 200


def test_the_ack_comes_before_any_slack_call(bot, slack, fresh_registry):
    slack.go_down()  # anything on the request path that called Slack would now hang or fail
    image = broken_image(fresh_registry)
    started = time.monotonic()
    answer = bot.command(f"check {image.reference}")
    assert answer.status_code == 200 and time.monotonic() - started < 1.0
    slack.come_back()
    httpx.get(bot.url + "/healthz")
