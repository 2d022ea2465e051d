"""Phases 2 and 3 (and the node fix) run for real against the registry and the CI and Kubernetes stand-ins.

The Woodpecker and GitHub stand-ins' builds push a fresh image into the test's real registry, so the
confirmation checks real bytes; Kubernetes is the stand-in, reached by the official client via KUBECONFIG.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import Secret, Settings
from bot.incidents.lifecycle import Outcome
from bot.incidents.models import Incident
from bot.integrations.kube import Kube
from bot.runbook.base import PhaseContext, PhaseResult, RecordingProgress
from bot.runbook.node import node
from bot.runbook.rebuild import rebuild
from bot.runbook.restart import restart
from bot.secrets import SecretResolver
from tests.peers.forgejo import ForgejoStandIn, ForgejoUser
from tests.peers.github_actions import GitHubActionsStandIn
from tests.peers.kube_api import KubeStandIn
from tests.peers.kube_schema import answer_errors
from tests.peers.registry import ImagePusher, PushedImage, Registry
from tests.peers.woodpecker import WoodpeckerStandIn
from tests.peers.woodpecker_protocol import protocol_errors
from tests.world import unsaved_incident


@dataclass
class Cluster:
    registry: Registry
    forgejo: ForgejoStandIn
    woodpecker: WoodpeckerStandIn
    github: GitHubActionsStandIn
    kube: KubeStandIn
    kubeconfig: Path

    @property
    def image_host(self) -> str:
        return self.forgejo.host

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "registry_url": self.forgejo.url,
            "registry_username": "cluster-puller",
            "registry_password": Secret("pull-token-s3cret"),
            "forgejo_cleanup_token": Secret("cleanup-token-s3cret"),
            "woodpecker_url": self.woodpecker.url,
            "woodpecker_token": Secret("wp-token"),
            "github_api_url": self.github.url,
            "github_token": Secret("gh-token"),
            "kube_enabled": "true",
            "ci_poll_interval": 0.1,
            "rollout_timeout": 5.0,
            "eviction_timeout": 3.0,
            "node_actions": True,
            "pod_namespace": "registry-bot",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with Registry() as registry:
        users = {
            "cluster-puller": ForgejoUser("pull-token-s3cret", {"read:package"}),
            "viktor": ForgejoUser("cleanup-token-s3cret", {"read:package", "write:package"}),
            "weak": ForgejoUser("weak-token", {"read:package"}),
        }
        with (
            ForgejoStandIn(registry, users) as forgejo,
            WoodpeckerStandIn(registry_url=registry.url) as woodpecker,
            GitHubActionsStandIn(registry_url=registry.url) as github,
            KubeStandIn() as kube,
        ):
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
            kube.add_namespace("registry-bot")
            yield Cluster(registry, forgejo, woodpecker, github, kube, kubeconfig)
            assert answer_errors(kube.answers) == []  # the stand-in answered only what Kubernetes 1.34 could
            assert protocol_errors(woodpecker) == []  # and Woodpecker's only what protocols.md says it does


def broken(cluster: Cluster, name: str = "viktor/payslip-ingest", tag: str = "latest") -> PushedImage:
    pusher = ImagePusher(cluster.registry.url)
    image = pusher.push_image(name, tag)
    cluster.registry.break_manifest_link(name, image.children["linux/amd64"])
    pusher.close()
    return image


def incident_for(cluster: Cluster, image: PushedImage) -> Incident:
    return unsaved_incident(cluster.forgejo.host, image.reference, image.digest)


def run_phase(fn, cluster: Cluster, incident: Incident, settings: Settings | None = None, target: str | None = None):
    settings = settings or cluster.settings()
    kube = Kube(settings) if settings.kube_enabled == "true" else None
    ctx = PhaseContext(settings, incident, SecretResolver(settings), kube, actor="U0APPROVER", target=target)
    progress = RecordingProgress()
    result: PhaseResult = asyncio.run(fn(ctx, progress))
    return result, progress


async def pipeline_started(cluster: Cluster) -> None:
    """Woodpecker faults are injected mid-pipeline: after the bot started one."""
    for _ in range(200):
        if cluster.woodpecker.requests_to("POST", r"/pipelines$"):
            await asyncio.sleep(0.2)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no pipeline was started")


def texts(progress: RecordingProgress) -> str:
    return "\n".join(f"[{s.state}] {s.plain()}" for s in progress.steps.values())


# --- Phase 2 -----------------------------------------------------------------------------------------


def test_rebuild_deletes_the_version_runs_the_pipeline_and_confirms_the_new_image(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo(
        "viktor", "payslip-ingest", image=("viktor/payslip-ingest", "latest"), branches=("master",), step_seconds=0.1
    )
    result, progress = run_phase(rebuild, cluster, incident_for(cluster, image))
    assert result.ok, texts(progress)
    assert result.outcome is Outcome.SUCCEEDED
    assert result.check is not None and result.check.status == "intact"
    assert result.check.digest != image.digest  # a fresh push
    deletes = [p for p in cluster.forgejo.paths("/api/v1/packages/") if "container/payslip-ingest/latest" in p]
    assert deletes, "the broken version was not deleted"
    started = cluster.woodpecker.requests_to("POST", r"/api/repos/\d+/pipelines$")
    assert [r.json for r in started] == [{"branch": "master", "variables": {}}]
    shown = texts(progress)
    assert "build-and-push: success" in shown
    pipeline = progress.steps["ci"]
    assert pipeline.link is not None and pipeline.link.text == "#1" and "/pipeline/1" in pipeline.link.url
    assert "[done] Broken version `viktor/payslip-ingest:latest` deleted" in shown


def test_a_cleanup_token_without_write_package_stops_the_phase(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo("viktor", "payslip-ingest", branches=("master",))
    settings = cluster.settings(forgejo_cleanup_token=Secret("weak-token"))
    result, _ = run_phase(rebuild, cluster, incident_for(cluster, image), settings)
    assert not result.ok
    assert "lacks write:package" in result.summary
    assert cluster.woodpecker.requests_to("POST", r"/pipelines$") == []


def test_a_version_already_gone_is_fine(cluster):
    image = broken(cluster)
    cluster.forgejo.tamper("DELETE", r"/api/v1/packages/", status=404, body=b'{"message":"not found"}')
    cluster.woodpecker.add_repo(
        "viktor", "payslip-ingest", image=("viktor/payslip-ingest", "latest"), branches=("master",), step_seconds=0.05
    )
    result, progress = run_phase(rebuild, cluster, incident_for(cluster, image))
    assert result.ok, texts(progress)
    assert "was already gone" in texts(progress)


def test_a_filtered_pipeline_ends_the_phase_saying_so(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo("viktor", "payslip-ingest", manual_workflow=False, branches=("master",))
    result, _ = run_phase(rebuild, cluster, incident_for(cluster, image))
    assert not result.ok
    assert "no workflow for manual runs" in result.summary


def test_a_failed_step_sends_its_log_tail_to_the_thread(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo(
        "viktor",
        "payslip-ingest",
        fail_step="build-and-push",
        branches=("master",),
        fail_log="#12 ERROR: failed to push: unexpected status 500\nexit status 1",
        step_seconds=0.05,
    )
    result, progress = run_phase(rebuild, cluster, incident_for(cluster, image))
    assert not result.ok
    assert "failure" in result.summary
    assert any("failed to push" in line for line in result.details)
    assert "build-and-push: failure" in texts(progress)


def test_woodpecker_down_mid_pipeline_fails_clearly_after_the_grace(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo("viktor", "payslip-ingest", branches=("master",), step_seconds=1.0)

    async def go_down_soon():
        await pipeline_started(cluster)
        cluster.woodpecker.go_down()

    settings = cluster.settings(ci_unreachable_grace=1.0)

    async def both(ctx, progress):
        down = asyncio.create_task(go_down_soon())
        try:
            return await rebuild(ctx, progress)
        finally:
            await down

    result, _progress = run_phase(both, cluster, incident_for(cluster, image), settings)
    assert not result.ok
    assert "CI stopped answering" in result.summary
    assert "/repos/" in result.summary  # the link to the pipeline


def test_woodpecker_down_briefly_is_waited_out(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo(
        "viktor", "payslip-ingest", image=("viktor/payslip-ingest", "latest"), branches=("master",), step_seconds=0.5
    )

    async def blip():
        await pipeline_started(cluster)
        cluster.woodpecker.go_down("502")
        await asyncio.sleep(0.6)
        cluster.woodpecker.come_back()

    async def both(ctx, progress):
        task = asyncio.create_task(blip())
        try:
            return await rebuild(ctx, progress)
        finally:
            await task

    result, progress = run_phase(
        both, cluster, incident_for(cluster, image), cluster.settings(ci_unreachable_grace=10.0)
    )
    assert result.ok, texts(progress)


def test_github_actions_as_the_ci_backend(cluster):
    image = broken(cluster)
    cluster.github.add_workflow(
        "viktor",
        "payslip-ingest",
        "build.yml",
        image=("viktor/payslip-ingest", "latest"),
        branches=("master",),
        seconds=0.4,
    )
    settings = cluster.settings(ci_backend="github")
    result, progress = run_phase(rebuild, cluster, incident_for(cluster, image), settings)
    assert result.ok, texts(progress)
    assert "Build and push: success" in texts(progress)


def test_per_image_mapping_picks_the_ci_repository_and_branch(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo(
        "infra", "images", image=("viktor/payslip-ingest", "latest"), branches=("main",), step_seconds=0.05
    )
    settings = cluster.settings(images={"viktor/payslip-ingest": {"repo": "infra/images", "branch": "main"}})
    result, progress = run_phase(rebuild, cluster, incident_for(cluster, image), settings)
    assert result.ok, texts(progress)


def test_a_plain_distribution_registry_deletes_by_digest(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo(
        "viktor", "payslip-ingest", image=("viktor/payslip-ingest", "latest"), branches=("master",), step_seconds=0.05
    )
    settings = cluster.settings(
        registry_url=cluster.registry.url,
        registry_kind="distribution",
        registry_username="",
        registry_password=Secret(""),
    )
    incident = incident_for(cluster, image)
    incident.registry_host = cluster.registry.host
    result, progress = run_phase(rebuild, cluster, incident, settings)
    assert result.ok, texts(progress)
    assert f"Broken manifest of `{image.reference}` deleted" in texts(progress)


def test_dry_run_reads_everything_and_writes_nothing(cluster):
    image = broken(cluster)
    cluster.woodpecker.add_repo("viktor", "payslip-ingest", branches=("master",))
    result, progress = run_phase(rebuild, cluster, incident_for(cluster, image), cluster.settings(dry_run=True))
    assert result.ok
    assert "would `DELETE /api/v1/packages/viktor/container/payslip-ingest/latest`" in texts(progress)
    assert not [m for m, p, _ in cluster.forgejo.requests if m == "DELETE"]
    assert cluster.woodpecker.requests_to("POST", r".*") == []
    assert cluster.woodpecker.requests_to("GET", r"/api/repos/lookup/")  # the reads still happen


# --- Phase 3 -----------------------------------------------------------------------------------------


def seed_consumers(cluster: Cluster, image: PushedImage) -> None:
    ref = f"{cluster.image_host}/{image.reference}"
    cluster.kube.add_node("k8s-node1")
    cluster.kube.add_node("k8s-node2")
    cluster.kube.add_deployment("payroll", "payslip-ingest", ref, replicas=2)
    cluster.kube.add_statefulset("payroll", "ledger", "docker.io/library/postgres:16", init_image=ref)
    cluster.kube.add_daemonset("monitoring", "agent", f"{cluster.image_host}/{image.name}@{image.digest}")
    cluster.kube.add_deployment("other", "unrelated", f"{cluster.image_host}/viktor/other:latest")


def test_restart_rolls_every_consumer_and_follows_the_rollouts(cluster):
    image = broken(cluster)
    seed_consumers(cluster, image)
    result, progress = run_phase(restart, cluster, incident_for(cluster, image))
    assert result.ok, texts(progress)
    patched = {(r.resource, r.namespace, r.name) for r in cluster.kube.requests if r.verb == "patch"}
    assert patched == {
        ("deployments", "payroll", "payslip-ingest"),
        ("statefulsets", "payroll", "ledger"),
        ("daemonsets", "monitoring", "agent"),
    }
    deployment = cluster.kube.get("Deployment", "payroll", "payslip-ingest")
    assert "kubectl.kubernetes.io/restartedAt" in deployment["spec"]["template"]["metadata"]["annotations"]
    assert result.schedule_verification is True
    assert texts(progress).count("[done]") >= 3


def test_a_paused_deployment_is_reported_not_touched(cluster):
    image = broken(cluster)
    cluster.kube.add_deployment("payroll", "paused-one", f"{cluster.image_host}/{image.reference}", paused=True)
    result, progress = run_phase(restart, cluster, incident_for(cluster, image))
    assert result.ok
    assert "paused, not touched" in texts(progress)
    assert not [r for r in cluster.kube.requests if r.verb == "patch"]


def test_a_rollout_past_its_deadline_fails_the_phase(cluster):
    image = broken(cluster)
    cluster.kube.add_deployment("payroll", "payslip-ingest", f"{cluster.image_host}/{image.reference}")
    cluster.kube.stuck("Deployment", "payroll", "payslip-ingest")
    result, _progress = run_phase(restart, cluster, incident_for(cluster, image))
    assert not result.ok
    assert "progress deadline" in result.summary


@pytest.mark.parametrize("status", [409, 500, 403])
def test_the_api_refusing_a_restart_fails_with_one_sentence(cluster, status):
    image = broken(cluster)
    cluster.kube.add_deployment("payroll", "payslip-ingest", f"{cluster.image_host}/{image.reference}")
    cluster.kube.fault("PATCH", r"/deployments/payslip-ingest$", status, times=None)
    result, _ = run_phase(restart, cluster, incident_for(cluster, image))
    assert not result.ok
    assert f"HTTP {status}" in result.summary
    assert "\n" not in result.summary


def test_pods_still_failing_on_a_node_are_named_for_the_node_fix(cluster):
    image = broken(cluster)
    ref = f"{cluster.image_host}/{image.reference}"
    cluster.kube.add_node("k8s-node3")
    cluster.kube.add_pod("payroll", "payslip-ingest-x", ref, node="k8s-node3", waiting_reason="ImagePullBackOff")
    result, _progress = run_phase(restart, cluster, incident_for(cluster, image))
    assert result.nodes == ["k8s-node3"], (result, texts(_progress))


# --- the node fix -------------------------------------------------------------------------------------


def test_the_node_fix_cordons_evicts_restarts_containerd_and_uncordons(cluster):
    image = broken(cluster)
    cluster.kube.add_node("k8s-node3")
    cluster.kube.add_deployment("payroll", "web", "nginx", replicas=1)
    cluster.kube.add_pod(
        "payroll", "web-1", "nginx", node="k8s-node3", labels={"app": "web"}, owner=("Deployment", "web")
    )
    cluster.kube.add_pdb("payroll", "web", {"app": "web"}, disruptions_allowed=1)
    result, progress = run_phase(node, cluster, incident_for(cluster, image), target="k8s-node3")
    assert result.ok, texts(progress)
    created = [r for r in cluster.kube.requests if r.verb == "create" and r.resource == "pods" and not r.subresource]
    pod = created[0].body
    assert pod["spec"]["nodeName"] == "k8s-node3" and pod["spec"]["hostPID"] is True
    assert pod["spec"]["containers"][0]["securityContext"]["privileged"] is True
    assert pod["spec"]["containers"][0]["command"][:3] == ["nsenter", "-t", "1"]
    node_obj = cluster.kube.get("Node", None, "k8s-node3")
    assert not node_obj["spec"].get("unschedulable")


def test_evictions_refused_by_a_pdb_are_retried_then_fail_leaving_the_node_cordoned(cluster):
    image = broken(cluster)
    cluster.kube.add_node("k8s-node3")
    cluster.kube.add_deployment("payroll", "web", "nginx", replicas=1)
    cluster.kube.add_pod(
        "payroll", "web-1", "nginx", node="k8s-node3", labels={"app": "web"}, owner=("Deployment", "web")
    )
    cluster.kube.add_pdb("payroll", "web", {"app": "web"}, disruptions_allowed=0)
    settings = cluster.settings(eviction_timeout=1.0)
    result, _ = run_phase(node, cluster, incident_for(cluster, image), settings, target="k8s-node3")
    assert not result.ok
    assert "PodDisruptionBudget" in result.summary and "stays cordoned" in result.summary
    assert cluster.kube.get("Node", None, "k8s-node3")["spec"]["unschedulable"] is True


def test_node_actions_are_off_unless_enabled(cluster):
    image = broken(cluster)
    result, _ = run_phase(
        node, cluster, incident_for(cluster, image), cluster.settings(node_actions=False), target="k8s-node3"
    )
    assert not result.ok and "NODE_ACTIONS" in result.summary
    assert cluster.kube.requests == []


def test_a_pod_without_a_controller_stops_the_drain_before_it_touches_the_node(cluster):
    image = broken(cluster)
    cluster.kube.add_node("k8s-node3")
    cluster.kube.add_pod("payroll", "hand-made", "nginx", node="k8s-node3")
    result, _ = run_phase(node, cluster, incident_for(cluster, image), target="k8s-node3")
    assert not result.ok and "payroll/hand-made" in result.summary and "not touched" in result.summary
    assert not [r for r in cluster.kube.requests if r.verb in ("patch", "create")]
