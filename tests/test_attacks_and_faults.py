"""Hostile and broken inputs, and peers that fail: each refused or survived clearly, nothing changed."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import (
    ALERT_TOKEN,
    APPROVER,
    CHANNEL,
    SIGNING_SECRET,
    VIEWER,
    BotProcess,
    alert_payload,
    message_text,
    roots,
)
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.openbao import OpenBao
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.slack_requests import block_action, sign, slash_command


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[BotProcess, SlackStandIn, Registry]]:
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts", "C0OTHER": "other"}) as slack:
        env = {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution"}
        with BotProcess(slack, env) as bot:
            yield bot, slack, registry


@pytest.fixture(scope="module")
def two_incidents(setup) -> tuple[dict, dict]:
    bot, slack, registry = setup
    pusher = ImagePusher(registry.url)
    found = []
    for name in ("viktor/first", "viktor/second"):
        image = pusher.push_image(name, "latest")
        registry.break_manifest_link(name, image.children["linux/amd64"])
        bot.command(f"check {image.reference}", user=VIEWER)
        found.append(slack.wait_for(lambda s, n=name: next((m for m in roots(s) if n in m["text"]), None), timeout=20))
    return found[0], found[1]


def audit_rows(bot: BotProcess) -> list[dict]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bot", "audit", "--json"], env=bot.env, capture_output=True, text=True)
    return json.loads(out.stdout)


def refusal(slack: SlackStandIn, user: str, fragment: str) -> dict:
    return slack.wait_for(lambda s: next((e for e in s.ephemeral if e["user"] == user and fragment in e["text"]), None))


# --- crafted clicks -------------------------------------------------------------------------------------


def test_a_button_value_naming_another_incident_is_refused(setup, two_incidents):
    bot, slack, _ = setup
    first, second = two_incidents
    second_id = next(e["value"] for b in second["blocks"] if b["type"] == "actions" for e in b["elements"])
    bot.click("registry_rebuild", first, user=APPROVER, value=second_id)
    refusal(slack, APPROVER, "does not belong to incident")
    assert not [r for r in audit_rows(bot) if r["action"] == "start" and r["phase"] == "rebuild"]


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("x" * 5000, "malformed"),
        ("1; DROP TABLE incidents", "malformed"),
        ("", "malformed"),
        ("99999", "does not exist"),
    ],
)
def test_oversized_malformed_or_unknown_values_are_refused(setup, two_incidents, value, fragment):
    bot, slack, _ = setup
    first, _ = two_incidents
    user = f"U0ATTACK{abs(hash(value)) % 10000}"
    bot.click("registry_diagnose", first, user=user, value=value)
    refusal(slack, user, fragment)


def test_unknown_action_ids_are_refused(setup, two_incidents):
    bot, slack, _ = setup
    first, _ = two_incidents
    body, headers = block_action(
        SIGNING_SECRET,
        "registry_delete_everything",
        value="1",
        user_id="U0EVIL",
        message_ts=first["ts"],
        channel_id=CHANNEL,
    )
    assert bot.http.post("/slack/events", content=body, headers=headers).status_code == 200
    refusal(slack, "U0EVIL", "Unknown action")


def test_a_click_from_another_channel_is_refused(setup, two_incidents):
    bot, slack, _ = setup
    first, _ = two_incidents
    bot.click("registry_diagnose", first, user="U0ELSEWHERE", channel_id="C0OTHER")
    refusal(slack, "U0ELSEWHERE", "does not belong")


@pytest.mark.parametrize(
    "payload",
    [b"payload=not-json", b"payload=%7B%22type%22%3A%22block_actions%22%7D", b"payload=" + b"%5B%5D", b"nothing=here"],
)
def test_malformed_signed_payloads_never_break_the_bot(setup, payload):
    bot, _, _ = setup
    answer = bot.http.post("/slack/events", content=payload, headers=sign(SIGNING_SECRET, payload))
    assert answer.status_code in (200, 400, 404)
    assert bot.http.get("/healthz").status_code == 200


# --- generated input ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_slash_command_text_gets_a_private_answer(setup, text):
    bot, _, _ = setup
    body, headers = slash_command(SIGNING_SECRET, text.replace("\x00", ""), user_id="U0FUZZ")
    answer = bot.http.post("/slack/events", content=body, headers=headers)
    assert answer.status_code == 200
    reply = answer.json()
    assert reply["response_type"] == "ephemeral"
    assert "Traceback" not in reply["text"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_webhook_bodies_that_are_not_alertmanagers_get_400(setup, body):
    bot, _, _ = setup
    answer = bot.http.post("/alertmanager", json=body, headers={"Authorization": f"Bearer {ALERT_TOKEN}"})
    assert answer.status_code == 400
    assert answer.text.startswith("not an Alertmanager payload")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["alerts"][0].update(labels={"instance": "x"}),
        lambda p: p["alerts"][0].update(labels={"alertname": 5}),
        lambda p: p.update(status="exploded"),
        lambda p: p["alerts"].append("nope"),
        lambda p: p.update(alerts=[{}] * 1001),
    ],
)
def test_near_miss_payloads_are_refused_with_the_reason(setup, mutate):
    bot, _, _ = setup
    payload = alert_payload()
    mutate(payload)
    answer = bot.alert(payload)
    assert answer.status_code == 400
    assert answer.text[-1] == "\n" and answer.text.count("\n") == 1


def test_the_bot_still_serves_and_logged_no_traceback(setup):
    bot, _, _ = setup
    assert bot.http.get("/healthz").status_code == 200
    records = bot.log_records()
    assert not [r for r in records if "Traceback" in json.dumps(r) and r.get("level") != "error"]


# --- failing peers -------------------------------------------------------------------------------------


def test_a_registry_answering_5xx_gets_a_clear_private_answer(tmp_path):
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack, ForgejoStandIn(registry) as fj:
        fj.tamper("*", r"^/v2/", status=503)
        env = {"REGISTRY_URL": fj.url, "REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "pull-token-s3cret"}
        with BotProcess(slack, env) as bot:
            bot.command("check viktor/app:latest", user=VIEWER)
            note = refusal(slack, VIEWER, "COULD NOT CHECK")
            assert "HTTP 503" in note["text"] and "\n" not in note["text"]
            assert roots(slack) == []
            fj.clear_tampering()
            assert bot.http.get("/healthz").status_code == 200


def test_a_slow_registry_times_out_into_a_clear_answer():
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack, ForgejoStandIn(registry) as fj:
        fj.tamper("GET", r"/manifests/", delay=2.0)
        env = {
            "REGISTRY_URL": fj.url,
            "REGISTRY_USERNAME": "cluster-puller",
            "REGISTRY_PASSWORD": "pull-token-s3cret",
            "REGISTRY_TIMEOUT": "0.5",
        }
        with BotProcess(slack, env) as bot:
            bot.command("check viktor/app:latest", user=VIEWER)
            assert "timed out" in refusal(slack, VIEWER, "COULD NOT CHECK")["text"]


@pytest.mark.parametrize("how", ["sealed", "unreachable", "denying"])
def test_vault_trouble_is_one_private_sentence_and_the_bot_keeps_serving(how):
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack, OpenBao() as bao:
        bao.put_secret("viktor", {"forgejo_pull_token": "pull-token-s3cret"})
        token = bao.create_token(["default"]) if how == "denying" else bao.root_token
        addr = bao.addr
        if how == "sealed":
            bao.seal()
        if how == "unreachable":
            from tests.peers.registry import free_port

            addr = f"http://127.0.0.1:{free_port()}"
        env = {
            "REGISTRY_URL": registry.url,
            "REGISTRY_KIND": "distribution",
            "REGISTRY_USERNAME": "puller",
            "VAULT_ADDR": addr,
            "VAULT_TOKEN": token,
            "VAULT_TIMEOUT": "2",
        }
        with BotProcess(slack, env) as bot:
            bot.command("check viktor/app:latest", user=VIEWER)
            word = {"sealed": "sealed", "unreachable": "unreachable", "denying": "denied"}[how]
            note = refusal(slack, VIEWER, word)
            assert "Vault" in note["text"] and token not in note["text"]
            assert token not in bot.logs()
            assert bot.http.get("/healthz").status_code == 200


def test_the_database_briefly_locked_delays_but_loses_nothing(tmp_path):
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack:
        pusher = ImagePusher(registry.url)
        image = pusher.push_image("viktor/app", "latest")
        registry.break_manifest_link("viktor/app", image.children["linux/amd64"])
        with BotProcess(slack, {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution"}) as bot:
            database = bot.env["DATABASE_URL"].removeprefix("sqlite:///")
            holder = sqlite3.connect(database, timeout=30, check_same_thread=False)
            holder.execute("BEGIN EXCLUSIVE")

            def release() -> None:
                time.sleep(2)
                holder.rollback()
                holder.close()

            threading.Thread(target=release).start()
            bot.command(f"check {image.reference}", user=VIEWER)
            root = slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/app" in m["text"]), None), timeout=30)
            slack.wait_for(lambda s: "Diagnosed" in message_text(s.message(CHANNEL, root["ts"])), timeout=30)


def test_the_database_gone_is_a_clear_answer_and_readiness_fails_until_it_returns():
    from tests.peers.postgres import Postgres

    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack, Postgres() as pg:
        url = pg.create_database("gone")
        env = {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution", "DATABASE_URL": url}
        with BotProcess(slack, env) as bot:
            pg.stop()
            assert bot.http.get("/readyz").status_code == 503
            bot.command("status", user=VIEWER)
            note = refusal(slack, VIEWER, "database is unavailable")
            assert "\n" not in note["text"]
            assert bot.http.get("/healthz").status_code == 200
