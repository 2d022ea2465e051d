"""Phase 3, restart consumers: roll every workload that uses the image, as `kubectl rollout restart` does,
follow each rollout with kubectl's rules, and offer the node fix where pods still cannot pull."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from bot.errors import UserFacingError
from bot.incidents.lifecycle import Outcome, StepState
from bot.integrations.kube import KubeWriter, Workload
from bot.runbook.base import PhaseContext, PhaseResult, Progress
from bot.runbook.diagnose import image_digests

POLL = 1.0


async def restart(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    incident = ctx.incident
    if ctx.kube is None:
        await progress.step(
            "consumers", "No cluster configured (KUBE_ENABLED, KUBECONFIG or in-cluster)", StepState.FAILED
        )
        return PhaseResult.failed("No Kubernetes cluster is configured, so there is nothing the bot can restart.")
    digests = image_digests(incident.digest, None)
    workloads = await ctx.kube.consumers(incident.name, incident.tag, digests, hosts=ctx.settings.all_registry_hosts)
    if not workloads:
        await progress.step("consumers", "No workload uses this image", StepState.DONE)
        nodes = await stuck_nodes(ctx, progress, digests)
        return PhaseResult.succeeded(
            "No workload uses this image; verification is scheduled.",
            schedule_verification=True,
            consumers=[],
            nodes=nodes,
        )
    await progress.step("consumers", f"{len(workloads)} workload(s) use `{incident.image}`", StepState.INFO)
    writer = KubeWriter(ctx.kube)
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rolling: list[Workload] = []
    skipped: list[str] = []
    failures: list[str] = []
    for workload in workloads:
        key = f"w-{workload.kind}-{workload.namespace}-{workload.name}"
        if workload.paused:
            await progress.step(key, f"`{workload}`: paused, not touched (resume it, then restart)", StepState.WARNING)
            skipped.append(str(workload))
            continue
        if ctx.dry_run:
            await progress.step(key, f"`{workload}`: dry run, would set {at} as restartedAt", StepState.SKIPPED)
            continue
        try:
            await writer.restart(workload, at)
        except UserFacingError as exc:
            await progress.step(key, f"`{workload}`: {exc}", StepState.FAILED)
            failures.append(str(exc))
            continue
        await progress.step(key, f"`{workload}`: restarted, rolling out…")
        rolling.append(workload)
    if ctx.dry_run:
        return PhaseResult(Outcome.DRY_RUN, "Dry run: nothing was restarted.")

    failures += await follow_rollouts(ctx, progress, writer, rolling)
    node_offer = await stuck_nodes(ctx, progress, digests)
    if failures:
        return PhaseResult.failed(
            f"{len(failures)} rollout(s) did not finish: {'; '.join(failures)}", consumers=workloads, nodes=node_offer
        )
    summary = f"{len(rolling)} workload(s) rolled out."
    if skipped:
        summary += f" Not touched (paused): {', '.join(skipped)}."
    if node_offer:
        summary += f" Pods still cannot pull on {', '.join(node_offer)}."
    else:
        summary += " Verification is scheduled."
    return PhaseResult.succeeded(summary, schedule_verification=True, consumers=workloads, nodes=node_offer)


async def follow_rollouts(
    ctx: PhaseContext, progress: Progress, writer: KubeWriter, rolling: list[Workload]
) -> list[str]:
    deadline = time.monotonic() + ctx.settings.rollout_timeout
    pending = list(rolling)
    failures: list[str] = []
    while pending:
        for workload in list(pending):
            key = f"w-{workload.kind}-{workload.namespace}-{workload.name}"
            try:
                status = await writer.rollout(workload)
            except UserFacingError as exc:
                await progress.step(key, f"`{workload}`: {exc}", StepState.FAILED)
                failures.append(f"{workload}: {exc}")
                pending.remove(workload)
                continue
            if status.done:
                await progress.step(key, f"`{workload}`: {status.message}", StepState.DONE)
                pending.remove(workload)
            elif status.failed:
                await progress.step(key, f"`{workload}`: {status.message}", StepState.FAILED)
                failures.append(f"{workload} {status.message}")
                pending.remove(workload)
            else:
                await progress.step(key, f"`{workload}`: {status.message}…")
        if not pending:
            break
        if time.monotonic() > deadline:
            for workload in pending:
                key = f"w-{workload.kind}-{workload.namespace}-{workload.name}"
                await progress.step(
                    key, f"`{workload}`: not rolled out after {ctx.settings.rollout_timeout:g}s", StepState.FAILED
                )
                failures.append(f"{workload} timed out")
            break
        await asyncio.sleep(POLL)
    return failures


async def stuck_nodes(ctx: PhaseContext, progress: Progress, digests: frozenset[str]) -> list[str]:
    """Nodes where pods of the image are still in ImagePullBackOff after the restart."""
    assert ctx.kube is not None
    failing = await ctx.kube.failing_pods(
        ctx.incident.name, ctx.incident.tag, digests, hosts=ctx.settings.all_registry_hosts
    )
    nodes = sorted({pod.node for pod in failing if pod.node})
    if not nodes:
        await progress.step("pods", "No pod of the image is failing to pull", StepState.DONE)
        return []
    offer = " — offering the node fix below" if ctx.settings.node_actions else " (NODE_ACTIONS is off)"
    await progress.step("pods", f"Pods still cannot pull on {', '.join(nodes)}{offer}", StepState.WARNING)
    return nodes
