"""A whole small world for the bot: a real registry behind the Forgejo stand-in, Woodpecker, Kubernetes and
Slack stand-ins, and the bot process wired to all of them."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.incidents.models import Incident
from tests.harness import APPROVER, APPROVER2, CHANNEL, VIEWER, BotProcess, roots
from tests.peers.forgejo import ForgejoStandIn, ForgejoUser
from tests.peers.kube_api import KubeStandIn
from tests.peers.kube_schema import answer_errors
from tests.peers.registry import ImagePusher, PushedImage, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.woodpecker import WoodpeckerStandIn
from tests.peers.woodpecker_protocol import protocol_errors

IMAGE = "viktor/payslip-ingest"


@dataclass
class World:
    registry: Registry
    forgejo: ForgejoStandIn
    woodpecker: WoodpeckerStandIn
    kube: KubeStandIn
    slack: SlackStandIn
    workdir: Path
    kubeconfig: Path
    bots: list[BotProcess] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "REGISTRY_URL": self.forgejo.url,
            "REGISTRY_USERNAME": "cluster-puller",
            "REGISTRY_PASSWORD": "pull-token-s3cret",
            "FORGEJO_CLEANUP_TOKEN": "cleanup-token-s3cret",
            "WOODPECKER_URL": self.woodpecker.url,
            "WOODPECKER_TOKEN": "wp-token",
            "KUBE_ENABLED": "true",
            "KUBECONFIG": str(self.kubeconfig),
            "CI_POLL_INTERVAL": "0.2",
            "ROLLOUT_TIMEOUT": "20",
            "VERIFY_DELAY": "2",
            "LEADER_LEASE_SECONDS": "3",
            "POD_NAMESPACE": "registry-bot",
            **extra,
        }

    def bot(self, **extra: str) -> BotProcess:
        process = BotProcess(self.slack, self.env(**extra), workdir=self.workdir)
        self.bots.append(process)
        return process

    def broken_image(self, name: str = IMAGE, tag: str = "latest") -> PushedImage:
        pusher = ImagePusher(self.registry.url)
        image = pusher.push_image(name, tag)
        self.registry.break_manifest_link(name, image.children["linux/amd64"])
        pusher.close()
        return image

    def seed_consumers(self, image: PushedImage) -> None:
        ref = f"{self.forgejo.host}/{image.reference}"
        self.kube.add_node("k8s-node1")
        self.kube.add_deployment("payroll", "payslip-ingest", ref, replicas=2)

    def add_ci(self, name: str = IMAGE, tag: str = "latest", **kwargs: Any) -> int:
        owner, repo = name.split("/", 1)
        kwargs.setdefault("step_seconds", 0.2)
        return self.woodpecker.add_repo(owner, repo, image=(name, tag), branches=("master",), **kwargs)

    def root(self, image: str, timeout: float = 20) -> dict[str, Any]:
        return self.slack.wait_for(
            lambda s: next((m for m in roots(s) if image in (m.get("text") or "")), None), timeout=timeout
        )

    def current(self, root: dict[str, Any]) -> dict[str, Any]:
        return self.slack.message(CHANNEL, root["ts"])

    def thread(self, root: dict[str, Any]) -> list[dict[str, Any]]:
        return self.slack.thread(CHANNEL, root["ts"])


@contextlib.contextmanager
def make_world() -> Iterator[World]:
    workdir = Path(tempfile.mkdtemp(prefix="world-"))
    users = {
        "cluster-puller": ForgejoUser("pull-token-s3cret", {"read:package"}),
        "viktor": ForgejoUser("cleanup-token-s3cret", {"read:package", "write:package"}),
    }
    slack_users = {APPROVER: "approver", APPROVER2: "approver2", VIEWER: "viewer"}
    with (
        Registry() as registry,
        ForgejoStandIn(registry, users) as forgejo,
        WoodpeckerStandIn(registry_url=registry.url) as woodpecker,
        KubeStandIn() as kube,
        SlackStandIn(channels={CHANNEL: "alerts"}, users=slack_users) as slack,
    ):
        kube.add_namespace("registry-bot")
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        world = World(registry, forgejo, woodpecker, kube, slack, workdir, kubeconfig)
        try:
            yield world
        finally:
            for process in world.bots:
                process.stop()
        # Whatever the Kubernetes stand-in answered the bot, a Kubernetes 1.34 API server could have answered;
        # whatever Woodpecker's answered fits the protocol the bot relies on.
        assert answer_errors(kube.answers) == []
        assert protocol_errors(woodpecker) == []


def unsaved_incident(registry_host: str, image: str, digest: str | None = None, **fields: Any) -> Incident:
    """An Incident as the store would hand a phase, without a database (column defaults apply only on insert)."""
    values: dict[str, Any] = {
        "id": 1,
        "registry_host": registry_host,
        "image": image,
        "digest": digest,
        "state": "diagnosed",
        "source": "alert",
        "problems": "[]",
        "clicked": "{}",
        "consumers": "[]",
        "status_note": "",
    }
    return Incident(**{**values, **fields})
