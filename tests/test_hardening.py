"""Hardening of the engine and the Slack layer (issue 12): nobody can starve the approvers, outside text
pings no one, approvers are asked afresh, a build log's secrets stay home, a stalled database stops
nothing but readiness, and a tag with a digest is checked as what it is."""

from __future__ import annotations

import statistics
import time

from tests.harness import APPROVER, APPROVER2, CHANNEL, VIEWER, BotProcess, alert_payload, message_text, roots
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.stall_proxy import StallProxy
from tests.test_incident_flow import audit, open_incident

PINGS = ("<!channel>", "<!here>", "<@U0VIEWER>", "<https://evil.example|re-authenticate here>")


def ephemeral(world, user: str, fragment: str, timeout: float = 20) -> dict:
    return world.slack.wait_for(
        lambda s: next((e for e in s.ephemeral if e["user"] == user and fragment in e["text"]), None), timeout=timeout
    )


def listings(world) -> list[tuple[str, str, str]]:
    """The registry's catalog as the bot listed it (its unauthenticated first try, answered 401, aside)."""
    return [r for r in world.forgejo.requests if r[1] == "/v2/_catalog" and r[2]]


def everything_posted(slack: SlackStandIn) -> str:
    texts = [m.get("text") or "" for m in slack.messages(CHANNEL)]
    for message in slack.messages(CHANNEL):
        texts += [message_text(m) for m in slack.thread(CHANNEL, message["ts"])]
    texts += [e["text"] for e in slack.ephemeral]
    return "\n".join(texts)


def test_an_approver_removed_from_the_group_cannot_approve_a_request_they_made(world):
    world.add_ci(step_seconds=0.1)
    world.slack.set_usergroup_users("S0APPROVERS", [APPROVER, APPROVER2])
    bot = world.bot(TWO_PERSON_RULE="true", APPROVER_GROUP="S0APPROVERS", APPROVERS="")
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    ask = world.slack.wait_for(lambda s: next((m for m in world.thread(root) if "asks to run" in m["text"]), None))
    world.slack.set_usergroup_users("S0APPROVERS", [APPROVER2])  # the requester leaves the group
    bot.click("registry_approve", ask, user=APPROVER2)
    ephemeral(world, APPROVER2, "no longer an approver")
    assert world.woodpecker.requests_to("POST", r"/pipelines$") == []
    assert ("refuse", "refused", APPROVER2) in [(e["action"], e["outcome"], e["user"]) for e in audit(bot)]


def test_a_build_log_is_read_by_its_tail_its_tokens_masked_and_nothing_in_it_pings(world):
    token = "ghp_" + "A1b2C3d4" * 5
    log = "\n".join([*(f"step {i}: " + "x" * 3000 for i in range(20)), f"push failed: token {token}", *PINGS])
    world.add_ci(fail_step="build-and-push", fail_log=log)
    bot = world.bot()
    bot.start()
    _image, root = open_incident(world, bot)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    report = world.slack.wait_for(
        lambda s: next((m for m in world.thread(root) if "Rebuild: The pipeline ended" in m["text"]), None),
        timeout=40,
    )
    shown = message_text(report)
    assert "push failed" in shown, "the failing line at the log's end was dropped"
    assert token not in everything_posted(world.slack) and "**********" in shown
    for ping in PINGS:
        assert ping not in everything_posted(world.slack), ping
    assert "&lt;!channel&gt;" in shown


def test_alert_text_and_registry_text_reach_the_channel_as_text(world):
    bot = world.bot()
    bot.start()
    payload = alert_payload("RegistryIntegrityProbeStale", instance=world.forgejo.host)
    payload["alerts"][0]["annotations"]["summary"] = "probe stale " + " ".join(PINGS)
    assert bot.alert(payload).status_code == 200
    posted = world.slack.wait_for(lambda s: next((m for m in roots(s) if "probe stale" in m["text"]), None))
    for ping in PINGS:
        assert ping not in everything_posted(world.slack)
    assert "&lt;!channel&gt;" in message_text(posted)


def test_one_user_has_a_bounded_number_of_checks_and_scans_share_one_walk(world):
    pusher = ImagePusher(world.registry.url)
    for i in range(3):
        pusher.push_image(f"viktor/app{i}", "v1")
    pusher.close()
    world.forgejo.tamper("GET", r"/tags/list$", delay=1.0)  # a scan that takes a moment
    bot = world.bot(CHECKS_PER_USER="1", SCAN_INTERVAL="0")
    bot.start()
    first = bot.command("scan", user=VIEWER).json()
    second = bot.command("scan", user=VIEWER).json()
    assert "Scanning" in first["text"] and "CHECKS_PER_USER" in second["text"]
    bot.command("scan", user=APPROVER)  # another user's scan while the first runs: it joins it
    world.slack.wait_for(lambda s: len([m for m in roots(s) if "Scan of" in m["text"]]) == 2, timeout=30)
    assert len(listings(world)) == 1


def test_one_alertmanager_delivery_of_many_alerts_is_one_detection(world):
    world.broken_image()
    bot = world.bot(SCAN_INTERVAL="0")
    bot.start()
    payload = alert_payload(instance=world.forgejo.host)
    payload["alerts"] = [dict(payload["alerts"][0], fingerprint=f"{i:016x}") for i in range(200)]
    assert bot.alert(payload).status_code == 200
    world.root("viktor/payslip-ingest")
    time.sleep(2)
    assert len(listings(world)) == 1


def test_a_tag_with_a_digest_is_checked_as_both_or_refused_when_the_tag_moved(world):
    pusher = ImagePusher(world.registry.url)
    old = pusher.push_image("viktor/api", "v1")
    new = pusher.push_image("viktor/api", "v1", salt="rebuilt")  # the tag moves on
    pusher.close()
    bot = world.bot()
    bot.start()
    bot.command(f"check viktor/api:v1@{new.digest}", user=VIEWER)
    verdict = world.slack.wait_for(lambda s: next((m for m in roots(s) if "INTACT" in m["text"]), None))
    assert f"viktor/api:v1@{new.digest}" in verdict["text"]
    bot.command(f"check viktor/api:v1@{old.digest}", user=VIEWER)
    ephemeral(world, VIEWER, "check the tag or the digest alone")


def test_a_stalled_postgresql_turns_readyz_503_and_never_freezes_the_event_loop(postgres):
    url = postgres.create_database("stalled")
    with (
        StallProxy("127.0.0.1", postgres.port) as proxy,
        Registry() as registry,
        SlackStandIn(channels={CHANNEL: "alerts"}) as slack,
    ):
        env = {
            "REGISTRY_URL": registry.url,
            "REGISTRY_KIND": "distribution",
            "DATABASE_URL": url.replace(f":{postgres.port}/", f":{proxy.port}/"),
            "HEARTBEAT_INTERVAL": "0.5",
            "LEADER_LEASE_SECONDS": "3",
            "LEADER_ELECTION": "database",
        }
        with BotProcess(slack, env) as bot:
            assert bot.http.get("/readyz").status_code == 200
            proxy.stalled.set()
            time.sleep(2)  # heartbeats, maintenance, the election and the scheduler all reach the database
            started = time.monotonic()
            ready = bot.http.get("/readyz", timeout=10)
            assert ready.status_code == 503 and time.monotonic() - started < 5
            timings = []
            for _ in range(40):
                t0 = time.monotonic()
                assert bot.http.get("/healthz").status_code == 200
                timings.append(time.monotonic() - t0)
                time.sleep(0.1)
            assert statistics.median(timings) < 0.05 and max(timings) < 1.0, timings
            proxy.stalled.clear()
            deadline = time.monotonic() + 30
            while bot.http.get("/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "readiness did not come back with the database"
                time.sleep(0.5)


def test_info_alerts_post_once_per_episode_summarised_and_repeats_edit_that_message(world):
    bot = world.bot()
    bot.start()
    payload = alert_payload("RegistryIntegrityProbeStale", instance=world.forgejo.host)
    payload["alerts"] = [dict(payload["alerts"][0], fingerprint=f"{i:016x}") for i in range(300)]
    assert bot.alert(payload).status_code == 200
    posted = world.slack.wait_for(
        lambda s: next((m for m in roots(s) if "RegistryIntegrityProbeStale" in m["text"]), None)
    )
    assert "300 RegistryIntegrityProbeStale alerts" in posted["text"]
    assert bot.alert(payload).status_code == 200  # Alertmanager's repeat notification
    world.slack.wait_for(lambda s: "notified again" in message_text(world.current(posted)))
    ended = {**payload, "status": "resolved", "alerts": [dict(a, status="resolved") for a in payload["alerts"]]}
    assert bot.alert(ended).status_code == 200
    world.slack.wait_for(lambda s: "ended" in message_text(world.current(posted)))
    assert len([m for m in roots(world.slack) if "RegistryIntegrityProbeStale" in m["text"]]) == 1
    assert bot.alert(payload).status_code == 200  # a new episode: a new message
    world.slack.wait_for(
        lambda s: len([m for m in roots(s) if "RegistryIntegrityProbeStale" in m["text"]]) == 2, timeout=20
    )


def test_viewers_scans_never_hold_up_an_approvers_rebuild(world):
    world.add_ci(step_seconds=0.1)
    bot = world.bot()
    bot.start()
    _image, root = open_incident(world, bot)
    assert bot.alert(alert_payload("RegistryCatalogInaccessible", instance=world.forgejo.host)).status_code == 200
    offer = world.slack.wait_for(lambda s: next((m for m in roots(s) if "Check now" in str(m.get("blocks"))), None))
    world.forgejo.tamper("GET", r"/tags/list$", delay=6.0)  # every scan now takes a while
    for viewer in ("U0V1", "U0V2", "U0V3", "U0V4", "U0V5"):
        bot.click("registry_check_now", offer, user=viewer)
    time.sleep(0.5)
    bot.click("registry_rebuild", world.current(root), user=APPROVER)
    world.slack.wait_for(lambda s: any("Rebuild (attempt 1)" in m["text"] for m in world.thread(root)), timeout=5)
    assert not [m for m in roots(world.slack) if "Scan of" in m["text"]], "the rebuild waited for the scans"


def test_a_kubernetes_denial_full_of_pings_reaches_the_thread_as_text(world):
    bot = world.bot()
    bot.start()
    _image, root = open_incident(world, bot)
    denial = "admission webhook denied the request: " + " ".join(PINGS)
    world.kube.fault("PATCH", r"/deployments/payslip-ingest$", 403, times=None, reason="Forbidden", message=denial)
    bot.click("registry_restart", world.current(root), user=APPROVER)
    world.slack.wait_for(lambda s: "admission webhook denied" in "\n".join(m["text"] for m in world.thread(root)), 30)
    for ping in PINGS:
        assert ping not in everything_posted(world.slack), ping
