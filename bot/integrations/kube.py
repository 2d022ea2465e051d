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


class Kube:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._api: Any = None

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    config.load_incluster_config()
                    self._api = client.ApiClient()
                else:
                    self._api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
            except Exception as exc:
                raise KubeUnavailable(f"Cannot configure the Kubernetes client: {_first_line(exc)}.") from None
        return self._api

    async def call(self, doing: str, fn: Callable[[Any], T]) -> T:
        """Run fn(api_client) in a thread; turn API errors into one sentence naming what we were doing."""
        from kubernetes.client.exceptions import ApiException

        def run() -> T:
            return fn(self._client())

        try:
            return await asyncio.to_thread(run)
        except ApiException as exc:
            raise KubeUnavailable(explain_api_error(exc, doing)) from None
        except KubeUnavailable:
            raise
        except Exception as exc:  # urllib3 connection errors and the like
            raise KubeUnavailable(f"The Kubernetes API is unreachable while {doing} ({type(exc).__name__}).") from None

    # --- reads ------------------------------------------------------------------------------------------

    async def consumers(self, name: str, tag: str, digests: frozenset[str]) -> list[Workload]:
        """Deployments, StatefulSets and DaemonSets whose containers or init containers use the image."""
        hosts = self.settings.all_registry_hosts
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

    async def failing_pods(self, name: str, tag: str, digests: frozenset[str]) -> list[FailingPod]:
        """Pods of the image waiting in ImagePullBackOff or ErrImagePull, with their nodes."""
        hosts = self.settings.all_registry_hosts

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
        403: "the bot's ServiceAccount lacks that permission (see manifests/rbac.yaml)",
        404: "it does not exist",
        409: "it changed meanwhile; try again",
        429: "the API server is throttling us",
    }.get(status, "the API server failed" if status >= 500 else "")
    detail = f": {message[:200]}" if message else ""
    return f"Kubernetes answered HTTP {status} while {doing} ({hint}){detail}."


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
