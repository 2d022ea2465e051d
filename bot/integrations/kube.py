"""The Kubernetes API through the official client: what the runbook reads and (later) restarts.

The client is synchronous; every call runs in a worker thread. The client is configured in-cluster, or
from KUBECONFIG; `KubeUnavailable` says in one sentence why a call failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.config import Settings
from bot.errors import UserFacingError
from bot.refs import image_matches

log = logging.getLogger(__name__)
T = TypeVar("T")

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
PULL_FAILURES = {"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"}
_FAIL_LINE = re.compile(r"FAIL:\s+(?P<repo>[a-z0-9][a-z0-9._/-]*):(?P<tag>[\w][\w.-]{0,127})\b(?P<rest>.*)")


class KubeUnavailable(UserFacingError):
    pass


@dataclass(frozen=True)
class Workload:
    kind: str
    namespace: str
    name: str
    containers: tuple[str, ...]  # container names that use the image
    paused: bool = False

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} in {self.namespace}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "containers": list(self.containers)}


@dataclass(frozen=True)
class FailingPod:
    namespace: str
    name: str
    node: str
    reason: str


@dataclass
class ProbeLog:
    pod: str
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (repo, tag, line)


def kube_configured(settings: Settings) -> bool:
    if settings.kube_enabled == "false":
        return False
    if settings.kube_enabled == "true":
        return True
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG"))


REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read: a half-open connection must not hang a phase forever


class Kube:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._api: Any = None
        # Its own threads: a slow API server must not starve the database calls (heartbeats, the lease).
        self._threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kube")

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            class TimedApiClient(client.ApiClient):  # type: ignore[misc]
                def call_api(self, *args: Any, **kwargs: Any) -> Any:
                    if kwargs.get("_request_timeout") is None:
                        kwargs["_request_timeout"] = REQUEST_TIMEOUT
                    return super().call_api(*args, **kwargs)

            try:
                configuration = client.Configuration()
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    config.load_incluster_config(client_configuration=configuration)
                else:
                    config.load_kube_config(
                        config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
                    )
                self._api = TimedApiClient(configuration)
            except Exception as exc:
                raise KubeUnavailable(f"Cannot configure the Kubernetes client: {_first_line(exc)}.") from None
        return self._api

    async def call(self, doing: str, fn: Callable[[Any], T]) -> T:
        """Run fn(api_client) in a thread; turn API errors into one sentence naming what we were doing."""
        from kubernetes.client.exceptions import ApiException

        def run() -> T:
            return fn(self._client())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, run)
        except ApiException as exc:
            raise KubeUnavailable(explain_api_error(exc, doing)) from None
        except KubeUnavailable:
            raise
        except Exception as exc:  # urllib3 connection errors and the like
            raise KubeUnavailable(f"The Kubernetes API is unreachable while {doing} ({type(exc).__name__}).") from None

    # --- reads ------------------------------------------------------------------------------------------

    async def consumers(
        self, name: str, tag: str, digests: frozenset[str], hosts: tuple[str, ...] | None = None
    ) -> list[Workload]:
        """Deployments, StatefulSets and DaemonSets whose containers or init containers use the image (on the
        registry of `hosts`, by default REGISTRY_URL's)."""
        hosts = hosts if hosts is not None else self.settings.all_registry_hosts
        namespaces = self.settings.kube_namespaces

        def read(api: Any) -> list[Workload]:
            from kubernetes import client

            apps = client.AppsV1Api(api)
            found = []
            listers = {
                "Deployment": (apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment),
                "StatefulSet": (apps.list_stateful_set_for_all_namespaces, apps.list_namespaced_stateful_set),
                "DaemonSet": (apps.list_daemon_set_for_all_namespaces, apps.list_namespaced_daemon_set),
            }
            for kind, (all_ns, one_ns) in listers.items():
                items = []
                if namespaces:
                    for namespace in namespaces:
                        items += one_ns(namespace).items
                else:
                    items = all_ns().items
                for item in items:
                    spec = item.spec.template.spec
                    containers = [*(spec.init_containers or []), *(spec.containers or [])]
                    using = tuple(c.name for c in containers if image_matches(c.image or "", hosts, name, tag, digests))
                    if using:
                        paused = bool(getattr(item.spec, "paused", False))
                        found.append(Workload(kind, item.metadata.namespace, item.metadata.name, using, paused))
            return found

        return await self.call("listing workloads", read)

    async def failing_pods(
        self, name: str, tag: str, digests: frozenset[str], hosts: tuple[str, ...] | None = None
    ) -> list[FailingPod]:
        """Pods of the image waiting in ImagePullBackOff or ErrImagePull, with their nodes."""
        hosts = hosts if hosts is not None else self.settings.all_registry_hosts

        def read(api: Any) -> list[FailingPod]:
            from kubernetes import client

            core = client.CoreV1Api(api)
            pods = core.list_pod_for_all_namespaces().items
            failing = []
            for pod in pods:
                statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
                for status in statuses:
                    waiting = status.state.waiting if status.state else None
                    if not waiting or waiting.reason not in PULL_FAILURES:
                        continue
                    if image_matches(status.image or "", hosts, name, tag, digests) or _spec_uses(
                        pod, status.name, hosts, name, tag, digests
                    ):
                        failing.append(
                            FailingPod(
                                pod.metadata.namespace, pod.metadata.name, pod.spec.node_name or "", waiting.reason
                            )
                        )
                        break
            return failing

        return await self.call("listing pods", read)

    async def probe_log(self) -> ProbeLog | None:
        """The latest probe Job pod's log, parsed for `FAIL: <repo>:<tag> ...` lines. None when there is no pod."""
        namespace, job = self.settings.probe_namespace, self.settings.probe_job

        def read(api: Any) -> ProbeLog | None:
            from kubernetes import client

            core = client.CoreV1Api(api)
            pods = [
                p
                for p in core.list_namespaced_pod(namespace, label_selector="job-name").items
                if (p.metadata.labels or {}).get("job-name", "").startswith(job)
            ]
            if not pods:
                return None
            latest = max(pods, key=lambda p: p.metadata.creation_timestamp)
            try:
                text = core.read_namespaced_pod_log(latest.metadata.name, namespace, tail_lines=5000)
            except client.exceptions.ApiException as exc:
                if exc.status in (400, 404):  # still starting, or gone: no log to read
                    return None
                raise
            return ProbeLog(latest.metadata.name, parse_probe_failures(text or ""))

        return await self.call(f"reading the {job} log in {namespace}", read)


def parse_probe_failures(text: str) -> list[tuple[str, str, str]]:
    failures = []
    for line in text.splitlines():
        match = _FAIL_LINE.search(line)
        if match:
            failures.append((match["repo"], match["tag"], line.strip()[:300]))
    return failures


def _spec_uses(pod: Any, container: str, hosts: tuple[str, ...], name: str, tag: str, digests: frozenset[str]) -> bool:
    spec = pod.spec
    for c in [*(spec.init_containers or []), *(spec.containers or [])]:
        if c.name == container:
            return image_matches(c.image or "", hosts, name, tag, digests)
    return False


def explain_api_error(exc: Any, doing: str) -> str:
    import json

    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(exc.body or "{}").get("message", "")
    status = getattr(exc, "status", 0)
    hint = {
        401: "the bot's credentials were refused",
        403: "the bot's ServiceAccount lacks that permission (see manifests/base/rbac.yaml and overlays/node-actions)",
        404: "it does not exist",
        409: "it changed meanwhile; try again",
        429: "the API server is throttling us",
    }.get(status, "the API server failed" if status >= 500 else "")
    detail = f": {message[:200]}" if message else ""
    return f"Kubernetes answered HTTP {status} while {doing} ({hint}){detail}."


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# --- writes and rollouts (Phase 3 and node actions) ----------------------------------------------------

RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"


@dataclass(frozen=True)
class RolloutStatus:
    done: bool
    failed: bool
    message: str


def rollout_status(kind: str, obj: Any) -> RolloutStatus:
    """kubectl's rollout rules (kubectl/pkg/polymorphichelpers/rollout_status.go) on a fetched object."""
    metadata, spec, status = obj.metadata, obj.spec, obj.status
    generation = metadata.generation or 0
    observed = (status.observed_generation if status else 0) or 0
    if generation > observed:
        return RolloutStatus(False, False, "waiting for the controller to see the change")
    if kind == "Deployment":
        for condition in (status.conditions or []) if status else []:
            if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
                return RolloutStatus(False, True, "exceeded its progress deadline")
        replicas = spec.replicas if spec.replicas is not None else 1
        updated = status.updated_replicas or 0
        total = status.replicas or 0
        available = status.available_replicas or 0
        if updated < replicas:
            return RolloutStatus(False, False, f"{updated} of {replicas} updated")
        if total > updated:
            return RolloutStatus(False, False, f"{total - updated} old replica(s) pending termination")
        if available < updated:
            return RolloutStatus(False, False, f"{available} of {updated} updated replicas available")
        return RolloutStatus(True, False, f"rolled out ({updated}/{replicas})")
    strategy = getattr(getattr(spec, "update_strategy", None), "type", None)
    if kind in ("StatefulSet", "DaemonSet") and strategy == "OnDelete":
        return RolloutStatus(True, False, "uses OnDelete: its pods take the restart only when they are deleted")
    if kind == "StatefulSet":
        replicas = spec.replicas if spec.replicas is not None else 1
        ready = status.ready_replicas or 0
        updated = status.updated_replicas or 0
        if ready < replicas:
            return RolloutStatus(False, False, f"{ready} of {replicas} ready")
        if status.update_revision != status.current_revision:
            return RolloutStatus(False, False, f"{updated} of {replicas} updated")
        return RolloutStatus(True, False, f"rolled out ({ready}/{replicas})")
    desired = status.desired_number_scheduled or 0
    updated = status.updated_number_scheduled or 0
    available = status.number_available or 0
    if updated < desired:
        return RolloutStatus(False, False, f"{updated} of {desired} updated")
    if available < desired:
        return RolloutStatus(False, False, f"{available} of {desired} available")
    return RolloutStatus(True, False, f"rolled out ({available}/{desired})")


def _apps_call(api: Any, kind: str, verb: str) -> Any:
    from kubernetes import client

    apps = client.AppsV1Api(api)
    suffix = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}[kind]
    return getattr(apps, f"{verb}_namespaced_{suffix}")


class KubeWriter:
    """The writes the runbook makes; separated so that a dry run can be seen to use none of them."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def restart(self, workload: Workload, at: str) -> None:
        body = {"spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: at}}}}}
        await self.kube.call(
            f"restarting {workload}",
            lambda api: _apps_call(api, workload.kind, "patch")(workload.name, workload.namespace, body),
        )

    async def rollout(self, workload: Workload) -> RolloutStatus:
        obj = await self.kube.call(
            f"reading {workload}",
            lambda api: _apps_call(api, workload.kind, "read")(workload.name, workload.namespace),
        )
        return rollout_status(workload.kind, obj)

    async def cordon(self, node: str, unschedulable: bool) -> None:
        from kubernetes import client

        body = {"spec": {"unschedulable": unschedulable}}
        await self.kube.call(
            f"{'cordoning' if unschedulable else 'uncordoning'} {node}",
            lambda api: client.CoreV1Api(api).patch_node(node, body),
        )

    async def pods_to_evict(self, node: str) -> list[tuple[str, str, bool]]:
        """Pods `kubectl drain --ignore-daemonsets --delete-emptydir-data` would evict (not DaemonSet or mirror
        pods), each with whether a controller would recreate it."""
        from kubernetes import client

        def read(api: Any) -> list[tuple[str, str, bool]]:
            pods = client.CoreV1Api(api).list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
            chosen = []
            for pod in pods:
                owners = pod.metadata.owner_references or []
                if any(o.kind == "DaemonSet" for o in owners):
                    continue
                if "kubernetes.io/config.mirror" in (pod.metadata.annotations or {}):
                    continue
                if pod.status and pod.status.phase in ("Succeeded", "Failed"):
                    continue
                chosen.append((pod.metadata.namespace, pod.metadata.name, bool(owners)))
            return chosen

        return await self.kube.call(f"listing pods on {node}", read)

    async def evict(self, namespace: str, name: str) -> str:
        """'evicted', 'gone', or 'blocked' (a PodDisruptionBudget refused: 429)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        def run(api: Any) -> str:
            body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
            try:
                client.CoreV1Api(api).create_namespaced_pod_eviction(name, namespace, body)
            except ApiException as exc:
                if exc.status == 429:
                    return "blocked"
                if exc.status == 404:
                    return "gone"
                raise
            return "evicted"

        return await self.kube.call(f"evicting {namespace}/{name}", run)

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> str:
        from kubernetes import client

        created = await self.kube.call(
            f"creating a pod in {namespace}",
            lambda api: client.CoreV1Api(api).create_namespaced_pod(namespace, manifest),
        )
        return str(created.metadata.name)

    async def pod_phase(self, namespace: str, name: str) -> str:
        from kubernetes import client

        pod = await self.kube.call(
            f"reading pod {namespace}/{name}", lambda api: client.CoreV1Api(api).read_namespaced_pod(name, namespace)
        )
        return str(pod.status.phase if pod.status else "Unknown")

    async def pod_log(self, namespace: str, name: str) -> str:
        from kubernetes import client

        return str(
            await self.kube.call(
                f"reading the log of {namespace}/{name}",
                lambda api: client.CoreV1Api(api).read_namespaced_pod_log(name, namespace, tail_lines=50),
            )
            or ""
        )

    async def delete_pod(self, namespace: str, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        def run(api: Any) -> None:
            try:
                client.CoreV1Api(api).delete_namespaced_pod(name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        await self.kube.call(f"deleting pod {namespace}/{name}", run)

    async def node_ready(self, node: str) -> bool:
        from kubernetes import client

        obj = await self.kube.call(f"reading node {node}", lambda api: client.CoreV1Api(api).read_node(node))
        for condition in (obj.status.conditions or []) if obj.status else []:
            if condition.type == "Ready":
                return bool(condition.status == "True")
        return False
