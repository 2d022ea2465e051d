"""In-process stand-in for the Kubernetes API server, for integration tests.

It speaks enough of the real REST wire format (typed JSON objects, ``*List`` kinds, ``Status``
errors, the three patch content types, chunked watch streams) that the unmodified official
``kubernetes`` client works against it over plain HTTP. Objects are plain dicts shaped exactly like
real API objects. The workload controllers, the kubelet, the job controller and the disruption
controller are simulated just far enough for rollout, drain and job-log flows:

* a spec change on a Deployment/StatefulSet/DaemonSet bumps ``metadata.generation`` and the status
  converges after ``rollout_seconds`` (half-way it shows the new generation observed but the rollout
  still in progress); the workload's pods are then replaced by pods running the new template;
* pods created through the API start ``Pending`` and finish after ``pod_run_seconds``
  (``Succeeded`` by default, see :meth:`KubeStandIn.program_pods`);
* Jobs created through the API get a pod, and the Job status follows that pod;
* an eviction consumes one ``disruptionsAllowed`` of the matching PDB, restored after
  ``rollout_seconds`` (the replacement pod becoming ready).

Time-driven changes are applied lazily, before each request is served, so no background thread
mutates state behind a test's back.
"""

from __future__ import annotations

import base64
import bisect
import copy
import hashlib
import http
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from kubernetes import client as k8s_client

Obj = dict[str, Any]
Selector = Callable[[Mapping[str, str]], bool]

DEFAULT_USER = "system:serviceaccount:registry-bot:registry-bot"


# --------------------------------------------------------------------------------------------------
# Resource catalogue


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    # Status is a subresource: writes through the main resource leave it untouched.
    has_status: bool = True
    tracks_generation: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """Qualified resource name as used in API messages, e.g. ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True, has_status=False)
EVENTS = Resource("", "v1", "events", "Event", namespaced=True, has_status=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", namespaced=True, tracks_generation=True)
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet", namespaced=True, tracks_generation=True)
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet", namespaced=True, tracks_generation=True)
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet", namespaced=True, tracks_generation=True)
JOBS = Resource("batch", "v1", "jobs", "Job", namespaced=True, tracks_generation=True)
CRONJOBS = Resource("batch", "v1", "cronjobs", "CronJob", namespaced=True, tracks_generation=True)
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", namespaced=True, tracks_generation=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True, has_status=False)

RESOURCES: tuple[Resource, ...] = (
    NAMESPACES,
    NODES,
    PODS,
    CONFIGMAPS,
    EVENTS,
    DEPLOYMENTS,
    STATEFULSETS,
    DAEMONSETS,
    REPLICASETS,
    JOBS,
    CRONJOBS,
    PDBS,
    LEASES,
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_NAME = {r.name: r for r in RESOURCES}
_WORKLOADS = (DEPLOYMENTS, STATEFULSETS, DAEMONSETS)

# Field selectors the real API server accepts beyond metadata.name / metadata.namespace.
_FIELD_LABELS: dict[str, frozenset[str]] = {
    "pods": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "nodes": frozenset({"spec.unschedulable"}),
    "events": frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
    "jobs": frozenset({"status.successful"}),
}

_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

_RS_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def resource_for(kind: str) -> Resource:
    """Resolve ``Deployment``, ``deployment``, ``deployments`` or ``deployments.apps``."""
    wanted = kind.lower()
    for res in RESOURCES:
        if wanted in (res.kind.lower(), res.plural, res.name):
            return res
    raise KeyError(f"unknown resource kind {kind!r}")


# --------------------------------------------------------------------------------------------------
# Errors, requests, faults


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Obj | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _STATUS_REASONS.get(code, "Unknown")
        self.details = details
        self.headers = dict(headers or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _not_found(res: Resource, name: str) -> ApiError:
    details = {"name": name, "group": res.group, "kind": res.plural}
    return ApiError(404, f'{res.name} "{name}" not found', details=details)


def _conflict(res: Resource, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {res.name} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        details={"name": name, "group": res.group, "kind": res.plural},
    )


class KubeRequest(NamedTuple):
    """One recorded request. The first three fields are ``(verb, path, query)``."""

    verb: str  # RBAC verb: get, list, watch, create, update, patch, delete, deletecollection
    path: str
    query: dict[str, str]
    method: str
    api_group: str
    resource: str  # "" for non-resource URLs such as /version
    subresource: str
    namespace: str
    name: str
    body: Any
    content_type: str


@dataclass
class _Route:
    res: Resource
    namespace: str
    name: str
    subresource: str
    verb: str


@dataclass
class _Fault:
    method: str | None
    pattern: re.Pattern[str]
    remaining: int | None
    status: int | None = None
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


@dataclass
class _PodProgram:
    pattern: re.Pattern[str]
    phase: str
    exit_code: int
    log: str
    seconds: float | None
    remaining: int | None


# --------------------------------------------------------------------------------------------------
# Small helpers


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return _iso(datetime.now(UTC))


def _digest(value: Any, length: int = 10) -> str:
    raw = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return "".join(_RS_HASH_ALPHABET[b % len(_RS_HASH_ALPHABET)] for b in raw[:length])


def _image_id(image: str) -> str:
    repo = image.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    if "/" not in repo:
        repo = f"docker.io/library/{repo}"
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _containers(image: str | Mapping[str, str], default_name: str) -> list[Obj]:
    images = {default_name: image} if isinstance(image, str) else dict(image)
    return [
        {"name": name, "image": img, "imagePullPolicy": "IfNotPresent", "resources": {}} for name, img in images.items()
    ]


def _owner_ref(obj: Obj, controller: bool = True) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def _controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def _field_value(obj: Obj, dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


_KEY = r"[A-Za-z0-9][A-Za-z0-9./_-]*"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_NOT_EXISTS_TERM = re.compile(rf"^!\s*({_KEY})$")
_EQ_TERM = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*([A-Za-z0-9._-]*)$")
_EXISTS_TERM = re.compile(rf"^({_KEY})$")


def _requirement_holds(labels: Mapping[str, str], key: str, op: str, values: frozenset[str]) -> bool:
    if op == "in":
        return labels.get(key) in values
    if op == "notin":
        return labels.get(key) not in values
    return (key in labels) == (op == "exists")


def _selector(requirements: list[tuple[str, str, frozenset[str]]]) -> Selector:
    return lambda labels: all(_requirement_holds(labels, *req) for req in requirements)


def parse_label_selector(text: str) -> Selector:
    """Compile a label selector string (``=``/``==``/``!=``, ``key``, ``!key``, ``in``/``notin``)."""
    requirements: list[tuple[str, str, frozenset[str]]] = []
    for part in _split_selector(text):
        if m := _SET_TERM.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append((m.group(1), m.group(2), values))
        elif m := _NOT_EXISTS_TERM.match(part):
            requirements.append((m.group(1), "!exists", frozenset()))
        elif m := _EQ_TERM.match(part):
            requirements.append((m.group(1), "notin" if m.group(2) == "!=" else "in", frozenset({m.group(3)})))
        elif m := _EXISTS_TERM.match(part):
            requirements.append((m.group(1), "exists", frozenset()))
        else:
            raise ApiError(400, f"unable to parse requirement: found '{part}', expected a valid selector")
    return _selector(requirements)


def selector_from_spec(selector: Mapping[str, Any] | None) -> Selector:
    """Compile a ``LabelSelector`` object (matchLabels + matchExpressions); null selects nothing."""
    if selector is None:
        return lambda labels: False
    requirements = [(k, "in", frozenset({v})) for k, v in (selector.get("matchLabels") or {}).items()]
    operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        requirements.append((expr["key"], operators[expr["operator"]], frozenset(expr.get("values") or [])))
    return _selector(requirements)


def _parse_field_selector(res: Resource, text: str) -> Callable[[Obj], bool]:
    allowed = _FIELD_LABELS.get(res.plural, frozenset()) | {"metadata.name", "metadata.namespace"}
    terms: list[tuple[str, bool, str]] = []  # (field, must equal, value)
    for part in _split_selector(text):
        m = re.match(r"^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise ApiError(400, f"invalid selector: '{part}'; can't understand '{part}'")
        key, op, value = m.group(1), m.group(2), m.group(3).strip()
        if key not in allowed:
            raise ApiError(400, f"field label not supported: {key}")
        terms.append((key, op != "!=", value))
    return lambda obj: all((_field_value(obj, key) == value) == equal for key, equal, value in terms)


# --------------------------------------------------------------------------------------------------
# Patching

# Strategic-merge-patch merge keys of the list fields a bot is likely to touch.
_SMP_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),
    "imagePullSecrets": ("name",),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch: a merge patch that merges known object lists by their key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # $setElementOrder/..., $retainKeys, $deleteFromPrimitiveList/...
            continue
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
            continue
        current = result.get(key)
        merge_key = _list_merge_key(key, current, value)
        if merge_key is not None and isinstance(current, list):
            result[key] = _merge_list(current, value, merge_key)
        else:
            result[key] = strategic_merge_patch(current, value)
    return result


def _list_merge_key(field: str, current: Any, patch: Any) -> str | None:
    if not (isinstance(current, list) and isinstance(patch, list)):
        return None
    if not all(isinstance(item, dict) for item in [*current, *patch]):
        return None
    for candidate in _SMP_MERGE_KEYS.get(field, ()):
        if all(candidate in item for item in patch):
            return candidate
    return None


def _merge_list(current: list[Obj], patch: list[Obj], key: str) -> list[Obj]:
    result = copy.deepcopy(current)
    for item in patch:
        index = next((i for i, existing in enumerate(result) if existing.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is not None:
            result[index] = strategic_merge_patch(result[index], item)
        else:
            result.append(strategic_merge_patch({}, item))
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str], path: str) -> Any:
    for token in tokens:
        try:
            doc = doc[int(token)] if isinstance(doc, list) else doc[token]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, f"jsonpatch: doc is missing path: {path!r}") from None
    return doc


def _pointer_set(doc: Any, path: str, value: Any, insert: bool) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _walk(doc, tokens[:-1], path), tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if insert and 0 <= index <= len(parent):
            parent.insert(index, value)
        elif not insert and 0 <= index < len(parent):
            parent[index] = value
        else:
            raise ApiError(422, f"jsonpatch: index out of range in path {path!r}")
    elif isinstance(parent, dict):
        if not insert and last not in parent:
            raise ApiError(422, f"jsonpatch replace operation does not apply: doc is missing key: {path}")
        parent[last] = value
    else:
        raise ApiError(422, f"jsonpatch: cannot set {path!r}")
    return doc


def _pointer_remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    parent, last = _walk(doc, tokens[:-1], path), tokens[-1]
    try:
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, f"jsonpatch remove operation does not apply: doc is missing path: {path}") from None
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch."""
    if not isinstance(operations, list):
        raise ApiError(400, "json patch body must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "test":
            if _walk(doc, _pointer(path), path) != op.get("value"):
                raise ApiError(422, f"jsonpatch test operation does not apply: path {path!r} differs")
        elif kind in ("add", "replace"):
            doc = _pointer_set(doc, path, copy.deepcopy(op.get("value")), insert=kind == "add")
        elif kind == "remove":
            doc = _pointer_remove(doc, path)
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_walk(doc, _pointer(op["from"]), op["from"]))
            if kind == "move":
                doc = _pointer_remove(doc, op["from"])
            doc = _pointer_set(doc, path, value, insert=True)
        else:
            raise ApiError(422, f"unexpected jsonpatch operation {kind!r}")
    return doc


def apply_patch(doc: Obj, patch: Any, content_type: str) -> Obj:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json-patch+json":
        return json_patch(doc, patch)  # type: ignore[no-any-return]
    if not isinstance(patch, dict):
        raise ApiError(400, "patch body must be a JSON object")
    if media == "application/merge-patch+json":
        return merge_patch(doc, patch)  # type: ignore[no-any-return]
    # Server-side apply is approximated by a strategic merge of the applied configuration.
    if media in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
        return strategic_merge_patch(doc, patch)  # type: ignore[no-any-return]
    raise ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json-patch+json, application/merge-patch+json, "
        f"application/strategic-merge-patch+json, application/apply-patch+yaml (got {media!r})",
    )


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    standin: KubeStandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        self.server.standin._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# The stand-in


class KubeStandIn:
    """A fake Kubernetes API server on ``127.0.0.1``; use as a context manager.

    ``rollout_seconds``: how long a workload rollout (and PDB recovery after an eviction) takes.
    ``pod_run_seconds``: how long a pod created through the API takes to finish.
    ``token``: if set, requests without ``Authorization: Bearer <token>`` get 401.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        rollout_seconds: float = 0.3,
        pod_run_seconds: float = 0.2,
        watch_timeout_seconds: float = 30.0,
        user: str = DEFAULT_USER,
    ) -> None:
        self.token = token
        self.rollout_seconds = rollout_seconds
        self.pod_run_seconds = pod_run_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.user = user
        self.server_errors: list[str] = []  # tracebacks of handler bugs answered with 500
        # Every JSON document answered (watch events one by one), as sent: tests validate them against the
        # Kubernetes schemas (tests/peers/kube_schema.py), so the stand-in never answers what a server would not.
        self.answers: list[bytes] = []

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._store: dict[str, dict[tuple[str, str], Obj]] = {r.name: {} for r in RESOURCES}
        self._rv = 100
        self._events: list[tuple[int, str, str, Obj]] = []  # (rv, type, resource name, object)
        self._event_rvs: list[int] = []
        self._requests: list[KubeRequest] = []
        self._faults: list[_Fault] = []
        self._delays: list[_Fault] = []
        self._logs: dict[tuple[str, str, str], str] = {}
        self._rollouts: dict[tuple[str, str, str], float] = {}
        self._stuck: set[tuple[str, str, str]] = set()
        self._pod_timers: dict[tuple[str, str], tuple[float, _PodProgram | None]] = {}
        self._programs: list[_PodProgram] = []
        self._pdb_budget: dict[tuple[str, str], int] = {}
        self._pdb_restores: list[tuple[float, str, str, str]] = []
        self._counter = 0
        # Seeded objects get strictly increasing creation timestamps starting an hour ago, so "newest"
        # is well defined even though real timestamps only have one-second resolution.
        self._seed_clock = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        self._last_created = self._seed_clock

        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.add_namespace(ns)

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeStandIn:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> KubeStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client configuration ------------------------------------------------------------------

    def client_configuration(self) -> k8s_client.Configuration:
        config = k8s_client.Configuration(host=self.url)
        if self.token is not None:
            config.api_key = {"BearerToken": self.token}
            config.api_key_prefix = {"BearerToken": "Bearer"}
        return config

    def api_client(self) -> k8s_client.ApiClient:
        return k8s_client.ApiClient(self.client_configuration())

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default", context: str = "stand-in") -> Path:
        """Write a kubeconfig pointing at this server (bearer-token user) and return its path."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": "registry-bot", "user": {"token": self.token or "stand-in-token"}}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": "registry-bot", "namespace": namespace}}
            ],
            "current-context": context,
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- seeding -------------------------------------------------------------------------------

    def add_object(self, obj: Obj) -> Obj:
        """Store any object of a known kind; missing metadata is filled in like the API server."""
        with self._lock:
            res = resource_for(obj["kind"])
            stored = self._insert(res, copy.deepcopy(obj))
            return copy.deepcopy(stored)

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        with self._lock:
            if (existing := self._store[NAMESPACES.name].get(("", name))) is not None:
                return copy.deepcopy(existing)
            obj = {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/metadata.name": name, **(labels or {})},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
            return copy.deepcopy(self._insert(NAMESPACES, obj))

    def add_node(
        self,
        name: str,
        ready: bool = True,
        *,
        unschedulable: bool = False,
        labels: Mapping[str, str] | None = None,
        kubelet_version: str = "v1.33.1",
    ) -> Obj:
        with self._lock:
            now = _now()
            conditions = [
                {
                    "type": ctype,
                    "status": "False",
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for ctype, reason, message in (
                    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                )
            ]
            conditions.append(
                {
                    "type": "Ready",
                    "status": "True" if ready else "Unknown",
                    "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                    "message": "kubelet is posting ready status" if ready else "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            )
            obj = {
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        **(labels or {}),
                    },
                },
                "spec": {"unschedulable": True} if unschedulable else {},
                "status": {
                    "conditions": conditions,
                    "addresses": [{"type": "Hostname", "address": name}],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"boot.{name}")),
                        "containerRuntimeVersion": "containerd://1.7.27",
                        "kernelVersion": "6.8.0-60-generic",
                        "kubeProxyVersion": kubelet_version,
                        "kubeletVersion": kubelet_version,
                        "machineID": hashlib.md5(name.encode()).hexdigest(),
                        "operatingSystem": "linux",
                        "osImage": "Ubuntu 24.04.2 LTS",
                        "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                    },
                },
            }
            stored = self._insert(NODES, obj)
            self._sync_cordon_taint(stored)
            return copy.deepcopy(stored)

    def add_deployment(
        self,
        ns: str,
        name: str,
        image: str | Mapping[str, str],
        replicas: int = 2,
        init_image: str | None = None,
        paused: bool = False,
        labels: Mapping[str, str] | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        ready_replicas: int | None = None,
        with_pods: bool = False,
    ) -> Obj:
        """Seed a converged Deployment (and its ReplicaSet).

        ``image`` is one image (container named after the Deployment) or ``{container: image}``.
        ``ready_replicas`` seeds a degraded status; ``with_pods`` also creates running pods spread
        over the known nodes.
        """
        with self._lock:
            obj = self._workload_object(ns, name, image, labels, annotations, init_image)
            obj["spec"].update(
                {
                    "replicas": replicas,
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                    },
                    "revisionHistoryLimit": 10,
                    "progressDeadlineSeconds": 600,
                }
            )
            if paused:
                obj["spec"]["paused"] = True
            stored = self._insert(DEPLOYMENTS, obj)
            stored["status"] = self._workload_status(DEPLOYMENTS, stored, "done")
            if ready_replicas is not None:
                self._degrade(stored, ready_replicas)
            self._sync_replicasets(stored)
            self._save(DEPLOYMENTS, stored)
            if with_pods:
                self._spawn_workload_pods(DEPLOYMENTS, stored)
            return copy.deepcopy(stored)

    def add_statefulset(
        self,
        ns: str,
        name: str,
        image: str | Mapping[str, str],
        replicas: int = 1,
        init_image: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        with_pods: bool = False,
    ) -> Obj:
        with self._lock:
            obj = self._workload_object(ns, name, image, labels, annotations, init_image)
            obj["spec"].update(
                {
                    "replicas": replicas,
                    "serviceName": name,
                    "podManagementPolicy": "OrderedReady",
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                    "revisionHistoryLimit": 10,
                }
            )
            stored = self._insert(STATEFULSETS, obj)
            stored["status"] = self._workload_status(STATEFULSETS, stored, "done")
            self._save(STATEFULSETS, stored)
            if with_pods:
                self._spawn_workload_pods(STATEFULSETS, stored)
            return copy.deepcopy(stored)

    def add_daemonset(
        self,
        ns: str,
        name: str,
        image: str | Mapping[str, str],
        init_image: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        desired: int | None = None,
        with_pods: bool = False,
    ) -> Obj:
        """Seed a converged DaemonSet; ``desired`` defaults to the number of known nodes (min 1)."""
        with self._lock:
            obj = self._workload_object(ns, name, image, labels, annotations, init_image)
            obj["spec"]["updateStrategy"] = {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
            }
            obj["spec"]["revisionHistoryLimit"] = 10
            if desired is None:
                desired = max(len(self._store[NODES.name]), 1)
            obj["status"] = {"desiredNumberScheduled": desired}
            stored = self._insert(DAEMONSETS, obj)
            stored["status"] = self._workload_status(DAEMONSETS, stored, "done")
            self._save(DAEMONSETS, stored)
            if with_pods:
                self._spawn_workload_pods(DAEMONSETS, stored)
            return copy.deepcopy(stored)

    def add_pod(
        self,
        ns: str,
        name: str,
        image: str | Mapping[str, str],
        node: str | None = None,
        phase: str | None = None,
        waiting_reason: str | None = None,
        labels: Mapping[str, str] | None = None,
        owner: tuple[str, str] | None = None,
        *,
        init_image: str | None = None,
        init_waiting_reason: str | None = None,
        annotations: Mapping[str, str] | None = None,
        log: str | None = None,
        restart_count: int = 0,
        created: datetime | None = None,
    ) -> Obj:
        """Seed a pod.

        ``phase`` defaults to ``Running``, or ``Pending`` when a container or init container is
        waiting (``waiting_reason`` / ``init_waiting_reason`` such as ``ImagePullBackOff``).
        ``owner`` is ``(kind, name)`` of an existing Deployment, ReplicaSet, StatefulSet, DaemonSet,
        Job or Node; the pod then carries the owner's template labels and the right ownerReference
        (a Deployment's pod is owned by its current ReplicaSet, as in a real cluster).
        """
        with self._lock:
            pod_labels: dict[str, str] = {}
            owners: list[Obj] = []
            template_spec: Obj = {}
            if owner is not None:
                pod_labels, owners, template_spec = self._owner_context(ns, owner)
            pod_labels.update(labels or {})
            # A single image goes into the owner's (first) container, else one named after the pod.
            default_container = (template_spec.get("containers") or [{"name": name}])[0]["name"]
            spec: Obj = {"containers": _containers(image, default_container)}
            if init_image is not None:
                init_name = (template_spec.get("initContainers") or [{"name": "init"}])[0]["name"]
                spec["initContainers"] = _containers(init_image, init_name)
            if phase is None:
                phase = "Pending" if (waiting_reason or init_waiting_reason) else "Running"
            pod = self._build_pod(
                ns,
                name,
                spec,
                pod_labels,
                owners,
                node,
                phase,
                waiting_reason=waiting_reason,
                init_waiting_reason=init_waiting_reason,
                restart_count=restart_count,
            )
            if annotations:
                pod["metadata"]["annotations"] = dict(annotations)
            if created is not None:
                pod["metadata"]["creationTimestamp"] = _iso(created)
            stored = self._insert(PODS, pod)
            if log is not None:
                self._logs[(ns, name, spec["containers"][0]["name"])] = log
            return copy.deepcopy(stored)

    def add_cronjob(self, ns: str, name: str, image: str, schedule: str = "0 * * * *", *, suspend: bool = False) -> Obj:
        with self._lock:
            template = {
                "metadata": {},
                "spec": {"containers": _containers(image, name), "restartPolicy": "Never"},
            }
            obj = {
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "schedule": schedule,
                    "suspend": suspend,
                    "concurrencyPolicy": "Forbid",
                    "successfulJobsHistoryLimit": 3,
                    "failedJobsHistoryLimit": 1,
                    "jobTemplate": {"metadata": {}, "spec": {"backoffLimit": 0, "template": template}},
                },
                "status": {},
            }
            return copy.deepcopy(self._insert(CRONJOBS, obj))

    def add_job_pod(
        self,
        ns: str = "monitoring",
        job: str = "forgejo-integrity-probe-29000000",
        log: str = "",
        *,
        phase: str = "Succeeded",
        exit_code: int | None = None,
        image: str = "registry.example.org/tools/integrity-probe:1.0",
        node: str | None = None,
        created: datetime | None = None,
    ) -> Obj:
        """Seed a finished Job (created if missing) and a pod of it carrying ``log``.

        The pod is labelled ``job-name=<job>`` / ``batch.kubernetes.io/job-name=<job>`` and is
        named ``<job>-xxxxx``. Each seeded object is newer than the previous one. If a CronJob
        named like the job minus its ``-<digits>`` suffix exists, the Job is owned by it.
        """
        with self._lock:
            if exit_code is None:
                exit_code = 0 if phase == "Succeeded" else 1
            job_obj = self._store[JOBS.name].get((ns, job))
            if job_obj is None:
                job_obj = self._insert(JOBS, self._job_object(ns, job, image))
                if created is not None:
                    job_obj["metadata"]["creationTimestamp"] = _iso(created)
                job_obj["status"] = {"startTime": job_obj["metadata"]["creationTimestamp"]}
                self._save(JOBS, job_obj)
            pod = self._job_pod(job_obj, node)
            if created is not None:
                pod["metadata"]["creationTimestamp"] = _iso(created)
            pod = self._insert(PODS, pod)
            program = _PodProgram(re.compile(""), phase, exit_code, log, None, None)
            self._finish_pod(pod, program)
            return copy.deepcopy(self._store[PODS.name][(ns, pod["metadata"]["name"])])

    def add_pdb(
        self,
        ns: str,
        name: str,
        selector: Mapping[str, str] | str,
        disruptions_allowed: int = 0,
        *,
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
    ) -> Obj:
        """Seed a policy/v1 PodDisruptionBudget.

        ``selector`` is ``matchLabels`` or a label selector string of equality terms
        (``"app=web,tier=db"``). ``disruptions_allowed`` is reported as the budget's status.
        """
        with self._lock:
            if isinstance(selector, str):
                match = dict(term.split("=", 1) for term in _split_selector(selector))
            else:
                match = dict(selector)
            spec: Obj = {"selector": {"matchLabels": match}}
            if min_available is not None:
                spec["minAvailable"] = min_available
            elif max_unavailable is not None:
                spec["maxUnavailable"] = max_unavailable
            else:
                spec["maxUnavailable"] = disruptions_allowed
            obj = {"metadata": {"name": name, "namespace": ns}, "spec": spec, "status": {}}
            stored = self._insert(PDBS, obj)
            self._pdb_budget[(ns, name)] = disruptions_allowed
            self._set_pdb_status(stored, disruptions_allowed)
            return copy.deepcopy(stored)

    def add_lease(self, ns: str, name: str, holder: str | None = None, duration_seconds: int = 15) -> Obj:
        with self._lock:
            spec: Obj = {"leaseDurationSeconds": duration_seconds}
            if holder is not None:
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                spec.update({"holderIdentity": holder, "acquireTime": now, "renewTime": now})
            obj = {"metadata": {"name": name, "namespace": ns}, "spec": spec}
            return copy.deepcopy(self._insert(LEASES, obj))

    # -- test-side control ---------------------------------------------------------------------

    def stuck(self, kind: str, ns: str, name: str, stuck: bool = True) -> None:
        """Make the workload's rollouts never finish (Deployments report ProgressDeadlineExceeded
        once ``rollout_seconds`` have passed). ``stuck=False`` lets it finish again."""
        key = (resource_for(kind).name, ns, name)
        with self._lock:
            if stuck:
                self._stuck.add(key)
            else:
                self._stuck.discard(key)

    def set_pod_log(self, ns: str, name: str, log: str, container: str | None = None) -> None:
        with self._lock:
            pod = self._lookup(PODS, ns, name)
            self._logs[(ns, name, container or pod["spec"]["containers"][0]["name"])] = log

    def program_pods(
        self,
        name_regex: str,
        *,
        phase: str = "Succeeded",
        exit_code: int | None = None,
        log: str = "",
        seconds: float | None = None,
        times: int | None = None,
    ) -> None:
        """Decide how future pods created through the API (directly or via a Job) whose name
        matches ``name_regex`` end: ``phase`` Succeeded/Failed (or Running to never finish),
        their log and after how long (default ``pod_run_seconds``). Latest program wins."""
        if exit_code is None:
            exit_code = 0 if phase == "Succeeded" else 1
        with self._lock:
            self._programs.insert(0, _PodProgram(re.compile(name_regex), phase, exit_code, log, seconds, times))

    def set_pdb(self, ns: str, name: str, disruptions_allowed: int) -> None:
        with self._lock:
            pdb = self._lookup(PDBS, ns, name)
            self._pdb_budget[(ns, name)] = disruptions_allowed
            self._pdb_restores = [r for r in self._pdb_restores if (r[1], r[2]) != (ns, name)]
            pdb["status"].pop("disruptedPods", None)
            self._set_pdb_status(pdb, disruptions_allowed)

    def patch_object(self, kind: str, ns: str | None, name: str, patch: Mapping[str, Any]) -> Obj:
        """Merge-patch a stored object as an external actor would (status included). A spec
        change bumps the generation and starts a rollout, exactly like an API PATCH."""
        res = resource_for(kind)
        with self._lock:
            self._tick()
            old = self._lookup(res, ns or "", name)
            new = merge_patch(old, dict(patch))
            return copy.deepcopy(self._commit_update(res, old, new))

    def delete_object(self, kind: str, ns: str | None, name: str) -> None:
        with self._lock:
            self._delete(resource_for(kind), ns or "", name, cascade=True)

    def fault(
        self,
        method: str | None,
        path_regex: str,
        status: int,
        times: int | None = 1,
        reason: str | None = None,
        message: str | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``times`` (None: all) requests whose HTTP ``method`` (None: any) and
        path (``re.search``, query excluded) match with a ``Status`` error. The message defaults to
        what the real API server would say (e.g. an RBAC denial naming the verb and resource)."""
        with self._lock:
            self._faults.append(
                _Fault(
                    method.upper() if method else None,
                    re.compile(path_regex),
                    times,
                    status=status,
                    reason=reason,
                    message=message,
                    retry_after=retry_after,
                )
            )

    def delay(self, method: str | None, path_regex: str, seconds: float, times: int | None = None) -> None:
        """Answer matching requests only after ``seconds`` (to exercise client timeouts)."""
        with self._lock:
            self._delays.append(
                _Fault(method.upper() if method else None, re.compile(path_regex), times, delay=seconds)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    # -- inspection ----------------------------------------------------------------------------

    def get(self, kind: str, ns: str | None, name: str) -> Obj | None:
        """A copy of the stored object (time-driven changes applied), or None."""
        res = resource_for(kind)
        with self._lock:
            self._tick()
            obj = self._store[res.name].get(((ns or "") if res.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str, ns: str | None = None) -> list[Obj]:
        res = resource_for(kind)
        with self._lock:
            self._tick()
            found = [o for (o_ns, _), o in sorted(self._store[res.name].items()) if ns is None or o_ns == ns]
            return copy.deepcopy(found)

    @property
    def requests(self) -> list[KubeRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def rbac_requests(self) -> list[tuple[str, str, str, str, str]]:
        """``(apiGroup, resource, subresource, verb, namespace)`` of every resource request."""
        return [(r.api_group, r.resource, r.subresource, r.verb, r.namespace) for r in self.requests if r.resource]

    def requests_not_allowed_by(self, rules: Iterable[Mapping[str, Any]]) -> list[KubeRequest]:
        """Requests no RBAC ``PolicyRule`` (dicts with apiGroups/resources/verbs/resourceNames or
        nonResourceURLs) allows. Namespace scope (Role vs ClusterRole) is the caller's concern."""
        rules = list(rules)
        return [r for r in self.requests if not any(_rule_allows(rule, r) for rule in rules)]

    # -- request handling ----------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        method = handler.command
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        body: Any = None
        body_error: str | None = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                body_error = f"couldn't parse request body: {exc}"
        route = _route(method, path, query)

        with self._lock:
            self._requests.append(
                KubeRequest(
                    verb=route.verb if route else method.lower(),
                    path=path,
                    query=query,
                    method=method,
                    api_group=route.res.group if route else "",
                    resource=route.res.plural if route else "",
                    subresource=route.subresource if route else "",
                    namespace=route.namespace if route else "",
                    name=route.name if route else "",
                    body=body,
                    content_type=content_type,
                )
            )
            delay = _take(self._delays, method, path)
            fault = _take(self._faults, method, path)
        if delay is not None:
            time.sleep(delay.delay)

        headers: dict[str, str] = {}
        try:
            if self.token is not None and handler.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized")
            if fault is not None:
                raise self._fault_error(fault, route)
            if body_error is not None:
                raise ApiError(400, body_error)
            if route is None:
                code, payload = self._non_resource(path)
            elif route.verb == "watch":
                self._watch(handler, route, query)
                return
            else:
                with self._lock:
                    self._tick()
                    code, payload = self._handle(route, query, body, content_type)
        except ApiError as exc:
            code, payload, headers = exc.code, exc.status(), exc.headers
        except Exception as exc:  # a bug in the stand-in: make it visible to the test
            import traceback

            self.server_errors.append(traceback.format_exc())
            code, payload = 500, ApiError(500, f"stand-in error: {exc!r}").status()
        self._respond(handler, code, payload, headers)

    def _respond(self, handler: _Handler, code: int, payload: Obj | str, headers: Mapping[str, str]) -> None:
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain"
        else:
            data, content_type = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
            with self._lock:
                self.answers.append(data)
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Audit-Id", str(uuid.uuid4()))
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def _fault_error(self, fault: _Fault, route: _Route | None) -> ApiError:
        status = fault.status or 500
        message = fault.message
        details = None
        if route is not None:
            target = f'{route.res.name} "{route.name}"' if route.name else route.res.name
            details = {"name": route.name, "group": route.res.group, "kind": route.res.plural}
            if message is None and status == 403:
                resource = route.res.plural + (f"/{route.subresource}" if route.subresource else "")
                scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
                message = (
                    f'{target} is forbidden: User "{self.user}" cannot {route.verb} resource '
                    f'"{resource}" in API group "{route.res.group}" {scope}'
                )
            elif message is None and status == 409:
                message = _conflict(route.res, route.name).message
            elif message is None and status == 404:
                message = f"{target} not found"
        if message is None:
            message = {
                429: "Too many requests, please try again later.",
                500: "Internal error occurred: injected fault",
                503: "The service is unavailable.",
            }.get(status, http.HTTPStatus(status).phrase)
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return ApiError(status, message, fault.reason, details, headers)

    @staticmethod
    def _non_resource(path: str) -> tuple[int, Obj | str]:
        if path.rstrip("/") == "/version":
            return 200, {
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.1",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2025-05-15T00:00:00Z",
                "goVersion": "go1.24.2",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"
        raise ApiError(404, "the server could not find the requested resource")

    def _handle(self, route: _Route, query: Mapping[str, str], body: Any, content_type: str) -> tuple[int, Obj | str]:
        res, verb, ns, name = route.res, route.verb, route.namespace, route.name
        if route.subresource:
            if res is PODS and route.subresource == "log" and verb == "get":
                return 200, self._pod_log(ns, name, query)
            if res is PODS and route.subresource == "eviction" and verb == "create":
                return self._evict(ns, name, body)
            raise ApiError(404, "the server could not find the requested resource")
        if verb == "list":
            return 200, self._list(res, ns, query)
        if verb == "get":
            return 200, self._lookup(res, ns, name)
        if verb == "create":
            if name:
                raise ApiError(405, "the server does not allow this method on the requested resource")
            return 201, self._create(res, ns, body)
        if verb == "update":
            return 200, self._replace(res, ns, name, body)
        if verb == "patch":
            old = self._lookup(res, ns, name)
            new = apply_patch(old, body, content_type)
            if res.has_status:
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    del new["status"]
            return 200, self._commit_update(res, old, new)
        if verb == "delete":
            return 200, self._delete_response(res, ns, name, query, body)
        raise ApiError(405, "the server does not allow this method on the requested resource")

    # -- generic storage -----------------------------------------------------------------------

    def _lookup(self, res: Resource, ns: str, name: str) -> Obj:
        obj = self._store[res.name].get((ns if res.namespaced else "", name))
        if obj is None:
            raise _not_found(res, name)
        return obj

    def _next_created(self) -> str:
        self._seed_clock += timedelta(seconds=1)
        self._last_created = max(self._last_created, self._seed_clock)
        return _iso(self._seed_clock)

    def _api_created(self) -> str:
        # Objects created through the API use real time, kept strictly after everything earlier.
        self._last_created = max(datetime.now(UTC).replace(microsecond=0), self._last_created + timedelta(seconds=1))
        return _iso(self._last_created)

    def _suffix(self, length: int = 5) -> str:
        self._counter += 1
        return _digest(["suffix", self._counter], length)

    def _fill_metadata(self, res: Resource, obj: Obj, created: str) -> Obj:
        obj["apiVersion"] = res.api_version
        obj["kind"] = res.kind
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, f"{res.kind}.{res.group or 'core'} is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + self._suffix()
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", created)
        if res.tracks_generation:
            meta.setdefault("generation", 1)
        if not res.namespaced:
            meta.pop("namespace", None)
        return obj

    def _insert(self, res: Resource, obj: Obj) -> Obj:
        """Seed path: fill metadata, create the namespace if needed, store."""
        self._fill_metadata(res, obj, self._next_created())
        if res.namespaced:
            obj["metadata"].setdefault("namespace", "default")
            ns = obj["metadata"]["namespace"]
            if ("", ns) not in self._store[NAMESPACES.name]:
                self.add_namespace(ns)
        self._save(res, obj, "ADDED")
        return obj

    def _save(self, res: Resource, obj: Obj, event: str = "MODIFIED") -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", "") if res.namespaced else "", obj["metadata"]["name"])
        self._store[res.name][key] = obj
        self._record_event(event, res, obj)

    def _record_event(self, event: str, res: Resource, obj: Obj) -> None:
        self._events.append((self._rv, event, res.name, copy.deepcopy(obj)))
        self._event_rvs.append(self._rv)
        self._cond.notify_all()

    def _list(self, res: Resource, ns: str, query: Mapping[str, str]) -> Obj:
        items = self._matching(res, ns, query)
        meta: Obj = {"resourceVersion": str(self._rv)}
        offset = 0
        if query.get("continue"):
            try:
                offset = int(base64.urlsafe_b64decode(query["continue"]).decode())
            except ValueError:
                raise ApiError(410, "The provided continue parameter is too old", reason="Expired") from None
        limit = int(query.get("limit") or 0)
        page = items[offset : offset + limit] if limit else items[offset:]
        if limit and offset + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        # Items of a real List response carry no kind/apiVersion of their own.
        stripped = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": stripped}

    def _matching(self, res: Resource, ns: str, query: Mapping[str, str]) -> list[Obj]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = _parse_field_selector(res, query.get("fieldSelector", ""))
        return [
            obj
            for (obj_ns, _), obj in sorted(self._store[res.name].items())
            if (not ns or obj_ns == ns) and labels(obj["metadata"].get("labels") or {}) and fields(obj)
        ]

    def _create(self, res: Resource, ns: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was empty or not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        for volatile in ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(volatile, None)
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise ApiError(
                    400, "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
            if ("", ns) not in self._store[NAMESPACES.name]:
                raise _not_found(NAMESPACES, ns)
        self._fill_metadata(res, obj, self._api_created())
        name = meta["name"]
        if (ns if res.namespaced else "", name) in self._store[res.name]:
            raise ApiError(
                409,
                f'{res.name} "{name}" already exists',
                reason="AlreadyExists",
                details={"name": name, "group": res.group, "kind": res.plural},
            )
        if res is PODS:
            self._prepare_created_pod(obj)
        elif res in _WORKLOADS:
            obj["status"] = {}
            if res is DAEMONSETS:
                obj["status"]["desiredNumberScheduled"] = max(len(self._store[NODES.name]), 1)
        elif res is JOBS:
            self._default_job(obj)
        self._save(res, obj, "ADDED")
        if res in _WORKLOADS:
            self._start_rollout(res, obj)
        elif res is JOBS and not obj["spec"].get("suspend"):
            self._start_job(obj)
        elif res is NODES:
            self._sync_cordon_taint(obj)
        return obj

    def _replace(self, res: Resource, ns: str, name: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was empty or not a JSON object")
        old = self._lookup(res, ns, name)
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        if meta.get("name") != name:
            raise ApiError(
                400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if not meta.get("resourceVersion"):
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if res.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return self._commit_update(res, old, new)

    def _commit_update(self, res: Resource, old: Obj, new: Obj) -> Obj:
        """Shared tail of PUT and PATCH: preconditions, immutable fields, generation, hooks."""
        old_meta, meta = old["metadata"], new.setdefault("metadata", {})
        if meta.get("resourceVersion", old_meta["resourceVersion"]) != old_meta["resourceVersion"]:
            raise _conflict(res, old_meta["name"])
        if meta.get("uid", old_meta["uid"]) != old_meta["uid"]:
            raise ApiError(
                409,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
            )
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        spec_changed = old.get("spec") != new.get("spec")
        if spec_changed and res.tracks_generation:
            meta["generation"] = old_meta.get("generation", 1) + 1
        if new == old:
            return old  # a no-op write does not bump the resourceVersion
        self._save(res, new)
        if res in _WORKLOADS and spec_changed:
            self._start_rollout(res, new)
        elif res is NODES:
            self._sync_cordon_taint(new)
        return new

    def _delete_response(self, res: Resource, ns: str, name: str, query: Mapping[str, str], body: Any) -> Obj:
        policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
        if policy is None and (query.get("orphanDependents") == "true" or (body or {}).get("orphanDependents") is True):
            policy = "Orphan"
        # batch/v1 Jobs still default to orphaning their pods, as in the real API.
        cascade = policy != "Orphan" if policy else res is not JOBS
        obj = self._delete(res, ns, name, cascade=cascade)
        if res is PODS:
            gone = copy.deepcopy(obj)
            gone["metadata"]["deletionTimestamp"] = _now()
            gone["metadata"]["deletionGracePeriodSeconds"] = 30
            return gone
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": res.group, "kind": res.plural, "uid": obj["metadata"]["uid"]},
        }

    def _delete(self, res: Resource, ns: str, name: str, cascade: bool) -> Obj:
        obj = self._lookup(res, ns, name)
        del self._store[res.name][(ns if res.namespaced else "", name)]
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._record_event("DELETED", res, obj)
        uid = obj["metadata"]["uid"]
        if res is PODS:
            self._pod_timers.pop((ns, name), None)
            for key in [k for k in self._logs if k[:2] == (ns, name)]:
                del self._logs[key]
        if res is NAMESPACES:
            for other in RESOURCES:
                if other.namespaced:
                    for obj_ns, obj_name in [k for k in self._store[other.name] if k[0] == name]:
                        self._delete(other, obj_ns, obj_name, cascade=False)
        elif cascade:
            dependents = [
                (other, key)
                for other in RESOURCES
                for key, dependent in self._store[other.name].items()
                if any(ref.get("uid") == uid for ref in dependent["metadata"].get("ownerReferences") or [])
            ]
            for other, (obj_ns, obj_name) in dependents:
                if (obj_ns, obj_name) in self._store[other.name]:
                    self._delete(other, obj_ns, obj_name, cascade=True)
        return obj

    # -- watch ---------------------------------------------------------------------------------

    def _watch(self, handler: _Handler, route: _Route, query: Mapping[str, str]) -> None:
        res, ns = route.res, route.namespace
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = _parse_field_selector(res, query.get("fieldSelector", ""))

        def wanted(obj: Obj) -> bool:
            obj_ns = obj["metadata"].get("namespace", "")
            return (not ns or obj_ns == ns) and labels(obj["metadata"].get("labels") or {}) and fields(obj)

        timeout = float(query.get("timeoutSeconds") or self.watch_timeout_seconds)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._tick()
            start = query.get("resourceVersion", "")
            if start in ("", "0"):
                pending = [{"type": "ADDED", "object": o} for o in self._matching(res, ns, query)]
                last = self._rv
            else:
                pending, last = [], int(start)
            lines = [json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in pending]
            self.answers.extend(line.rstrip(b"\n") for line in lines)

        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.close_connection = True
        try:
            while True:
                for line in lines:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                handler.wfile.flush()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing.is_set():
                    break
                with self._cond:
                    self._tick()
                    if self._rv == last:
                        self._cond.wait(timeout=min(0.05, remaining))
                        self._tick()
                    start_index = bisect.bisect_right(self._event_rvs, last)
                    events = [
                        {"type": etype, "object": obj}
                        for _, etype, res_name, obj in self._events[start_index:]
                        if res_name == res.name and wanted(obj)
                    ]
                    last = self._rv
                    lines = [json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events]
                    self.answers.extend(line.rstrip(b"\n") for line in lines)
            handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- time-driven simulation ----------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        for key, started in list(self._rollouts.items()):
            res = _BY_NAME[key[0]]
            obj = self._store[res.name].get(key[1:])
            if obj is None:
                del self._rollouts[key]
                continue
            if res is DEPLOYMENTS and obj["spec"].get("paused"):
                continue
            elapsed, stuck = now - started, key in self._stuck
            if elapsed >= self.rollout_seconds and not stuck:
                del self._rollouts[key]
                self._finish_rollout(res, obj)
            elif elapsed >= self.rollout_seconds:
                self._set_status(res, obj, self._workload_status(res, obj, "deadline"))
            elif elapsed >= self.rollout_seconds / 2:
                self._set_status(res, obj, self._workload_status(res, obj, "progressing"))
        for pod_key, (due, program) in list(self._pod_timers.items()):
            if now >= due:
                del self._pod_timers[pod_key]
                pod = self._store[PODS.name].get(pod_key)
                if pod is not None:
                    self._finish_pod(pod, program)
        if self._pdb_restores:
            due_now = [r for r in self._pdb_restores if r[0] <= now]
            self._pdb_restores = [r for r in self._pdb_restores if r[0] > now]
            for _, ns, name, pod_name in due_now:
                pdb = self._store[PDBS.name].get((ns, name))
                if pdb is not None:
                    pdb["status"].get("disruptedPods", {}).pop(pod_name, None)
                    allowed = min(pdb["status"]["disruptionsAllowed"] + 1, self._pdb_budget[(ns, name)])
                    self._set_pdb_status(pdb, allowed)

    def _set_status(self, res: Resource, obj: Obj, status: Obj) -> None:
        if obj.get("status") != status:
            obj["status"] = status
            self._save(res, obj)

    # -- workloads -----------------------------------------------------------------------------

    def _workload_object(
        self,
        ns: str,
        name: str,
        image: str | Mapping[str, str],
        labels: Mapping[str, str] | None,
        annotations: Mapping[str, str] | None,
        init_image: str | None,
    ) -> Obj:
        selector = {"app": name}
        pod_spec: Obj = {
            "containers": _containers(image, name),
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
        }
        if init_image is not None:
            pod_spec["initContainers"] = _containers(init_image, "init")
        meta: Obj = {"name": name, "namespace": ns, "labels": dict(labels) if labels else dict(selector)}
        if annotations:
            meta["annotations"] = dict(annotations)
        return {
            "metadata": meta,
            "spec": {
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": {**selector, **(labels or {})}}, "spec": pod_spec},
            },
        }

    def _start_rollout(self, res: Resource, obj: Obj) -> None:
        if res is DEPLOYMENTS and obj["spec"].get("paused"):
            return  # a paused Deployment keeps its status until resumed
        meta = obj["metadata"]
        self._rollouts[(res.name, meta["namespace"], meta["name"])] = time.monotonic()

    def _finish_rollout(self, res: Resource, obj: Obj) -> None:
        if res is DEPLOYMENTS:
            self._sync_replicasets(obj)
        self._set_status(res, obj, self._workload_status(res, obj, "done"))
        # Replace the workload's pods (if the test seeded any) by healthy pods of the new template.
        old_pods = self._workload_pods(res, obj)
        if not old_pods:
            return
        old_nodes = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in old_pods}
        for pod in old_pods:
            self._delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], cascade=True)
        nodes = list(dict.fromkeys(old_nodes.values()))
        if res is DAEMONSETS:
            for node in nodes:
                self._workload_pod(res, obj, node)
            return
        for index in range(obj["spec"].get("replicas", 1)):
            name = f"{obj['metadata']['name']}-{index}" if res is STATEFULSETS else None
            node = old_nodes.get(name or "", nodes[index % len(nodes)])
            self._workload_pod(res, obj, node, name)

    def _degrade(self, deploy: Obj, ready: int) -> None:
        status = deploy["status"]
        replicas = deploy["spec"]["replicas"]
        status.update({"readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": replicas - ready})
        for key in ("readyReplicas", "availableReplicas", "unavailableReplicas"):
            if not status[key]:
                del status[key]
        if ready < replicas:
            status["conditions"][0].update(
                {
                    "status": "False",
                    "reason": "MinimumReplicasUnavailable",
                    "message": "Deployment does not have minimum availability.",
                }
            )

    def _workload_status(self, res: Resource, obj: Obj, phase: str) -> Obj:
        """Status of a workload whose rollout is ``done``, ``progressing`` or past its ``deadline``."""
        spec, meta = obj["spec"], obj["metadata"]
        old = obj.get("status") or {}
        generation = meta.get("generation", 1)
        done = phase == "done"
        if res is DEPLOYMENTS:
            replicas = spec.get("replicas", 1)
            surge = 0 if done or not replicas else 1
            rs_name = f"{meta['name']}-{_digest(spec['template'])}"
            if done:
                progressing = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
            elif phase == "progressing":
                progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
            else:
                progressing = (
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.',
                )
            conditions = old.get("conditions") or []
            status = {
                "observedGeneration": generation,
                "replicas": replicas + surge,
                "updatedReplicas": replicas if done else surge,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "unavailableReplicas": surge,
                "conditions": [
                    _condition(
                        conditions,
                        "Available",
                        "True",
                        "MinimumReplicasAvailable",
                        "Deployment has minimum availability.",
                    ),
                    _condition(conditions, "Progressing", *progressing),
                ],
            }
            # The real API omits zero counters of a Deployment status.
            return {k: v for k, v in status.items() if v != 0 or k == "observedGeneration"}
        if res is STATEFULSETS:
            replicas = spec.get("replicas", 1)
            revision = f"{meta['name']}-{_digest(spec['template'])}"
            current = revision if done else old.get("currentRevision", revision)
            behind = 0 if done or not replicas else 1
            return {
                "observedGeneration": generation,
                "replicas": replicas,
                "readyReplicas": replicas - behind,
                "currentReplicas": replicas - behind,
                "updatedReplicas": replicas if done else behind,
                "availableReplicas": replicas - behind,
                "currentRevision": current,
                "updateRevision": revision,
                "collisionCount": 0,
            }
        desired = old.get("desiredNumberScheduled", 1)
        behind = 0 if done or not desired else 1
        status = {
            "observedGeneration": generation,
            "currentNumberScheduled": desired,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": 0,
            "numberReady": desired - behind,
            "updatedNumberScheduled": desired if done else behind,
            "numberAvailable": desired - behind,
        }
        if behind:
            status["numberUnavailable"] = behind
        return status

    def _ensure_replicaset(self, deploy: Obj) -> Obj:
        """The ReplicaSet of the Deployment's current template, created (scaled to 0) if missing."""
        meta, spec = deploy["metadata"], deploy["spec"]
        pod_hash = _digest(spec["template"])
        existing = self._store[REPLICASETS.name].get((meta["namespace"], f"{meta['name']}-{pod_hash}"))
        if existing is not None:
            return existing
        revisions = [
            int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
            for rs in self._owned_replicasets(deploy)
        ]
        template = copy.deepcopy(spec["template"])
        template["metadata"].setdefault("labels", {})["pod-template-hash"] = pod_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        rs = {
            "metadata": {
                "name": f"{meta['name']}-{pod_hash}",
                "namespace": meta["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {"deployment.kubernetes.io/revision": str(max(revisions, default=0) + 1)},
                "ownerReferences": [_owner_ref(deploy)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
            "status": {"replicas": 0},
        }
        return self._insert(REPLICASETS, rs)

    def _owned_replicasets(self, deploy: Obj) -> list[Obj]:
        uid = deploy["metadata"]["uid"]
        return [rs for _, rs in sorted(self._store[REPLICASETS.name].items()) if _controller_uid(rs) == uid]

    def _sync_replicasets(self, deploy: Obj) -> None:
        """Give all replicas to the current template's ReplicaSet, as a finished rollout does."""
        current = self._ensure_replicaset(deploy)
        replicas = deploy["spec"].get("replicas", 1)
        for rs in self._owned_replicasets(deploy):
            want = replicas if rs is current else 0
            status: Obj = {"replicas": want, "observedGeneration": rs["metadata"]["generation"]}
            if want:
                status.update({"fullyLabeledReplicas": want, "readyReplicas": want, "availableReplicas": want})
            if rs["spec"]["replicas"] != want or rs["status"] != status:
                rs["spec"]["replicas"] = want
                rs["status"] = status
                self._save(REPLICASETS, rs)
        revision = current["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        deploy["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = revision

    def _workload_pods(self, res: Resource, obj: Obj) -> list[Obj]:
        owner_uids = {obj["metadata"]["uid"]}
        if res is DEPLOYMENTS:
            owner_uids = {rs["metadata"]["uid"] for rs in self._owned_replicasets(obj)}
        return [pod for _, pod in sorted(self._store[PODS.name].items()) if _controller_uid(pod) in owner_uids]

    def _schedulable_nodes(self) -> list[str]:
        return [
            name for (_, name), node in sorted(self._store[NODES.name].items()) if not node["spec"].get("unschedulable")
        ] or [name for (_, name) in sorted(self._store[NODES.name])]

    def _spawn_workload_pods(self, res: Resource, obj: Obj) -> None:
        nodes: list[str | None] = [*self._schedulable_nodes()] or [None]
        if res is DAEMONSETS:
            for node in nodes:
                self._workload_pod(res, obj, node)
            return
        for index in range(obj["spec"].get("replicas", 1)):
            node = nodes[index % len(nodes)]
            name = f"{obj['metadata']['name']}-{index}" if res is STATEFULSETS else None
            self._workload_pod(res, obj, node, name)

    def _workload_pod(self, res: Resource, obj: Obj, node: str | None, name: str | None = None) -> Obj:
        """A running pod of the workload's current template."""
        template = obj["spec"]["template"]
        labels = dict(template["metadata"].get("labels") or {})
        if res is DEPLOYMENTS:
            owner = self._ensure_replicaset(obj)
            labels["pod-template-hash"] = owner["metadata"]["labels"]["pod-template-hash"]
            name = name or f"{owner['metadata']['name']}-{self._suffix()}"
        else:
            owner = obj
            labels["controller-revision-hash"] = f"{obj['metadata']['name']}-{_digest(template)}"
            name = name or f"{obj['metadata']['name']}-{self._suffix()}"
        pod = self._build_pod(
            obj["metadata"]["namespace"],
            name,
            copy.deepcopy(template["spec"]),
            labels,
            [_owner_ref(owner)],
            node,
            "Running",
        )
        return self._insert(PODS, pod)

    def _owner_context(self, ns: str, owner: tuple[str, str]) -> tuple[dict[str, str], list[Obj], Obj]:
        """Labels, ownerReferences and template pod spec for a pod of ``(kind, name)``."""
        kind, name = owner
        res = resource_for(kind)
        target = self._store[res.name].get((ns if res.namespaced else "", name))
        if target is None:
            raise KeyError(f"owner {kind} {name!r} not found in namespace {ns!r}: seed it first")
        template = target.get("spec", {}).get("template", {})
        labels = dict(template.get("metadata", {}).get("labels") or {})
        if res is DEPLOYMENTS:
            rs = self._ensure_replicaset(target)
            labels["pod-template-hash"] = rs["metadata"]["labels"]["pod-template-hash"]
            return labels, [_owner_ref(rs)], template["spec"]
        if res in (STATEFULSETS, DAEMONSETS):
            labels["controller-revision-hash"] = f"{name}-{_digest(template)}"
        return labels, [_owner_ref(target)], template.get("spec") or {}

    # -- pods ----------------------------------------------------------------------------------

    def _build_pod(
        self,
        ns: str,
        name: str,
        spec: Obj,
        labels: Mapping[str, str],
        owners: list[Obj],
        node: str | None,
        phase: str,
        *,
        waiting_reason: str | None = None,
        init_waiting_reason: str | None = None,
        restart_count: int = 0,
    ) -> Obj:
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("schedulerName", "default-scheduler")
        if node is not None:
            spec["nodeName"] = node
        meta: Obj = {"name": name, "namespace": ns, "labels": dict(labels)}
        if owners:
            meta["ownerReferences"] = owners
        pod = {"metadata": meta, "spec": spec}
        pod["status"] = self._pod_status(
            pod,
            phase,
            waiting_reason=waiting_reason,
            init_waiting_reason=init_waiting_reason,
            restart_count=restart_count,
        )
        return pod

    def _pod_status(
        self,
        pod: Obj,
        phase: str,
        *,
        waiting_reason: str | None = None,
        init_waiting_reason: str | None = None,
        restart_count: int = 0,
        exit_code: int = 0,
    ) -> Obj:
        now = _now()
        spec = pod["spec"]
        previous = pod.get("status") or {}
        self._counter += 1
        node = spec.get("nodeName")
        status: Obj = {"phase": phase, "qosClass": "BestEffort"}
        if node is None:
            status["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": now}
            ]
            return status
        status.update(
            {
                "hostIP": f"192.168.0.{2 + sum(node.encode()) % 250}",
                "podIP": previous.get("podIP") or f"10.244.{self._counter // 250 % 250}.{self._counter % 250 + 2}",
                "startTime": previous.get("startTime") or now,
            }
        )
        running = phase == "Running" and not waiting_reason and not init_waiting_reason
        initialized = not init_waiting_reason

        def container_status(container: Obj, waiting: str | None, init: bool) -> Obj:
            image = container.get("image", "")
            entry: Obj = {
                "name": container["name"],
                "image": image,
                "imageID": "",
                "ready": False,
                "restartCount": 0 if init else restart_count,
                "started": False,
            }
            if waiting is None and not init and phase == "Pending":
                waiting = "ContainerCreating"
            if waiting is not None:
                entry["state"] = {"waiting": {"reason": waiting}}
                if message := _waiting_message(waiting, image):
                    entry["state"]["waiting"]["message"] = message
                if waiting != "CrashLoopBackOff":
                    return entry
                entry["lastState"] = {
                    "terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}
                }
            container_key = f"{pod['metadata']['name']}/{container['name']}"
            entry["imageID"] = _image_id(image)
            entry["containerID"] = f"containerd://{hashlib.sha256(container_key.encode()).hexdigest()}"
            if waiting is not None:
                return entry
            if init or phase in ("Succeeded", "Failed"):
                code = 0 if init else exit_code
                entry["state"] = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": now,
                        "finishedAt": now,
                    }
                }
            else:
                entry.update({"ready": running, "started": True, "state": {"running": {"startedAt": now}}})
            return entry

        init_containers = spec.get("initContainers") or []
        if init_containers:
            # The first init container carries the failure; the ones after it have not started.
            init_waiting: list[str | None] = [init_waiting_reason] + (
                [None if init_waiting_reason is None else "PodInitializing"] * (len(init_containers) - 1)
            )
            status["initContainerStatuses"] = [
                container_status(c, waiting, init=True)
                for c, waiting in zip(init_containers, init_waiting, strict=True)
            ]
        status["containerStatuses"] = [
            container_status(c, waiting_reason if initialized else "PodInitializing", init=False)
            for c in spec["containers"]
        ]
        ready = "True" if running else "False"
        finished = phase in ("Succeeded", "Failed")
        status["conditions"] = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True" if initialized else "False", "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now}
            | ({} if running else {"reason": "PodCompleted" if finished else "ContainersNotReady"}),
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now}
            | ({} if running else {"reason": "PodCompleted" if finished else "ContainersNotReady"}),
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]
        return status

    def _program_for(self, pod_name: str) -> _PodProgram | None:
        for program in self._programs:
            if program.pattern.search(pod_name) and program.remaining != 0:
                if program.remaining is not None:
                    program.remaining -= 1
                return program
        return None

    def _prepare_created_pod(self, pod: Obj) -> None:
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("schedulerName", "default-scheduler")
        if not spec.get("nodeName"):
            nodes = self._schedulable_nodes()
            if nodes:
                spec["nodeName"] = nodes[self._counter % len(nodes)]
        pod["status"] = self._pod_status(pod, "Pending")
        program = self._program_for(pod["metadata"]["name"])
        seconds = program.seconds if program and program.seconds is not None else self.pod_run_seconds
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._pod_timers[key] = (time.monotonic() + seconds, program)

    def _finish_pod(self, pod: Obj, program: _PodProgram | None) -> None:
        phase = program.phase if program else "Succeeded"
        exit_code = program.exit_code if program else 0
        pod["status"] = self._pod_status(pod, phase, exit_code=exit_code)
        self._save(PODS, pod)
        meta = pod["metadata"]
        if program and program.log:
            self._logs[(meta["namespace"], meta["name"], pod["spec"]["containers"][0]["name"])] = program.log
        if phase in ("Succeeded", "Failed"):
            self._job_pod_finished(pod, phase)

    def _pod_log(self, ns: str, name: str, query: Mapping[str, str]) -> str:
        pod = self._lookup(PODS, ns, name)
        containers = pod["spec"]["containers"]
        all_names = [c["name"] for c in pod["spec"].get("initContainers", []) + containers]
        container = query.get("container")
        if container is None:
            if len(containers) > 1:
                raise ApiError(
                    400,
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(c['name'] for c in containers)}]",
                )
            container = containers[0]["name"]
        elif container not in all_names:
            raise ApiError(400, f"container {container} is not valid for pod {name}")
        log = self._logs.get((ns, name, container))
        if log is None:
            statuses = pod["status"].get("containerStatuses", []) + pod["status"].get("initContainerStatuses", [])
            state: Obj = next((s.get("state", {}) for s in statuses if s["name"] == container), {})
            if "waiting" in state:
                reason = state["waiting"].get("reason", "")
                raise ApiError(
                    400, f'container "{container}" in pod "{name}" is waiting to start: {_waiting_log_hint(reason)}'
                )
            log = ""
        if query.get("tailLines"):
            lines = log.splitlines(keepends=True)
            tail = int(query["tailLines"])
            log = "".join(lines[-tail:]) if tail > 0 else ""
        if query.get("limitBytes"):
            log = log.encode()[: int(query["limitBytes"])].decode(errors="ignore")
        return log

    # -- jobs ----------------------------------------------------------------------------------

    def _job_object(self, ns: str, name: str, image: str) -> Obj:
        obj: Obj = {
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {},
                    "spec": {"containers": _containers(image, "probe"), "restartPolicy": "Never"},
                },
            },
        }
        cronjob_name = re.sub(r"-\d+$", "", name)
        cronjob = self._store[CRONJOBS.name].get((ns, cronjob_name))
        if cronjob is not None and cronjob_name != name:
            obj["metadata"]["ownerReferences"] = [_owner_ref(cronjob)]
            obj["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "cronjob-controller"}
            obj["spec"] = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"])
        obj["metadata"]["uid"] = str(uuid.uuid4())
        self._default_job(obj)
        return obj

    @staticmethod
    def _default_job(job: Obj) -> None:
        meta, spec = job["metadata"], job.setdefault("spec", {})
        uid = meta.setdefault("uid", str(uuid.uuid4()))
        name = meta["name"]
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta.setdefault("labels", {}).update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
        )
        job.setdefault("status", {})

    def _job_pod(self, job: Obj, node: str | None) -> Obj:
        template = job["spec"]["template"]
        if node is None:
            nodes = self._schedulable_nodes()
            node = template["spec"].get("nodeName") or (nodes[self._counter % len(nodes)] if nodes else None)
        return self._build_pod(
            job["metadata"]["namespace"],
            f"{job['metadata']['name']}-{self._suffix()}",
            copy.deepcopy(template["spec"]),
            template["metadata"]["labels"],
            [_owner_ref(job)],
            node,
            "Pending",
        )

    def _start_job(self, job: Obj) -> None:
        pod = self._job_pod(job, None)
        self._fill_metadata(PODS, pod, self._api_created())
        self._prepare_created_pod(pod)
        self._save(PODS, pod, "ADDED")
        job["status"] = {"active": 1, "ready": 0, "startTime": _now()}
        self._save(JOBS, job)

    def _job_pod_finished(self, pod: Obj, phase: str) -> None:
        job_uid = _controller_uid(pod)
        job = next((j for j in self._store[JOBS.name].values() if j["metadata"]["uid"] == job_uid), None)
        if job is None:
            return
        now = _now()
        status: Obj = {"startTime": job.get("status", {}).get("startTime", now), "ready": 0, "terminating": 0}
        if phase == "Succeeded":
            status.update(
                {
                    "succeeded": 1,
                    "completionTime": now,
                    "conditions": [
                        _job_condition(
                            "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", now
                        ),
                        _job_condition(
                            "Complete", "CompletionsReached", "Reached expected number of succeeded pods", now
                        ),
                    ],
                }
            )
        else:
            status.update(
                {
                    "failed": 1,
                    "conditions": [
                        _job_condition(
                            "FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now
                        ),
                        _job_condition(
                            "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now
                        ),
                    ],
                }
            )
        job["status"] = status
        self._save(JOBS, job)

    # -- nodes, eviction, PDBs -----------------------------------------------------------------

    def _sync_cordon_taint(self, node: Obj) -> None:
        key = "node.kubernetes.io/unschedulable"
        taints = [t for t in node["spec"].get("taints") or [] if t.get("key") != key]
        if node["spec"].get("unschedulable"):
            taints.append({"key": key, "effect": "NoSchedule", "timeAdded": _now()})
        if taints != (node["spec"].get("taints") or []):
            if taints:
                node["spec"]["taints"] = taints
            else:
                node["spec"].pop("taints", None)
            self._save(NODES, node)

    def _evict(self, ns: str, name: str, body: Any) -> tuple[int, Obj]:
        pod = self._lookup(PODS, ns, name)
        body_name = ((body or {}).get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise ApiError(400, "name in URL does not match name in Eviction object")
        # Pending and terminated pods can always be evicted, whatever their budget says.
        if pod["status"].get("phase") not in ("Pending", "Succeeded", "Failed"):
            labels = pod["metadata"].get("labels") or {}
            pdbs = [
                pdb
                for (pdb_ns, _), pdb in sorted(self._store[PDBS.name].items())
                if pdb_ns == ns and selector_from_spec(pdb["spec"].get("selector"))(labels)
            ]
            if len(pdbs) > 1:
                raise ApiError(
                    500,
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                )
            if pdbs:
                pdb = pdbs[0]
                status = pdb["status"]
                if status.get("disruptionsAllowed", 0) <= 0:
                    raise ApiError(
                        429,
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        details={
                            "causes": [
                                {
                                    "reason": "DisruptionBudget",
                                    "message": f"The disruption budget {pdb['metadata']['name']} needs "
                                    f"{status.get('desiredHealthy', 0)} healthy pods and has "
                                    f"{status.get('currentHealthy', 0)} currently",
                                }
                            ]
                        },
                    )
                status.setdefault("disruptedPods", {})[name] = _now()
                self._set_pdb_status(pdb, status["disruptionsAllowed"] - 1)
                self._pdb_restores.append((time.monotonic() + self.rollout_seconds, ns, pdb["metadata"]["name"], name))
        self._delete(PODS, ns, name, cascade=True)
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _set_pdb_status(self, pdb: Obj, allowed: int) -> None:
        ns = pdb["metadata"]["namespace"]
        select = selector_from_spec(pdb["spec"].get("selector"))
        pods = [
            p
            for (p_ns, _), p in self._store[PODS.name].items()
            if p_ns == ns and select(p["metadata"].get("labels") or {})
        ]
        healthy = sum(1 for p in pods if p["status"].get("phase") == "Running")
        now = _now()
        status: Obj = {
            "observedGeneration": pdb["metadata"].get("generation", 1),
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": max(healthy - allowed, 0),
            "expectedPods": len(pods),
            "conditions": [
                {
                    "type": "DisruptionAllowed",
                    "status": "True" if allowed > 0 else "False",
                    "reason": "SufficientPods" if allowed > 0 else "InsufficientPods",
                    "message": "",
                    "observedGeneration": pdb["metadata"].get("generation", 1),
                    "lastTransitionTime": now,
                }
            ],
        }
        if pdb["status"].get("disruptedPods"):
            status["disruptedPods"] = pdb["status"]["disruptedPods"]
        pdb["status"] = status
        self._save(PDBS, pdb)


# --------------------------------------------------------------------------------------------------
# Module-level helpers that need the classes above


def _route(method: str, path: str, query: Mapping[str, str]) -> _Route | None:
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in _BY_PATH:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    res = _BY_PATH.get((group, version, rest[0]))
    if res is None or (namespace and not res.namespaced):
        return None
    if res.namespaced and not namespace and len(rest) > 1:
        return None
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if res is NAMESPACES:
        namespace = name  # RBAC treats a namespace as living in itself
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)
    if verb is None:
        if method == "DELETE":
            verb = "delete" if name else "deletecollection"
        elif name:
            verb = "get"
        else:
            verb = "watch" if query.get("watch") in ("true", "1") else "list"
    return _Route(res, namespace, name, subresource, verb)


def _take(faults: list[_Fault], method: str, path: str) -> _Fault | None:
    for fault in faults:
        if fault.matches(method, path):
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    faults.remove(fault)
            return fault
    return None


def _rule_allows(rule: Mapping[str, Any], request: KubeRequest) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and request.verb not in verbs:
        return False
    if not request.resource:
        return any(
            url == request.path or (url.endswith("*") and request.path.startswith(url[:-1]))
            for url in rule.get("nonResourceURLs") or []
        )
    groups = rule.get("apiGroups") or []
    if "*" not in groups and request.api_group not in groups:
        return False
    wanted = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    resources = rule.get("resources") or []
    if not any(
        r in ("*", wanted) or (request.subresource and r in (f"*/{request.subresource}", f"{request.resource}/*"))
        for r in resources
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or request.name in names


def _condition(existing: list[Obj], ctype: str, status: str, reason: str, message: str) -> Obj:
    """A Deployment-style condition keeping its timestamps while nothing about it changes."""
    previous = next((c for c in existing if c.get("type") == ctype), None)
    now = _now()
    if previous is not None and (previous["status"], previous.get("reason")) == (status, reason):
        return dict(previous, message=message)
    transition = previous["lastTransitionTime"] if previous is not None and previous["status"] == status else now
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
    }


def _job_condition(ctype: str, reason: str, message: str, now: str) -> Obj:
    return {
        "type": ctype,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _waiting_message(reason: str, image: str) -> str:
    return {
        "ImagePullBackOff": f'Back-off pulling image "{image}"',
        "ErrImagePull": f'failed to pull and unpack image "{image}": not found',
        "InvalidImageName": f'Failed to apply default image tag "{image}": invalid reference format',
        "CrashLoopBackOff": "back-off 5m0s restarting failed container",
    }.get(reason, "")


def _waiting_log_hint(reason: str) -> str:
    return {
        "ImagePullBackOff": "trying and failing to pull image",
        "ErrImagePull": "trying and failing to pull image",
        "InvalidImageName": "image name is invalid",
    }.get(reason, "ContainerCreating")
