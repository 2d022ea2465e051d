"""The Kubernetes stand-in, exercised through the unmodified official ``kubernetes`` client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.peers.kube_api import KubeStandIn
from tests.peers.kube_schema import answer_errors

T = TypeVar("T")

RESTART_PATCH = {
    "spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2025-06-01T10:00:00Z"}}}}
}


def wait_for(probe: Callable[[], T | None], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def status_body(exc: ApiException) -> dict[str, Any]:
    assert exc.body is not None
    body: dict[str, Any] = json.loads(exc.body)
    return body


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn(rollout_seconds=0.2, pod_run_seconds=0.1) as k:
        k.add_node("node-a")
        k.add_node("node-b")
        yield k
        assert k.server_errors == []
        # Whatever the stand-in answered is what a Kubernetes 1.34 API server could answer.
        assert answer_errors(k.answers) == []


@pytest.fixture
def api(kube: KubeStandIn) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client


def test_lists_workloads_across_namespaces(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0", replicas=3, init_image="busybox:1.36")
    kube.add_deployment("staging", "web", {"app": "registry.example.org/web:1.1", "sidecar": "envoy:1.30"})
    kube.add_statefulset("prod", "db", "postgres:16", replicas=2)
    kube.add_daemonset("kube-system", "node-agent", "registry.example.org/agent:3")
    apps = client.AppsV1Api(api)

    deployments = apps.list_deployment_for_all_namespaces()
    assert [(d.metadata.namespace, d.metadata.name) for d in deployments.items] == [
        ("prod", "web"),
        ("staging", "web"),
    ]
    assert int(deployments.metadata.resource_version) > 0
    prod = deployments.items[0]
    assert prod.spec.template.spec.init_containers[0].image == "busybox:1.36"
    assert prod.status.ready_replicas == 3 and prod.status.observed_generation == 1
    assert [c.name for c in deployments.items[1].spec.template.spec.containers] == ["app", "sidecar"]

    statefulset = apps.read_namespaced_stateful_set("db", "prod")
    assert statefulset.status.current_revision == statefulset.status.update_revision
    daemonsets = apps.list_daemon_set_for_all_namespaces().items
    assert daemonsets[0].status.desired_number_scheduled == 2  # one per seeded node
    assert [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items] == [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
        "prod",
        "staging",
    ]


def test_restart_patch_bumps_generation_then_rollout_converges(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0", replicas=2, with_pods=True)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    old_pods = {p.metadata.name for p in core.list_namespaced_pod("prod", label_selector="app=web").items}

    patched = apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH)
    assert patched.metadata.generation == 2
    assert patched.status.observed_generation == 1  # the controller has not looked yet
    assert patched.spec.template.spec.containers[0].image == "registry.example.org/web:1.0"

    def converged() -> client.V1Deployment | None:
        d = apps.read_namespaced_deployment("web", "prod")
        done = d.status.observed_generation == 2 and d.status.updated_replicas == d.status.available_replicas == 2
        return d if done else None

    deployment = wait_for(converged)
    progressing = {c.type: c for c in deployment.status.conditions}["Progressing"]
    assert progressing.reason == "NewReplicaSetAvailable"
    new_pods = core.list_namespaced_pod("prod", label_selector="app=web").items
    assert len(new_pods) == 2 and old_pods.isdisjoint(p.metadata.name for p in new_pods)
    assert all(p.status.phase == "Running" for p in new_pods)


def test_image_patch_rolls_statefulset_and_daemonset(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_statefulset("prod", "db", "postgres:16.1", replicas=2, with_pods=True)
    kube.add_daemonset("kube-system", "agent", "registry.example.org/agent:1", with_pods=True)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    image_patch = {"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "postgres:16.4"}]}}}}

    before = apps.read_namespaced_stateful_set("db", "prod").status.update_revision
    apps.patch_namespaced_stateful_set("db", "prod", image_patch)
    apps.patch_namespaced_daemon_set(
        "agent",
        "kube-system",
        {"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "registry.example.org/agent:2"}]}}}},
    )

    def sts_done() -> client.V1StatefulSet | None:
        s = apps.read_namespaced_stateful_set("db", "prod")
        done = s.status.observed_generation == 2 and s.status.current_revision == s.status.update_revision
        return s if done and s.status.updated_replicas == 2 else None

    statefulset = wait_for(sts_done)
    assert statefulset.status.update_revision != before
    # Strategic merge keeps the other container fields; pods keep their ordinal names.
    assert statefulset.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    pods = core.list_namespaced_pod("prod", label_selector="app=db").items
    assert [(p.metadata.name, p.spec.containers[0].image) for p in pods] == [
        ("db-0", "postgres:16.4"),
        ("db-1", "postgres:16.4"),
    ]

    def ds_done() -> client.V1DaemonSet | None:
        d = apps.read_namespaced_daemon_set("agent", "kube-system")
        s = d.status
        return d if s.observed_generation == 2 and s.updated_number_scheduled == s.number_available == 2 else None

    wait_for(ds_done)


def test_stuck_rollout_reports_progress_deadline_exceeded(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0")
    kube.stuck("Deployment", "prod", "web")
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment(
        "web", "prod", {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:broken"}]}}}}
    )

    def deadline_exceeded() -> client.V1DeploymentCondition | None:
        d = apps.read_namespaced_deployment("web", "prod")
        cond = {c.type: c for c in d.status.conditions}["Progressing"]
        return cond if cond.reason == "ProgressDeadlineExceeded" else None

    condition = wait_for(deadline_exceeded)
    assert condition.status == "False"
    deployment = apps.read_namespaced_deployment("web", "prod")
    assert deployment.status.observed_generation == 2
    assert deployment.status.updated_replicas < deployment.spec.replicas

    kube.stuck("Deployment", "prod", "web", stuck=False)
    wait_for(lambda: apps.read_namespaced_deployment("web", "prod").status.updated_replicas == 2)


def test_paused_deployment_keeps_its_status(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0", paused=True)
    apps = client.AppsV1Api(api)
    patched = apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH)
    assert patched.metadata.generation == 2
    time.sleep(0.3)
    assert apps.read_namespaced_deployment("web", "prod").status.observed_generation == 1


def test_pod_selectors(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0")
    kube.add_pod("prod", "web-ok", "registry.example.org/web:1.0", "node-a", owner=("Deployment", "web"))
    kube.add_pod(
        "prod",
        "web-broken",
        "registry.example.org/web:missing",
        "node-b",
        waiting_reason="ImagePullBackOff",
        owner=("Deployment", "web"),
    )
    kube.add_pod("ops", "tool", "alpine:3.20", "node-b", labels={"tier": "ops", "canary": "yes"})
    core = client.CoreV1Api(api)

    def names(**kwargs: Any) -> list[str]:
        return [p.metadata.name for p in core.list_pod_for_all_namespaces(**kwargs).items]

    assert names(label_selector="app=web") == ["web-broken", "web-ok"]
    assert names(label_selector="canary") == ["tool"]
    assert names(label_selector="app=web,!canary") == ["web-broken", "web-ok"]
    assert names(label_selector="tier in (ops,batch)") == ["tool"]
    assert names(field_selector="spec.nodeName=node-b") == ["tool", "web-broken"]
    assert names(field_selector="spec.nodeName=node-b", label_selector="app=web") == ["web-broken"]
    assert [p.metadata.name for p in core.list_namespaced_pod("prod", field_selector="status.phase=Pending").items] == [
        "web-broken"
    ]

    broken = core.read_namespaced_pod("web-broken", "prod")
    waiting = broken.status.container_statuses[0].state.waiting
    assert (broken.status.phase, waiting.reason) == ("Pending", "ImagePullBackOff")
    assert "registry.example.org/web:missing" in waiting.message
    owner = broken.metadata.owner_references[0]
    assert owner.kind == "ReplicaSet"
    replica_set = client.AppsV1Api(api).read_namespaced_replica_set(owner.name, "prod")
    assert replica_set.metadata.owner_references[0].name == "web"

    with pytest.raises(ApiException) as err:
        core.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
    assert err.value.status == 400


def test_pod_logs_and_latest_job_pod(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_job_pod(job="forgejo-integrity-probe-28999940", log="old run\n")
    kube.add_job_pod(job="forgejo-integrity-probe-29000000", log="line 1\nline 2\nintegrity: OK\n")
    kube.add_pod("prod", "broken", "web:missing", "node-a", waiting_reason="ImagePullBackOff")
    core = client.CoreV1Api(api)

    pods = core.list_namespaced_pod("monitoring", label_selector="job-name").items
    latest = max(pods, key=lambda p: p.metadata.creation_timestamp)
    assert latest.metadata.labels["job-name"] == "forgejo-integrity-probe-29000000"
    assert latest.status.phase == "Succeeded"
    name = latest.metadata.name
    assert core.read_namespaced_pod_log(name, "monitoring") == "line 1\nline 2\nintegrity: OK\n"
    assert core.read_namespaced_pod_log(name, "monitoring", tail_lines=1) == "integrity: OK\n"

    jobs = client.BatchV1Api(api).list_namespaced_job("monitoring").items
    assert [j.status.succeeded for j in jobs] == [1, 1]

    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log("broken", "prod")
    assert err.value.status == 400 and "waiting to start" in status_body(err.value)["message"]
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log("ghost", "prod")
    assert err.value.status == 404


def test_eviction_respects_disruption_budgets(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.rollout_seconds = 1.0  # how long a used-up disruption stays used up
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0", with_pods=True)
    kube.add_deployment("prod", "api", "registry.example.org/api:1.0", with_pods=True)
    kube.add_pdb("prod", "web", {"app": "web"}, disruptions_allowed=0)
    kube.add_pdb("prod", "api", {"app": "api"}, disruptions_allowed=1)
    kube.add_pod("prod", "loner", "alpine:3.20", "node-a")
    core = client.CoreV1Api(api)

    def evict(pod: str) -> Any:
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace="prod"))
        return core.create_namespaced_pod_eviction(pod, "prod", body)

    web_pod = core.list_namespaced_pod("prod", label_selector="app=web").items[0].metadata.name
    with pytest.raises(ApiException) as err:
        evict(web_pod)
    assert err.value.status == 429
    status = status_body(err.value)
    assert status["reason"] == "TooManyRequests"
    assert status["message"] == "Cannot evict pod as it would violate the pod's disruption budget."

    evict("loner")  # no budget selects it: 201
    assert kube.get("Pod", "prod", "loner") is None

    api_pods = [p.metadata.name for p in core.list_namespaced_pod("prod", label_selector="app=api").items]
    evict(api_pods[0])
    with pytest.raises(ApiException) as err:
        evict(api_pods[1])  # the single allowed disruption is used up ...
    assert err.value.status == 429
    wait_for(lambda: kube.get("PodDisruptionBudget", "prod", "api")["status"]["disruptionsAllowed"] == 1)
    evict(api_pods[1])  # ... until the replacement is ready again


def test_cordon_node(kube: KubeStandIn, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    node = core.patch_node("node-a", {"spec": {"unschedulable": True}})
    assert node.spec.unschedulable is True
    assert [t.key for t in node.spec.taints] == ["node.kubernetes.io/unschedulable"]
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    cordoned = core.list_node(field_selector="spec.unschedulable=true").items
    assert [n.metadata.name for n in cordoned] == ["node-a"]

    core.patch_node("node-a", {"spec": {"unschedulable": None}})
    assert core.read_node("node-a").spec.taints is None


def test_lease_optimistic_concurrency(kube: KubeStandIn, api: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api)
    with pytest.raises(ApiException) as err:  # like a real server: the namespace must exist
        leases.read_namespaced_lease("registry-bot-leader", "registry-bot")
    assert err.value.status == 404
    kube.add_namespace("registry-bot")
    body = client.V1Lease(
        metadata=client.V1ObjectMeta(name="registry-bot-leader"),
        spec=client.V1LeaseSpec(holder_identity="pod-a", lease_duration_seconds=15, acquire_time=datetime.now(UTC)),
    )
    created = leases.create_namespaced_lease("registry-bot", body)
    assert created.metadata.resource_version

    with pytest.raises(ApiException) as err:
        leases.create_namespaced_lease("registry-bot", body)
    assert err.value.status == 409 and status_body(err.value)["reason"] == "AlreadyExists"

    created.spec.holder_identity = "pod-b"
    renewed = leases.replace_namespaced_lease("registry-bot-leader", "registry-bot", created)
    assert renewed.spec.holder_identity == "pod-b"
    assert renewed.metadata.resource_version != created.metadata.resource_version

    created.spec.holder_identity = "pod-c"  # still carries the stale resourceVersion
    with pytest.raises(ApiException) as err:
        leases.replace_namespaced_lease("registry-bot-leader", "registry-bot", created)
    assert err.value.status == 409 and status_body(err.value)["reason"] == "Conflict"
    assert leases.read_namespaced_lease("registry-bot-leader", "registry-bot").spec.holder_identity == "pod-b"

    leases.delete_namespaced_lease("registry-bot-leader", "registry-bot")
    with pytest.raises(ApiException) as err:
        leases.read_namespaced_lease("registry-bot-leader", "registry-bot")
    assert err.value.status == 404 and status_body(err.value)["reason"] == "NotFound"


def test_injected_faults_surface_as_api_exceptions(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0")
    apps = client.AppsV1Api(api)
    kube.fault("PATCH", r"/deployments/web$", 403)
    kube.fault("PATCH", r"/deployments/web$", 409)
    kube.fault("GET", r"/apis/apps/v1/deployments$", 500, times=2)

    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH)
    assert err.value.status == 403
    forbidden = status_body(err.value)
    assert forbidden["reason"] == "Forbidden"
    assert 'cannot patch resource "deployments" in API group "apps" in the namespace "prod"' in forbidden["message"]

    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH)
    assert err.value.status == 409 and status_body(err.value)["reason"] == "Conflict"

    for _ in range(2):
        with pytest.raises(ApiException) as err:
            apps.list_deployment_for_all_namespaces()
        assert err.value.status == 500 and status_body(err.value)["reason"] == "InternalError"

    assert apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH).metadata.generation == 2
    assert len(apps.list_deployment_for_all_namespaces().items) == 1


def test_patch_content_types(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0", annotations={"team": "infra"})
    apps = client.AppsV1Api(api)
    merged = apps.patch_namespaced_deployment(
        "web", "prod", {"metadata": {"annotations": {"owner": "bot"}}}, _content_type="application/merge-patch+json"
    )
    assert merged.metadata.annotations["team"] == "infra" and merged.metadata.annotations["owner"] == "bot"
    assert merged.metadata.generation == 1  # metadata-only change

    patched = apps.patch_namespaced_deployment("web", "prod", [{"op": "replace", "path": "/spec/replicas", "value": 4}])
    assert patched.spec.replicas == 4 and patched.metadata.generation == 2
    assert kube.requests[-1].content_type == "application/json-patch+json"


def test_unknown_paths_and_missing_objects(kube: KubeStandIn, api: client.ApiClient) -> None:
    http = urllib3.PoolManager()
    response = http.request("GET", f"{kube.url}/apis/example.com/v1/widgets")
    assert response.status == 404
    assert json.loads(response.data)["kind"] == "Status"
    with pytest.raises(ApiException) as err:
        client.AppsV1Api(api).read_namespaced_deployment("ghost", "prod")
    assert err.value.status == 404
    assert status_body(err.value)["message"] == 'deployments.apps "ghost" not found'


def test_created_pods_and_jobs_run_to_completion(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.program_pods(r"^integrity-run-", log="integrity: OK\n")
    kube.add_namespace("monitoring")
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="node-a-shell"),
        spec=client.V1PodSpec(
            node_name="node-a",
            host_pid=True,
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="shell",
                    image="alpine:3.20",
                    security_context=client.V1SecurityContext(privileged=True),
                )
            ],
        ),
    )
    created = core.create_namespaced_pod("kube-system", pod)
    assert created.status.phase == "Pending" and created.spec.node_name == "node-a"
    wait_for(lambda: core.read_namespaced_pod("node-a-shell", "kube-system").status.phase == "Succeeded")
    (recorded,) = [r for r in kube.requests if r.verb == "create" and r.resource == "pods"]
    assert recorded.body["spec"]["containers"][0]["securityContext"]["privileged"] is True

    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="integrity-run-1"),
        spec=client.V1JobSpec(
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never", containers=[client.V1Container(name="probe", image="probe:1")]
                )
            )
        ),
    )
    batch.create_namespaced_job("monitoring", job)
    done = wait_for(lambda: (j := batch.read_namespaced_job("integrity-run-1", "monitoring")).status.succeeded and j)
    assert {c.type for c in done.status.conditions} >= {"Complete"}
    job_pod = core.list_namespaced_pod("monitoring", label_selector="job-name=integrity-run-1").items[0]
    assert core.read_namespaced_pod_log(job_pod.metadata.name, "monitoring") == "integrity: OK\n"

    core.delete_namespaced_pod("node-a-shell", "kube-system")
    assert kube.get("Pod", "kube-system", "node-a-shell") is None


def test_watch_streams_rollout_progress(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.rollout_seconds = 3.0  # long enough that the watch starts mid-rollout on a busy machine too
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0")
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH)
    seen = []
    stream = watch.Watch()
    for event in stream.stream(apps.list_namespaced_deployment, "prod", timeout_seconds=8):
        status = event["object"].status
        seen.append((event["type"], status.observed_generation, status.updated_replicas))
        if status.observed_generation == 2 and status.updated_replicas == 2:
            stream.stop()
    assert seen[0][0] == "ADDED" and seen[0][1:] != (2, 2), seen  # the rollout was still going when it began
    assert seen[-1] == ("MODIFIED", 2, 2)


def test_rbac_recording(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add_deployment("prod", "web", "registry.example.org/web:1.0")
    kube.add_pod("prod", "p", "alpine:3.20", "node-a")
    kube.add_lease("registry-bot", "leader", holder="someone")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.list_deployment_for_all_namespaces()
    apps.patch_namespaced_deployment("web", "prod", RESTART_PATCH)
    core.read_namespaced_pod_log("p", "prod")
    core.create_namespaced_pod_eviction("p", "prod", client.V1Eviction(metadata=client.V1ObjectMeta(name="p")))
    client.CoordinationV1Api(api).read_namespaced_lease("leader", "registry-bot")

    assert kube.rbac_requests() == [
        ("apps", "deployments", "", "list", ""),
        ("apps", "deployments", "", "patch", "prod"),
        ("", "pods", "log", "get", "prod"),
        ("", "pods", "eviction", "create", "prod"),
        ("coordination.k8s.io", "leases", "", "get", "registry-bot"),
    ]
    verb, path, query = kube.requests[0][:3]
    assert (verb, path, query) == ("list", "/apis/apps/v1/deployments", {})
    rules = [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "patch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"], "resourceNames": ["leader"]},
    ]
    denied = kube.requests_not_allowed_by(rules)
    assert [(r.resource, r.subresource, r.verb) for r in denied] == [("pods", "eviction", "create")]


def test_kubeconfig_and_bearer_token(tmp_path: Path) -> None:
    with KubeStandIn(token="s3cret-token") as kube:
        kube.add_deployment("prod", "web", "registry.example.org/web:1.0")
        path = kube.write_kubeconfig(tmp_path / "kubeconfig")

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(path), client_configuration=configuration)
        assert configuration.host == kube.url
        with client.ApiClient(configuration) as api:
            assert client.AppsV1Api(api).read_namespaced_deployment("web", "prod").metadata.name == "web"

        with config.new_client_from_config(config_file=str(path)) as api:
            assert len(client.CoreV1Api(api).list_namespace().items) >= 4

        anonymous = client.ApiClient(client.Configuration(host=kube.url))
        with pytest.raises(ApiException) as err:
            client.AppsV1Api(anonymous).list_deployment_for_all_namespaces()
        assert err.value.status == 401
        anonymous.close()


async def test_client_through_asyncio_to_thread(kube: KubeStandIn, api: client.ApiClient) -> None:
    for index in range(8):
        kube.add_deployment(f"team-{index}", "web", f"registry.example.org/web:{index}")
    apps = client.AppsV1Api(api)
    results = await asyncio.gather(
        *(asyncio.to_thread(apps.read_namespaced_deployment, "web", f"team-{i}") for i in range(8)),
        asyncio.to_thread(apps.list_deployment_for_all_namespaces),
    )
    images = [d.spec.template.spec.containers[0].image for d in results[:8]]
    assert images == [f"registry.example.org/web:{i}" for i in range(8)]
    assert len(results[8].items) == 8
