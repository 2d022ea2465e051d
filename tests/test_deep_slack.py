"""Content verification in Slack (issue 13): `/registry check --deep` with a message that shows its progress,
Diagnose hashing every layer when the image is small enough, the leader's deep scan, and a lost
attestation said to leave pulls working."""

from __future__ import annotations

import pytest

from tests.deep_images import Pusher, flip_middle_byte
from tests.harness import CHANNEL, VIEWER, BotProcess, message_text, roots
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn


@pytest.fixture()
def peers():
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack:
        yield registry, slack


def bot_for(registry: Registry, slack: SlackStandIn, **extra: str) -> BotProcess:
    return BotProcess(slack, {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution", **extra})


def thread_text(slack: SlackStandIn, root: dict) -> str:
    return "\n".join(message_text(m) for m in slack.thread(CHANNEL, root["ts"]))


def test_a_deep_check_in_slack_shows_its_progress_and_hashes_every_layer(peers):
    registry, slack = peers
    pusher = Pusher(registry.url)
    layer = pusher.random_blob("viktor/big", 24 * 2**20)
    pusher.image("viktor/big", "v1", [layer])
    pusher.close()
    with bot_for(registry, slack, DEEP_RATE_LIMIT=str(4 * 2**20)) as bot:  # 4 MiB/s: about 6 s
        assert "hashing every layer" in bot.command("check --deep viktor/big:v1", user=VIEWER).json()["text"]
        live = slack.wait_for(lambda s: next((m for m in roots(s) if "Deep check of" in message_text(m)), None))
        slack.wait_for(lambda s: "hashed in" in message_text(s.message(CHANNEL, live["ts"])), timeout=60)
        verdict = slack.wait_for(lambda s: next((m for m in roots(s) if "INTACT" in m["text"]), None), timeout=30)
    assert "24.0 MiB of layers and configs hashed" in verdict["text"]
    edits = [c.params.get("text", "") for c in slack.calls_to("chat.update") if c.params.get("ts") == live["ts"]]
    assert any("/s" in text and "hashed in" not in text for text in edits), "no progress was shown before the end"


def test_diagnose_hashes_every_layer_of_a_small_image_and_finds_rotten_bytes(peers):
    registry, slack = peers
    pusher = ImagePusher(registry.url)
    image = pusher.push_image("viktor/rot", "v1")
    pusher.close()
    flip_middle_byte(registry, image.layers["linux/amd64"][0])  # bytes rot: a plain check cannot see it
    registry.break_layer_link("viktor/rot", image.layers["linux/arm64"][0])  # and a layer is gone: an incident
    with bot_for(registry, slack) as bot:
        bot.command("check viktor/rot:v1", user=VIEWER)
        root = slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/rot" in m["text"]), None), timeout=30)
        slack.wait_for(lambda s: "Deep check: stored bytes do not match" in thread_text(s, root), timeout=30)
        slack.wait_for(lambda s: "digest_mismatch" in message_text(s.message(CHANNEL, root["ts"])), timeout=30)


def test_diagnose_says_when_an_image_is_too_large_to_hash(peers):
    registry, slack = peers
    pusher = ImagePusher(registry.url)
    image = pusher.push_image("viktor/large", "v1")
    pusher.close()
    registry.break_manifest_link("viktor/large", image.children["linux/amd64"])
    with bot_for(registry, slack, DEEP_MAX_BYTES="1") as bot:
        bot.command("check viktor/large:v1", user=VIEWER)
        root = slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/large" in m["text"]), None), timeout=30)
        slack.wait_for(lambda s: "over DEEP_MAX_BYTES" in thread_text(s, root), timeout=30)


def test_the_leaders_deep_scan_opens_an_incident_for_rotten_bytes(peers):
    registry, slack = peers
    pusher = ImagePusher(registry.url)
    pusher.push_single("viktor/fine", "v1")
    image = pusher.push_single("viktor/rotten", "v1")
    pusher.close()
    flip_middle_byte(registry, image.layers[next(iter(image.layers))][0])
    with bot_for(registry, slack, DEEP_SCAN_INTERVAL="2", LEADER_ELECTION="database", LEADER_LEASE_SECONDS="3"):
        root = slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/rotten" in m["text"]), None), timeout=60)
        assert "deep scan" in message_text(root)
        assert not [m for m in roots(slack) if "viktor/fine" in m["text"]]


def test_a_lost_attestation_is_an_incident_whose_root_says_pulls_still_work(peers):
    registry, slack = peers
    pusher = ImagePusher(registry.url)
    image = pusher.push_image("viktor/attested", "latest", attestation=True)
    pusher.close()
    registry.break_manifest_link("viktor/attested", image.children["attestation"])
    with bot_for(registry, slack) as bot:
        bot.command("check viktor/attested:latest", user=VIEWER)
        root = slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/attested" in m["text"]), None), timeout=30)
        assert "pulls still work; only the attestation is gone" in message_text(root)
