"""The node fix, off unless NODE_ACTIONS=true and always approved by two people: cordon the node, evict its
pods honoring PodDisruptionBudgets, restart containerd through a short-lived privileged pod pinned to it,
uncordon, and wait until it is Ready."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

from bot.errors import UserFacingError
from bot.incidents.lifecycle import Outcome, StepState
from bot.integrations.kube import KubeWriter
from bot.runbook.base import PhaseContext, PhaseResult, Progress

EVICTION_RETRY = 5.0
POD_TIMEOUT = 180.0
READY_TIMEOUT = 300.0
POLL = 1.0


def containerd_pod(node: str, image: str) -> dict[str, Any]:
    name = f"registry-bot-containerd-{secrets.token_hex(3)}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "registry-bot-node-action"}},
        "spec": {
            "nodeName": node,
            "hostPID": True,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "restart-containerd",
                    "image": image,
                    "command": [
                        "nsenter",
                        "-t",
                        "1",
                        "-m",
                        "-u",
                        "-i",
                        "-n",
                        "-p",
                        "--",
                        "systemctl",
                        "restart",
                        "containerd",
                    ],
                    "securityContext": {"privileged": True},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                }
            ],
        },
    }


async def node(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    target = ctx.target or ""
    if not ctx.settings.node_actions:
        return PhaseResult.failed("Node actions are off (NODE_ACTIONS=false).")
    if ctx.kube is None:
        return PhaseResult.failed("No Kubernetes cluster is configured.")
    writer = KubeWriter(ctx.kube)
    await progress.step("pods", f"Listing the pods on {target}…")
    pods = await pods_to_move(ctx, writer, target)
    bare = [f"{ns}/{name}" for ns, name, controlled in pods if not controlled]
    if bare:
        await progress.step("pods", f"Pods without a controller on {target}: {', '.join(bare[:5])}", StepState.FAILED)
        return PhaseResult.failed(
            f"kubectl drain would refuse: {', '.join(bare[:5])} on {target} have no controller and would be lost. "
            "Move or delete them, then run it again. The node was not touched.",
        )
    await progress.step("pods", f"{len(pods)} pod(s) to evict from {target}", StepState.DONE)
    if ctx.dry_run:
        for key, text in (
            ("cordon", f"cordon {target}"),
            ("evict", f"evict the pods on {target}"),
            ("containerd", f"restart containerd on {target} with a privileged pod"),
            ("uncordon", f"uncordon {target}"),
        ):
            await progress.step(key, f"Dry run: would {text}", StepState.SKIPPED)
        return PhaseResult(Outcome.DRY_RUN, "Dry run: the node was not touched.")

    await progress.step("cordon", f"Cordoning {target}…")
    await writer.cordon(target, True)
    await progress.step("cordon", f"{target} cordoned", StepState.DONE)
    try:
        await evict_all(ctx, progress, writer, target, [(ns, name) for ns, name, _ in pods])
        await restart_containerd(ctx, progress, writer, target)
    except UserFacingError as exc:
        await progress.step(
            "uncordon", f"Leaving {target} cordoned after the failure: uncordon it when fixed", StepState.WARNING
        )
        return PhaseResult.failed(f"{exc} {target} stays cordoned: `kubectl uncordon {target}` when it is fixed.")
    await progress.step("uncordon", f"Uncordoning {target}…")
    await writer.cordon(target, False)
    await progress.step("uncordon", f"{target} uncordoned", StepState.DONE)
    deadline = time.monotonic() + READY_TIMEOUT
    await progress.step("ready", f"Waiting for {target} to be Ready…")
    while not await writer.node_ready(target):
        if time.monotonic() > deadline:
            await progress.step("ready", f"{target} is not Ready after {READY_TIMEOUT:g}s", StepState.FAILED)
            return PhaseResult.failed(f"{target} did not become Ready within {READY_TIMEOUT:g}s.")
        await asyncio.sleep(POLL)
    await progress.step("ready", f"{target} is Ready", StepState.DONE)
    return PhaseResult.succeeded(
        f"{target} drained, containerd restarted, node Ready. Verification is scheduled.", schedule_verification=True
    )


async def pods_to_move(ctx: PhaseContext, writer: KubeWriter, target: str) -> list[tuple[str, str, bool]]:
    # Never evict the replica running this phase: it would kill the drain halfway (containerd's restart
    # leaves running containers alone, so staying on the node is safe). A pod's HOSTNAME is its name.
    own = (ctx.settings.pod_namespace, ctx.settings.pod_name or os.environ.get("HOSTNAME", ""))
    return [pod for pod in await writer.pods_to_evict(target) if pod[:2] != own]


async def evict_all(
    ctx: PhaseContext, progress: Progress, writer: KubeWriter, target: str, pods: list[tuple[str, str]]
) -> None:
    await progress.step("evict", f"Evicting {len(pods)} pod(s) from {target}…")
    deadline = time.monotonic() + ctx.settings.eviction_timeout
    pending = list(pods)
    while pending:
        for namespace, name in list(pending):
            outcome = await writer.evict(namespace, name)
            if outcome in ("evicted", "gone"):
                pending.remove((namespace, name))
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(f"{ns}/{n}" for ns, n in pending[:5])
            await progress.step("evict", f"A PodDisruptionBudget still blocks {names}", StepState.FAILED)
            raise UserFacingError(
                f"Evictions of {names} were refused by a PodDisruptionBudget for {ctx.settings.eviction_timeout:g}s."
            )
        await progress.step("evict", f"{len(pending)} pod(s) wait for their PodDisruptionBudget; retrying…")
        await asyncio.sleep(EVICTION_RETRY)
    await progress.step("evict", f"{len(pods)} pod(s) evicted from {target}", StepState.DONE)


async def restart_containerd(ctx: PhaseContext, progress: Progress, writer: KubeWriter, target: str) -> None:
    namespace = ctx.settings.pod_namespace
    await progress.step("containerd", f"Restarting containerd on {target}…")
    name = await writer.create_pod(namespace, containerd_pod(target, ctx.settings.node_shell_image))
    try:
        deadline = time.monotonic() + POD_TIMEOUT
        while True:
            phase = await writer.pod_phase(namespace, name)
            if phase == "Succeeded":
                break
            if phase == "Failed":
                log = (await writer.pod_log(namespace, name)).strip().splitlines()[-3:]
                await progress.step(
                    "containerd", f"The restart pod failed: {' / '.join(log) or 'no log'}", StepState.FAILED
                )
                raise UserFacingError(f"Restarting containerd on {target} failed.")
            if time.monotonic() > deadline:
                await progress.step(
                    "containerd", f"The restart pod did not finish in {POD_TIMEOUT:g}s", StepState.FAILED
                )
                raise UserFacingError(f"Restarting containerd on {target} did not finish in time.")
            await asyncio.sleep(POLL)
    finally:
        await writer.delete_pod(namespace, name)
    await progress.step("containerd", f"containerd restarted on {target}", StepState.DONE)
