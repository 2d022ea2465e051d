"""Verification's metric part on a real Prometheus fed by a real Pushgateway, and the bot's own probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import Settings
from bot.incidents.models import Incident
from bot.runbook.base import PhaseContext, RecordingProgress
from bot.runbook.verify import metric_part
from bot.secrets import SecretResolver
from tests.harness import BotProcess, roots
from tests.peers.prometheus import PROBE_JOB, Prometheus, Pushgateway, probe_metrics
from tests.peers.registry import ImagePusher, Registry, free_port
from tests.peers.slack_api import SlackStandIn

INSTANCE = "forgejo.viktorbarzin.me"


@pytest.fixture(scope="module")
def prometheus() -> Iterator[tuple[Pushgateway, Prometheus]]:
    with Pushgateway() as pushgateway, Prometheus(pushgateway) as server:
        yield pushgateway, server


def metric(prometheus_url: str, fixed_at: datetime, instance: str = INSTANCE):
    settings = Settings(registry_url=f"https://{INSTANCE}", prometheus_url=prometheus_url, registry_instance=instance)
    incident = Incident(id=1, registry_host=INSTANCE, image="viktor/app:latest", fixed_at=fixed_at)
    progress = RecordingProgress()
    part = asyncio.run(metric_part(PhaseContext(settings, incident, SecretResolver(settings)), progress))
    return part, progress


def push_and_wait(pushgateway: Pushgateway, server: Prometheus, failures: int, last_run: float) -> None:
    pushgateway.push(PROBE_JOB, probe_metrics(INSTANCE, failures, last_run=last_run), {"instance": INSTANCE})
    server.wait_for_query(
        f'registry_manifest_integrity_last_run_timestamp{{instance="{INSTANCE}"}} == {last_run}', timeout=20
    )


def test_zero_failures_from_a_run_newer_than_the_fix_pass(prometheus):
    pushgateway, server = prometheus
    fixed = datetime.now(UTC) - timedelta(minutes=1)
    push_and_wait(pushgateway, server, 0, time.time())
    part, _ = metric(server.url, fixed)
    assert part.outcome == "pass"


def test_failures_without_a_probe_log_cannot_say_whether_this_image_is_among_them(prometheus):
    pushgateway, server = prometheus
    push_and_wait(pushgateway, server, 3, time.time())
    part, _ = metric(server.url, datetime.now(UTC) - timedelta(minutes=1))
    assert part.outcome == "unknown" and "is 3" in part.text and "not known" in part.text


@pytest.mark.parametrize("named, outcome", [("viktor/app:latest", "fail"), ("viktor/other:v1", "pass")])
def test_failures_count_against_this_image_only_when_the_probe_log_names_it(
    prometheus, tmp_path, monkeypatch, named, outcome
):
    from tests.peers.kube_api import KubeStandIn

    pushgateway, server = prometheus
    push_and_wait(pushgateway, server, 2, time.time())
    with KubeStandIn() as kube:
        kube.add_job_pod("monitoring", "forgejo-integrity-probe-1", log=f"FAIL: {named} index child x HTTP 404\n")
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        from bot.integrations.kube import Kube

        settings = Settings(registry_url=f"https://{INSTANCE}", prometheus_url=server.url, kube_enabled="true")
        incident = Incident(
            id=1, registry_host=INSTANCE, image="viktor/app:latest", fixed_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        ctx = PhaseContext(settings, incident, SecretResolver(settings), Kube(settings))
        part = asyncio.run(metric_part(ctx, RecordingProgress()))
    assert part.outcome == outcome


def test_a_probe_run_older_than_the_fix_cannot_confirm(prometheus):
    pushgateway, server = prometheus
    push_and_wait(pushgateway, server, 0, time.time() - 600)
    part, _ = metric(server.url, datetime.now(UTC) - timedelta(minutes=1))
    assert part.outcome == "unknown" and "has not run since the fix" in part.text


def test_an_absent_series_says_so(prometheus):
    _, server = prometheus
    part, _ = metric(server.url, datetime.now(UTC), instance="nowhere.example")
    assert part.outcome == "unknown" and "no series" in part.text


def test_prometheus_down_says_so():
    part, _ = metric(f"http://127.0.0.1:{free_port()}", datetime.now(UTC))
    assert part.outcome == "unknown" and "unreachable" in part.text


def test_no_prometheus_configured_says_so_rather_than_passing():
    part, _progress = metric("", datetime.now(UTC))
    assert part.outcome == "unknown" and "PROMETHEUS_URL is not set" in part.text


def test_the_bots_own_probe_exports_the_probe_metrics_and_opens_incidents():
    with Registry() as registry, SlackStandIn(channels={"C0ALERTS": "alerts"}) as slack:
        pusher = ImagePusher(registry.url)
        image = pusher.push_image("viktor/app", "latest")
        pusher.push_single("viktor/other", "v1")
        registry.break_layer_link("viktor/app", image.layers["linux/amd64"][0])
        env = {
            "REGISTRY_URL": registry.url,
            "REGISTRY_KIND": "distribution",
            "SCAN_INTERVAL": "1",
            "LEADER_ELECTION": "database",
            "REGISTRY_INSTANCE": INSTANCE,
        }
        with BotProcess(slack, env) as bot:
            slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/app:latest" in m["text"]), None), timeout=30)
            text = bot.http.get("/metrics").text
            assert f'registry_manifest_integrity_failures{{instance="{INSTANCE}"}} 1.0' in text
            assert f'registry_manifest_integrity_tags_checked{{instance="{INSTANCE}"}} 2.0' in text
            assert f'registry_manifest_integrity_catalog_accessible{{instance="{INSTANCE}"}} 1.0' in text
            assert "registry_manifest_integrity_last_run_timestamp" in text
            assert bot.http.get("/readyz").json()["role"] == "leader"
            time.sleep(2.5)  # more probe runs: the incident is touched, never posted twice
            assert len([m for m in roots(slack) if "viktor/app:latest" in m["text"]]) == 1


def test_leadership_by_kubernetes_lease(world):
    bot = world.bot(LEADER_ELECTION="lease", SCAN_INTERVAL="0")
    bot.start()
    deadline = time.time() + 15
    while time.time() < deadline and bot.http.get("/readyz").json()["role"] != "leader":
        time.sleep(0.2)
    assert bot.http.get("/readyz").json()["role"] == "leader"
    lease = world.kube.get("Lease", "registry-bot", "registry-bot-leader")
    assert lease["spec"]["holderIdentity"].startswith(bot.http.get("/readyz").json()["replica"][:10])
    second = world.bot(LEADER_ELECTION="lease", SCAN_INTERVAL="0")
    second.start()
    time.sleep(2)
    assert second.http.get("/readyz").json()["role"] == "standby"
    bot.stop()  # a clean stop releases the Lease: the standby takes over without waiting for expiry
    deadline = time.time() + 15
    while time.time() < deadline and second.http.get("/readyz").json()["role"] != "leader":
        time.sleep(0.2)
    assert second.http.get("/readyz").json()["role"] == "leader"
