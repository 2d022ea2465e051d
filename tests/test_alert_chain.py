"""The alert path on real peers: the cluster's rule fires on a pushed metric in Debian's Prometheus, Debian's
Alertmanager delivers its own webhook to the bot, and the bot posts to Slack; and, with a cluster, the bot
reads the probe's log to find which images broke."""

from __future__ import annotations

import pytest

from tests.harness import CHANNEL, BotProcess, alert_payload, message_text, roots
from tests.peers.prometheus import PROBE_JOB, Alertmanager, Prometheus, Pushgateway, probe_metrics
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn


def test_the_cluster_rule_fires_and_alertmanagers_own_webhook_reaches_the_bot(tmp_path):
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack:
        pusher = ImagePusher(registry.url)
        image = pusher.push_image("viktor/kms-website", "latest")
        registry.break_blob_file(image.children["linux/arm64"])
        bot = BotProcess(slack, {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution"})
        with (
            bot,
            Pushgateway() as pushgateway,
            Alertmanager(f"{bot.url}/alertmanager", "alertmanager-t0ken") as alertmanager,
            Prometheus(pushgateway, alertmanager, rule_for="2s") as prometheus,
        ):
            pushgateway.push(PROBE_JOB, probe_metrics(registry.host, failures=4), {"instance": registry.host})
            prometheus.wait_for_alert("RegistryManifestIntegrityFailure", timeout=60)
            root = slack.wait_for(
                lambda s: next((m for m in roots(s) if image.reference in m["text"]), None), timeout=60
            )
            assert "Alertmanager: RegistryManifestIntegrityFailure" in message_text(root)
            assert "linux/arm64" in message_text(root)
            pushgateway.push(PROBE_JOB, probe_metrics(registry.host, failures=0), {"instance": registry.host})
            slack.wait_for(lambda s: any("resolved" in m["text"] for m in s.thread(CHANNEL, root["ts"])), timeout=60)
            assert len(roots(slack)) == 1
            assert "Traceback" not in bot.logs()


def test_with_a_cluster_the_probe_log_names_the_images_and_each_is_confirmed(world):
    broken = world.broken_image("viktor/payslip-ingest", "latest")
    fine = ImagePusher(world.registry.url).push_single("viktor/website", "v3")  # the log is wrong about this one
    host = world.forgejo.host
    world.kube.add_node("k8s-node2")
    world.kube.add_deployment("payroll", "payslip-ingest", f"{host}/{broken.reference}")
    world.kube.add_pod(
        "payroll",
        "payslip-ingest-abc",
        f"{host}/{broken.reference}",
        node="k8s-node2",
        waiting_reason="ImagePullBackOff",
    )
    log = (
        "checking 14 repositories\n"
        f"FAIL: viktor/payslip-ingest:latest index child {broken.children['linux/amd64']} HTTP 404\n"
        f"FAIL: {fine.reference} HTTP 500\n"
        "done: 2 failures\n"
    )
    world.kube.add_job_pod("monitoring", "forgejo-integrity-probe-29410560", log=log)
    bot = world.bot()
    bot.start()
    assert bot.alert(alert_payload(instance=host)).status_code == 200
    root = world.root(broken.reference)
    thread = world.slack.wait_for(
        lambda s: "\n".join(m["text"] for m in world.thread(root)) if len(world.thread(root)) >= 2 else None,
        timeout=20,
    )
    assert "FAIL: viktor/payslip-ingest:latest index child" in thread
    assert "deployment/payslip-ingest in payroll" in thread
    assert "ImagePullBackOff" in thread and "k8s-node2" in thread
    assert [m for m in roots(world.slack) if "viktor/website" in m["text"]] == []  # confirmed intact: no incident


@pytest.mark.parametrize("alertname", ["RegistryCatalogInaccessible"])
def test_an_unreachable_cluster_falls_back_to_the_scan(world, alertname):
    broken = world.broken_image("viktor/api", "v1")
    world.kube.fault(None, r"/pods", 500, times=None)
    bot = world.bot()
    bot.start()
    bot.alert(alert_payload(instance=world.forgejo.host))
    world.root(broken.reference)
