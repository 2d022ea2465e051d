"""Incidents that survive restarts: approvals, one run per phase, the audit trail, crash safety, the schedule.

Each test runs the real bot process(es) against the world of stand-ins and a real registry; SQLite by
default and a real PostgreSQL where replicas share state.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import APPROVER, APPROVER2, CHANNEL, VIEWER, BotProcess, buttons, message_text
from tests.world import IMAGE, World

_databases = itertools.count(1)


def audit(bot: BotProcess) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "--json", "--since", "1h"],
        env=bot.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def open_incident(world: World, bot: BotProcess, consumers: bool = True):
    image = world.broken_image()
    if consumers:
        world.seed_consumers(image)
    bot.command(f"check {image.reference}", user=VIEWER)
    root = world.root(image.reference)
    world.slack.wait_for(lambda s: "Diagnosed" in message_text(world.current(root)), timeout=20)
    return image, root


def wait_state(world: World, root: dict, label: str, timeout: float = 30) -> dict:
    return world.slack.wait_for(
        lambda s: world.current(root) if label in message_text(world.current(root)) else None, timeout=timeout
    )


def pg_env(postgres) -> dict[str, str]:
    name = f"bot_{next(_databases)}_{int(time.time() * 1000) % 100000}"
    return {"DATABASE_URL": postgres.create_database(name)}


# --- the whole path, one approver ---------------------------------------------------------------------


def test_rebuild_restart_and_scheduled_verification_resolve_the_incident(world):
    world.add_ci()
    bot = world.bot()
    bot.start()
    _image, root = open_incident(world, bot)
    assert any("Used by 1 workload" in m["text"] for m in world.thread(root))  # listed before any approval

    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    during = wait_state(world, root, "Rebuilding")
    assert f"✅ Rebuild by <@{APPROVER}>" in message_text(during)
    assert "registry_rebuild" not in buttons(during)
    rebuilt = wait_state(world, root, "Rebuilt", timeout=40)
    assert buttons(rebuilt) == ["registry_restart", "registry_verify_now", "registry_rebuild"]

    bot.click("registry_restart", rebuilt, user=APPROVER)
    world.slack.wait_for(lambda s: any("Verification at" in m["text"] for m in world.thread(root)), timeout=40)
    resolved = wait_state(world, root, "Resolved", timeout=40)
    assert buttons(resolved) == []

    thread = "\n".join(m["text"] for m in world.thread(root))
    for expected in (
        "Diagnose",
        "Broken version `viktor/payslip-ingest:latest` deleted",
        "build-and-push: success",
        "is intact",
        "deployment/payslip-ingest in payroll",
        "Verification at",
        "Full check: intact",
        "Resolved: the registry is whole again",
        "PROMETHEUS_URL is not set",
    ):
        assert expected in thread, expected
    trail = [(e["action"], e["phase"], e["outcome"]) for e in audit(bot)]
    for expected in [
        ("open", None, "opened"),
        ("start", "diagnose", "running"),
        ("finish", "diagnose", "succeeded"),
        ("request", "rebuild", "accepted"),
        ("start", "rebuild", "running"),
        ("step", "rebuild", "done"),
        ("finish", "rebuild", "succeeded"),
        ("request", "restart", "accepted"),
        ("finish", "restart", "succeeded"),
        ("schedule", "verify", "scheduled"),
        ("start", "verify", "running"),
        ("finish", "verify", "succeeded"),
    ]:
        assert expected in trail, expected
    assert "Traceback" not in bot.logs()


# --- one run per phase -------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_twenty_concurrent_clicks_give_exactly_one_run(world, request, database):
    env = pg_env(request.getfixturevalue("postgres")) if database == "postgresql" else {}
    world.add_ci(step_seconds=1.0)
    bot = world.bot(**env)
    bot.start()
    _image, root = open_incident(world, bot)
    message = world.current(root)
    users = [APPROVER, APPROVER2] * 10
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda user: bot.click("registry_rebuild", message, user=user).status_code, users))
    assert answers == [200] * 20
    wait_state(world, root, "Rebuilt", timeout=60)
    trail = audit(bot)
    starts = [e for e in trail if e["action"] == "start" and e["phase"] == "rebuild"]
    assert len(starts) == 1
    assert len(world.woodpecker.requests_to("POST", r"/pipelines$")) == 1
    told = [e for e in world.slack.ephemeral if "already running since" in e["text"]]
    assert told and "started by <@" in told[0]["text"]


def test_a_slack_retry_of_the_same_click_does_no_work_twice(world):
    world.add_ci(step_seconds=0.1)
    bot = world.bot()
    bot.start()
    _image, root = open_incident(world, bot)
    from tests.harness import SIGNING_SECRET
    from tests.peers.slack_requests import block_action

    body, headers = block_action(SIGNING_SECRET, "registry_diagnose", user_id=VIEWER, message=world.current(root))
    assert bot.http.post("/slack/events", content=body, headers=headers).status_code == 200
    retry = {**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert bot.http.post("/slack/events", content=body, headers=retry).status_code == 200
    time.sleep(2)
    starts = [e for e in audit(bot) if e["action"] == "start" and e["phase"] == "diagnose"]
    assert len(starts) == 2  # the automatic diagnosis, and the click once


# --- approvals ---------------------------------------------------------------------------------------------


def test_two_person_rule_self_approval_refused_second_answer_refused(world):
    world.add_ci(step_seconds=0.1)
    bot = world.bot(TWO_PERSON_RULE="true")
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    ask = world.slack.wait_for(lambda s: next((m for m in world.thread(root) if "asks to run" in m["text"]), None))
    assert buttons(ask) == ["registry_approve", "registry_deny"]
    bot.click("registry_approve", ask, user=APPROVER)  # self-approval
    world.slack.wait_for(lambda s: any("different approver" in e["text"] for e in s.ephemeral))
    bot.click("registry_approve", ask, user=VIEWER)  # not an approver
    world.slack.wait_for(lambda s: any(e["user"] == VIEWER and "Only approvers" in e["text"] for e in s.ephemeral))
    assert world.woodpecker.requests_to("POST", r"/pipelines$") == []
    bot.click("registry_approve", ask, user=APPROVER2)
    wait_state(world, root, "Rebuilt", timeout=40)
    bot.click("registry_deny", ask, user=APPROVER2)  # a second answer
    world.slack.wait_for(lambda s: any("already approved" in e["text"] for e in s.ephemeral))
    trail = [(e["action"], e["outcome"], e["user"]) for e in audit(bot)]
    assert ("approve", "approved", APPROVER2) in trail
    assert ("refuse", "refused", APPROVER) in trail and ("refuse", "refused", VIEWER) in trail
    run_line = next(m for m in world.thread(root) if "Rebuild (attempt 1)" in m["text"])
    assert f"requested by <@{APPROVER}>, approved by <@{APPROVER2}>" in run_line["text"]


def test_an_approval_request_expires(world):
    world.add_ci()
    bot = world.bot(TWO_PERSON_RULE="true", APPROVAL_TTL="1")
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    ask = world.slack.wait_for(lambda s: next((m for m in world.thread(root) if "asks to run" in m["text"]), None))
    world.slack.wait_for(lambda s: "expired" in world.slack.message(CHANNEL, ask["ts"])["text"], timeout=15)
    bot.click("registry_approve", ask, user=APPROVER2)
    world.slack.wait_for(lambda s: any("expired" in e["text"] and e["user"] == APPROVER2 for e in s.ephemeral))
    assert world.woodpecker.requests_to("POST", r"/pipelines$") == []


def test_approvers_from_a_slack_user_group(world):
    world.slack.set_usergroup_users("S0ONCALL", [VIEWER])
    world.add_ci(step_seconds=0.1)
    bot = world.bot(APPROVERS="", APPROVER_GROUP="S0ONCALL")
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=VIEWER)
    wait_state(world, root, "Rebuilt", timeout=40)


# --- crash safety --------------------------------------------------------------------------------------


def test_a_phase_running_when_the_bot_is_killed_is_reported_interrupted_at_the_next_start(world):
    world.add_ci(step_seconds=5.0)
    bot = world.bot()
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    world.slack.wait_for(lambda s: any("Pipeline <" in m["text"] for m in world.thread(root)), timeout=20)
    bot.kill()
    second = world.bot()
    second.start()
    notice = world.slack.wait_for(
        lambda s: next((m for m in world.thread(root) if "was interrupted" in m["text"]), None), timeout=30
    )
    assert buttons(notice) == ["registry_rebuild"]
    wait_state(world, root, "Failed")
    trail = [(e["action"], e["phase"]) for e in audit(second)]
    assert ("interrupted", "rebuild") in trail
    # and it can be run again from that button
    second.click("registry_rebuild", notice, user=APPROVER)
    world.slack.wait_for(lambda s: any("Rebuild (attempt 2)" in m["text"] for m in world.thread(root)), timeout=20)


def test_a_verification_due_while_the_bot_was_down_runs_once_at_start(world):
    world.add_ci(step_seconds=0.1)
    bot = world.bot(VERIFY_DELAY="3")
    bot.start()
    _image, root = open_incident(world, bot, consumers=False)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    world.slack.wait_for(lambda s: any("Verification at" in m["text"] for m in world.thread(root)), timeout=40)
    bot.kill()
    time.sleep(4)  # the verification falls due while no bot runs
    second = world.bot(VERIFY_DELAY="3")
    second.start()
    wait_state(world, root, "Resolved", timeout=40)
    time.sleep(2)
    verifies = [e for e in audit(second) if e["action"] == "start" and e["phase"] == "verify"]
    assert len(verifies) == 1


def test_verify_now_runs_at_once(world):
    world.add_ci(step_seconds=0.1)
    bot = world.bot(VERIFY_DELAY="600")
    bot.start()
    _image, root = open_incident(world, bot, consumers=False)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    waiting = wait_state(world, root, "Waiting for verification", timeout=40)
    bot.click("registry_verify_now", waiting, user=VIEWER)  # read-only: anyone may
    wait_state(world, root, "Resolved", timeout=30)


# --- several replicas on one PostgreSQL ------------------------------------------------------------------


def test_two_replicas_run_each_job_once_and_the_standby_takes_over_from_a_killed_leader(world, postgres):
    env = {**pg_env(postgres), "VERIFY_DELAY": "6", "SCAN_INTERVAL": "2", "LEADER_ELECTION": "database"}
    world.add_ci(step_seconds=0.1)
    first, second = world.bot(**env), world.bot(**env)
    first.start()
    second.start()
    roles = lambda: {b: b.http.get("/readyz").json()["role"] for b in (first, second)}  # noqa: E731
    deadline = time.time() + 15
    while time.time() < deadline and sorted(roles().values()) != ["leader", "standby"]:
        time.sleep(0.2)
    assert sorted(roles().values()) == ["leader", "standby"]
    leader = next(b for b, role in roles().items() if role == "leader")
    standby = second if leader is first else first
    _image, root = open_incident(world, standby, consumers=False)
    standby.click("registry_rebuild", world.current(root), user=APPROVER)
    world.slack.wait_for(lambda s: any("Verification at" in m["text"] for m in world.thread(root)), timeout=40)
    time.sleep(3)  # a few probe intervals with both replicas up
    assert '"probe: ' in leader.logs() or "probe: {" in leader.logs()
    assert "probe: {" not in standby.logs(), "the standby ran a scan while the leader was alive"
    leader.kill()
    wait_state(world, root, "Resolved", timeout=40)
    assert standby.http.get("/readyz").json()["role"] == "leader"
    verifies = [e for e in audit(standby) if e["action"] == "start" and e["phase"] == "verify"]
    assert len(verifies) == 1
    # one incident, one root message: the periodic scans of two replicas never doubled anything
    assert len([m for m in world.slack.messages(CHANNEL) if IMAGE in m["text"] and not m.get("thread_ts")]) == 1


@pytest.mark.parametrize("phase", ["diagnose", "restart", "verify"])
def test_the_bot_killed_in_any_phase_reports_it_interrupted_after_a_restart(world, phase):
    world.add_ci(step_seconds=0.1)
    bot = world.bot(VERIFY_DELAY="1")
    bot.start()
    _image, root = open_incident(world, bot)
    if phase == "restart":
        world.kube.rollout_seconds = 60.0
        bot.click("registry_restart", world.current(root), user=APPROVER)
        marker = "Restart consumers (attempt 1)"
    elif phase == "verify":
        bot.click("registry_rebuild", world.current(root), user=APPROVER)
        wait_state(world, root, "Rebuilt", timeout=40)
        world.forgejo.tamper("GET", r"/manifests/latest$", delay=30)
        world.kube.rollout_seconds = 0.1
        bot.click("registry_restart", world.current(root), user=APPROVER)
        marker = "Verify (attempt 1)"
    else:
        world.forgejo.tamper("GET", r"/manifests/latest$", delay=30)
        bot.click("registry_diagnose", world.current(root), user=VIEWER)
        marker = "Diagnose (attempt 2)"
    world.slack.wait_for(lambda s: any(marker in m["text"] for m in world.thread(root)), timeout=40)
    bot.kill()
    world.forgejo.clear_tampering()
    second = world.bot(VERIFY_DELAY="1")
    second.start()
    world.slack.wait_for(lambda s: any("was interrupted" in m["text"] for m in world.thread(root)), timeout=30)
    assert ("interrupted", phase) in [(e["action"], e["phase"]) for e in audit(second)]


def test_pods_still_failing_on_a_node_offer_the_node_fix_which_needs_two_approvers(world):
    world.add_ci(step_seconds=0.1)
    bot = world.bot(NODE_ACTIONS="true")
    bot.start()
    image, root = open_incident(world, bot)
    world.kube.add_node("k8s-node2")
    world.kube.add_statefulset("batch", "reporter", "docker.io/library/busybox:1.36")
    world.kube.add_pod(
        "batch",
        "reporter-0",
        f"{world.forgejo.host}/{image.reference}",
        node="k8s-node2",
        waiting_reason="ImagePullBackOff",
        owner=("StatefulSet", "reporter"),
    )
    bot.click("registry_restart", world.current(root), user=APPROVER)
    offer = world.slack.wait_for(
        lambda s: next((m for m in world.thread(root) if "Drain" in message_text(m)), None), timeout=40
    )
    assert buttons(offer) == ["registry_node"]
    bot.click("registry_node", offer, user=VIEWER)
    world.slack.wait_for(lambda s: any(e["user"] == VIEWER and "Only approvers" in e["text"] for e in s.ephemeral))
    bot.click("registry_node", offer, user=APPROVER)
    ask = world.slack.wait_for(lambda s: next((m for m in world.thread(root) if "asks to run" in m["text"]), None))
    assert "k8s-node2" in ask["text"]
    bot.click("registry_approve", ask, user=APPROVER2)
    world.slack.wait_for(
        lambda s: any("containerd restarted, node Ready" in m["text"] for m in world.thread(root)), timeout=40
    )
    created = [r for r in world.kube.requests if r.verb == "create" and r.resource == "pods" and not r.subresource]
    assert created and created[0].namespace == "registry-bot"
    assert not world.kube.get("Node", None, "k8s-node2")["spec"].get("unschedulable")


def test_a_second_request_for_the_same_phase_reuses_the_pending_one(world):
    world.add_ci()
    bot = world.bot(TWO_PERSON_RULE="true")
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    world.slack.wait_for(lambda s: any("asks to run" in m["text"] for m in world.thread(root)))
    bot.click("registry_rebuild", world.current(root), user=APPROVER2)
    world.slack.wait_for(lambda s: any("waits for a second approver" in e["text"] for e in s.ephemeral))
    assert sum("asks to run" in m["text"] for m in world.thread(root)) == 1
