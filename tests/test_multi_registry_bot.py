"""The bot serving a Forgejo registry and GHCR at once: an alert's `instance` picks the registry (an unknown one
is logged and ignored), incidents are keyed by registry and image and their roots name the registry, and the
bot's own probe exports its gauges once per registry with that registry's `instance`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import CHANNEL, BotProcess, alert_payload, message_text, roots
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.ghcr import ChallengeAuth, GhcrStandIn
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn

PAT = "ghcr-pat-s3cret"


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn(channels={CHANNEL: "alerts"}, users={"U0VIEWER": "viewer"}) as stand_in:
        yield stand_in


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[tuple[ForgejoStandIn, GhcrStandIn, dict[str, str]]]:
    with (
        Registry() as forgejo_store,
        Registry() as ghcr_store,
        ForgejoStandIn(forgejo_store) as forgejo,
        GhcrStandIn(ghcr_store) as ghcr,
    ):
        pusher = ImagePusher(forgejo_store.url)
        # The same name on both registries: two images, two incidents.
        image = pusher.push_image("viktorbarzin/app", "latest")
        forgejo_store.break_manifest_link("viktorbarzin/app", image.children["linux/amd64"])
        pusher.close()
        pusher = ImagePusher(ghcr.url, auth=ChallengeAuth("viktorbarzin", PAT))  # type: ignore[arg-type]
        image = pusher.push_image("viktorbarzin/app", "latest")
        ghcr_store.break_manifest_link("viktorbarzin/app", image.children["linux/arm64"])
        pusher.close()
        path = tmp_path / "bot.yaml"
        path.write_text(
            "registries:\n"
            f"  - {{url: {forgejo.url}, kind: forgejo, username: cluster-puller, password_env: FORGEJO_PULL,"
            " instance: forgejo}\n"
            f"  - {{url: {ghcr.url}, kind: ghcr, owner: viktorbarzin, username: viktorbarzin,"
            f" password_env: GHCR_PAT, github_api_url: {ghcr.api_url}}}\n"
        )
        env = {"REGISTRY_BOT_CONFIG": str(path), "FORGEJO_PULL": "pull-token-s3cret", "GHCR_PAT": PAT}
        yield forgejo, ghcr, env


def root_on(slack: SlackStandIn, host: str) -> dict | None:
    return next((m for m in roots(slack) if f"viktorbarzin/app:latest on {host}" in (m.get("text") or "")), None)


def test_alerts_are_routed_by_instance_and_incidents_keyed_by_registry(slack, registries):
    forgejo, ghcr, env = registries
    with BotProcess(slack, env) as bot:
        assert bot.alert(alert_payload(instance="elsewhere.example:443")).status_code == 200
        assert bot.alert(alert_payload(instance=ghcr.host)).status_code == 200
        root = slack.wait_for(lambda s: root_on(s, ghcr.host), timeout=20)
        assert f"*Registry*\\n{ghcr.host}" in message_text(root)
        time.sleep(1)
        assert root_on(slack, forgejo.host) is None  # the ghcr alert scanned ghcr only
        bot.alert(alert_payload(instance="forgejo"))
        slack.wait_for(lambda s: root_on(s, forgejo.host), timeout=20)
        assert len(roots(slack)) == 2  # one image name, two registries: two incidents
        assert any("elsewhere.example:443" in r.get("message", "") for r in bot.log_records())


def test_the_probe_exports_its_gauges_once_per_registry(slack, registries):
    forgejo, ghcr, env = registries
    with BotProcess(slack, {**env, "SCAN_INTERVAL": "3600"}) as bot:
        slack.wait_for(lambda s: root_on(s, ghcr.host) and root_on(s, forgejo.host), timeout=30)
        metrics = bot.http.get("/metrics").text
    for instance in ("forgejo", ghcr.host):
        assert f'registry_manifest_integrity_failures{{instance="{instance}"}} 1.0' in metrics
        assert f'registry_manifest_integrity_tags_checked{{instance="{instance}"}} 1.0' in metrics
        assert f'registry_manifest_integrity_catalog_accessible{{instance="{instance}"}} 1.0' in metrics
        assert f'registry_bot_scan_requests{{instance="{instance}",kind="scan"}}' in metrics  # its load, apart


def test_registry_scan_shows_one_message_that_ends_with_each_registrys_summary(slack, registries):
    forgejo, ghcr, env = registries
    with BotProcess(slack, env) as bot:
        assert bot.command("scan").status_code == 200
        message = slack.wait_for(
            lambda s: next((m for m in roots(s) if m["text"].count("Scan of") == 2), None), timeout=30
        )
        first = message["edits"][0]["text"] if message["edits"] else message["text"]
        assert first.startswith(f"🔎 Scanning {forgejo.host}, {ghcr.host}")
        assert f"🔴 Scan of {forgejo.host}: 1 tags" in message["text"]
        assert f"🔴 Scan of {ghcr.host}: 1 tags" in message["text"]
        sections = [b for b in message["blocks"] if b["type"] == "section"]
        assert len(sections) == 2
