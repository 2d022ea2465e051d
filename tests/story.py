"""The whole runbook, end to end, on real peers: the story the e2e test asserts and `make demo` prints.

A real registry holds an orphaned index; the probe's metric goes to a real Pushgateway; a real Prometheus
fires RegistryManifestIntegrityFailure; a real Alertmanager delivers its webhook to the bot; the incident
appears in Slack (the stand-in); someone diagnoses; an approver rebuilds (the Woodpecker stand-in pushes a
fresh image into the real registry); an approver restarts the consumers (the Kubernetes stand-in); the
probe's next run reports 0; the verification, its delay shortened, resolves the incident.

Run it: `make demo` (or `.venv/bin/python -m tests.story`).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import APPROVER, CHANNEL, VIEWER, BotProcess, message_text, roots
from tests.peers.forgejo import ForgejoStandIn, ForgejoUser
from tests.peers.kube_api import KubeStandIn
from tests.peers.prometheus import PROBE_JOB, Alertmanager, Prometheus, Pushgateway, probe_metrics
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.woodpecker import WoodpeckerStandIn

IMAGE = "viktor/payslip-ingest"
_CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), (?:inet_pton\(AF_INET6, )?"
    r'(?:sin_addr=inet_addr\()?"([^"]+)"'
)


@dataclass
class Story:
    transcript: str = ""
    root: dict[str, Any] = field(default_factory=dict)
    thread: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)
    allowed: set[tuple[str, int]] = field(default_factory=set)
    chapters: list[str] = field(default_factory=list)


def run_story(say: Callable[[str], None] = lambda _text: None, trace_connections: bool = True) -> Story:
    story = Story()
    workdir = Path(tempfile.mkdtemp(prefix="story-"))

    def chapter(text: str) -> None:
        story.chapters.append(text)
        say(f"\n== {text}")

    users = {
        "cluster-puller": ForgejoUser("pull-token-s3cret", {"read:package"}),
        "viktor": ForgejoUser("cleanup-token-s3cret", {"read:package", "write:package"}),
    }
    slack_users = {APPROVER: "viktor", VIEWER: "sre-on-call"}
    strace = shutil.which("strace") if trace_connections else None
    trace_file = workdir / "connect.trace"
    with (
        Registry() as registry,
        ForgejoStandIn(registry, users) as forgejo,
        WoodpeckerStandIn(registry_url=registry.url) as woodpecker,
        KubeStandIn() as kube,
        SlackStandIn(channels={CHANNEL: "alerts"}, users=slack_users) as slack,
        Pushgateway() as pushgateway,
    ):
        chapter("A registry with an orphaned index: viktor/payslip-ingest:latest lost its linux/amd64 child")
        image = ImagePusher(registry.url).push_image(IMAGE, "latest", attestation=True)
        registry.break_manifest_link(IMAGE, image.children["linux/amd64"])
        host = forgejo.host
        kube.add_namespace("registry-bot")
        kube.add_node("k8s-node1")
        kube.add_node("k8s-node2")
        kube.add_deployment("payroll", "payslip-ingest", f"{host}/{image.reference}", replicas=2)
        kube.add_pod(
            "payroll",
            "payslip-ingest-7d9f-x2k4p",
            f"{host}/{image.reference}",
            node="k8s-node2",
            waiting_reason="ImagePullBackOff",
            owner=("Deployment", "payslip-ingest"),
        )
        kube.add_job_pod(
            "monitoring",
            "forgejo-integrity-probe-29410560",
            log=f"FAIL: {IMAGE}:latest index child {image.children['linux/amd64']} HTTP 404\n1 failures\n",
        )
        woodpecker.add_repo("viktor", "payslip-ingest", image=(IMAGE, "latest"), branches=("master",), step_seconds=0.4)
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")

        bot = BotProcess(
            slack,
            {
                "REGISTRY_URL": forgejo.url,
                "REGISTRY_USERNAME": "cluster-puller",
                "REGISTRY_PASSWORD": "pull-token-s3cret",
                "REGISTRY_INSTANCE": host,
                "FORGEJO_CLEANUP_TOKEN": "cleanup-token-s3cret",
                "WOODPECKER_URL": woodpecker.url,
                "WOODPECKER_TOKEN": "wp-token",
                "KUBE_ENABLED": "true",
                "KUBECONFIG": str(kubeconfig),
                "POD_NAMESPACE": "registry-bot",
                "CI_POLL_INTERVAL": "0.3",
                "VERIFY_DELAY": "4",
                "LEADER_ELECTION": "database",
            },
            workdir=workdir,
            wrapper=[strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace_file)] if strace else None,
        )
        with (
            Alertmanager(f"{bot.url}/alertmanager", "alertmanager-t0ken") as alertmanager,
            Prometheus(pushgateway, alertmanager, rule_for="2s") as prometheus,
        ):
            bot.env["PROMETHEUS_URL"] = prometheus.url
            story.allowed = {("127.0.0.1", p.port) for p in (registry, forgejo, woodpecker, kube, slack)} | {
                ("127.0.0.1", int(prometheus.url.rsplit(":", 1)[1]))
            }
            with bot:
                chapter("The probe pushes registry_manifest_integrity_failures=1; Prometheus fires the alert")
                pushgateway.push(PROBE_JOB, probe_metrics(host, failures=1, indexes=1), {"instance": host})
                prometheus.wait_for_alert("RegistryManifestIntegrityFailure", timeout=60)

                chapter("Alertmanager's webhook reaches the bot: it reads the probe's log, confirms, posts")
                root = slack.wait_for(lambda s: next((m for m in roots(s) if IMAGE in m["text"]), None), timeout=60)
                current = lambda: slack.message(CHANNEL, root["ts"])  # noqa: E731
                slack.wait_for(lambda s: "Diagnosed" in message_text(current()), timeout=30)

                chapter(f"<@{VIEWER}> clicks Diagnose")
                bot.click("registry_diagnose", current(), user=VIEWER)
                slack.wait_for(lambda s: _count(slack, root, "Confirmed broken") == 2, timeout=30)

                chapter(f"<@{APPROVER}> approves Rebuild: delete the broken version, Woodpecker rebuilds it")
                bot.click("registry_rebuild", current(), user=APPROVER)
                slack.wait_for(lambda s: "Rebuilt" in message_text(current()), timeout=60)

                chapter(f"<@{APPROVER}> approves Restart consumers")
                bot.click("registry_restart", current(), user=APPROVER)
                slack.wait_for(lambda s: "Verification at" in _thread_text(slack, root), timeout=60)

                chapter("The probe's next run reports 0 failures")
                pushgateway.push(PROBE_JOB, probe_metrics(host, failures=0, indexes=1), {"instance": host})
                prometheus.wait_for_query(f'registry_manifest_integrity_failures{{instance="{host}"}} == 0', timeout=30)

                chapter("The scheduled verification runs and resolves the incident")
                slack.wait_for(lambda s: "Resolved" in message_text(current()), timeout=60)
                slack.wait_for(lambda s: "resolved for" in _thread_text(slack, root), timeout=60)

                story.root = current()
                story.thread = slack.thread(CHANNEL, root["ts"])
                story.transcript = slack.transcript(CHANNEL)
                story.audit = _audit(bot)
            if strace and trace_file.exists():
                for line in trace_file.read_text().splitlines():
                    match = _CONNECT.search(line)
                    if match:
                        story.connections.add((match[2], int(match[1])))
    say("\n== What the channel saw\n")
    say(story.transcript)
    say("\n== The audit trail (registry-bot audit)\n")
    for row in story.audit:
        say(
            f"{row['at']}  {row['user'] or 'bot':<12} #{row['incident'] or '-':<3} {row['phase'] or '-':<9} "
            f"{row['action']:<10} {row['outcome']:<10} {row['detail'][:70]}"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return story


def _thread_text(slack: SlackStandIn, root: dict[str, Any]) -> str:
    return "\n".join(m["text"] for m in slack.thread(CHANNEL, root["ts"]))


def _count(slack: SlackStandIn, root: dict[str, Any], text: str) -> int:
    return sum(1 for m in slack.thread(CHANNEL, root["ts"]) if text in m["text"])


def _audit(bot: BotProcess) -> list[dict[str, Any]]:
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "--json"], env=bot.env, capture_output=True, text=True, timeout=30
    )
    return list(json.loads(out.stdout))


if __name__ == "__main__":
    started = time.monotonic()
    run_story(print, trace_connections=False)
    print(f"\n(the whole story took {time.monotonic() - started:.0f} s on this machine)")
