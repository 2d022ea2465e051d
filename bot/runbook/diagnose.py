"""Phase 1, confirm the diagnosis: the full check, the probe's log lines for the image, and its consumers."""

from __future__ import annotations

import asyncio
import json

from bot.errors import UserFacingError
from bot.incidents.lifecycle import StepState
from bot.incidents.models import Incident
from bot.integrations.kube import Workload
from bot.refs import ImageRef
from bot.registry.blobs import DeepProgress
from bot.registry.ghcr import retention_hint
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult, human_bytes
from bot.runbook.base import PhaseContext, PhaseResult, Progress

DEEP_PROGRESS_EVERY = 5.0  # seconds between progress edits of a deep check


def image_digests(incident_digest: str | None, result: CheckResult | None) -> frozenset[str]:
    """Digests a pod may be pinned to for this image: the top level and every problem's object."""
    digests = {d for d in [incident_digest, result.digest if result else None] if d}
    if result:
        digests |= {p.digest for p in result.problems if p.kind in ("index", "manifest")}
    return frozenset(digests)


async def check_image(ctx: PhaseContext) -> CheckResult:
    """The full check; a deep one when the incident is about a layer's bytes, which only a read can see."""
    incident = ctx.incident
    async with ctx.registry() as client:
        checker = IntegrityChecker(client, deep=layer_bytes_were_wrong(incident))
        return await checker.check(ImageRef(incident.name, incident.tag), display=incident.image)


def layer_bytes_were_wrong(incident: Incident) -> bool:
    problems = json.loads(incident.problems or "[]")
    return any(p.get("kind") == "layer" and p.get("reason") == "digest_mismatch" for p in problems)


async def check_to_the_bytes(ctx: PhaseContext, progress: Progress) -> CheckResult:
    """The full check; then, when the image's layers add up to at most DEEP_MAX_BYTES, the same walk hashing
    every layer (a pull would refuse a layer whose bytes are wrong, and only a read finds it)."""
    incident, limit = ctx.incident, ctx.settings.deep_max_bytes
    async with ctx.registry() as client:
        checker = IntegrityChecker(client)
        result = await checker.check(incident.ref, display=incident.image)
        size = checker.layer_bytes
        if result.status == "error" or not size:
            return result
        if size > limit:
            await progress.step(
                "deep",
                f"Layers add up to {human_bytes(size)}, over DEEP_MAX_BYTES ({human_bytes(limit)}): not hashed; "
                "`/registry check --deep` hashes them",
                StepState.SKIPPED,
            )
            return result
        await progress.step("deep", f"Hashing every layer ({human_bytes(size)})…")
        shown: set[asyncio.Task[None]] = set()

        def show(done: DeepProgress) -> None:
            text = f"Hashing every layer: {human_bytes(done.bytes_verified)} of {human_bytes(size)}"
            task = asyncio.ensure_future(progress.step("deep", f"{text}, {human_bytes(round(done.rate))}/s"))
            shown.add(task)
            task.add_done_callback(shown.discard)

        deep = IntegrityChecker(client, deep=True, on_progress=show, progress_every=DEEP_PROGRESS_EVERY)
        hashed = await deep.check(incident.ref, display=incident.image)
    if hashed.status == "error":
        await progress.step("deep", f"Could not hash the layers: {hashed.error}", StepState.WARNING)
        return result
    if hashed.status == "intact":
        await progress.step(
            "deep", f"Deep check: {human_bytes(hashed.bytes_verified)} hashed, all match", StepState.DONE
        )
    else:
        await progress.step("deep", "Deep check: stored bytes do not match their digests", StepState.FAILED)
    return hashed


async def diagnose(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    incident = ctx.incident
    await progress.step("check", f"Checking `{incident.image}` down to every blob…")
    try:
        result = await check_to_the_bytes(ctx, progress)
    except UserFacingError as exc:
        await progress.step("check", f"Could not check: {exc}", StepState.FAILED)
        return PhaseResult.failed(f"Could not check the image: {exc}")
    if result.status == "error":
        await progress.step("check", f"Could not check: {result.error}", StepState.FAILED)
        return PhaseResult.failed(f"Could not check the image: {result.error}", check=result)
    if result.status == "intact":
        await progress.step(
            "check", f"Intact now: all {result.objects_checked} objects present and matching", StepState.DONE
        )
    else:
        bad = len({p.digest for p in result.problems})
        await progress.step(
            "check", f"Broken: {bad} of {result.objects_checked} objects have problems", StepState.FAILED
        )
        for index, problem in enumerate(result.problems[:8]):
            await progress.step(f"problem-{index}", f"`{problem.summary()}`", StepState.INFO)
        if hint := retention_hint(ctx.settings.registry_kind, result):
            await progress.step("retention", hint, StepState.INFO)

    details: list[str] = []
    consumers: list[Workload] | None = None
    if ctx.kube is None:
        await progress.step(
            "cluster", "No cluster configured: probe log and consumers not looked up", StepState.SKIPPED
        )
    else:
        try:
            probe = await ctx.kube.probe_log()
            lines = [line for repo, tag, line in (probe.failures if probe else []) if f"{repo}:{tag}" == incident.image]
            if probe is None:
                await progress.step("probe", "No probe Job pod to read", StepState.SKIPPED)
            elif lines:
                await progress.step(
                    "probe", f"Probe `{probe.pod}` reports {len(lines)} failure line(s)", StepState.INFO
                )
                for index, line in enumerate(lines[:5]):
                    await progress.step(f"probe-{index}", f"`{line}`", StepState.INFO)
            else:
                await progress.step("probe", f"Probe `{probe.pod}` reports nothing for this image", StepState.INFO)
            digests = image_digests(incident.digest, result)
            workloads = await ctx.kube.consumers(
                incident.name, incident.tag, digests, hosts=ctx.settings.all_registry_hosts
            )
            consumers = workloads
            if workloads:
                names = ", ".join(f"`{w}`" for w in workloads[:10])
                more = f" and {len(workloads) - 10} more" if len(workloads) > 10 else ""
                await progress.step("consumers", f"Used by {len(workloads)} workload(s): {names}{more}", StepState.INFO)
            else:
                await progress.step("consumers", "No workload in the cluster uses this image", StepState.INFO)
            failing = await ctx.kube.failing_pods(
                incident.name, incident.tag, digests, hosts=ctx.settings.all_registry_hosts
            )
            if failing:
                nodes = sorted({p.node for p in failing if p.node})
                await progress.step(
                    "pods",
                    f"{len(failing)} pod(s) cannot pull it ({', '.join(sorted({p.reason for p in failing}))}) "
                    f"on {', '.join(nodes) or 'no node yet'}",
                    StepState.WARNING,
                )
            else:
                await progress.step("pods", "No pod is failing to pull it", StepState.INFO)
        except UserFacingError as exc:
            await progress.step("cluster", f"Cluster lookup failed: {exc}", StepState.WARNING)
            details.append(str(exc))

    if result.status == "intact":
        summary = "The image is intact now. If pods still fail, restart the consumers; then verify."
    else:
        summary = "Confirmed broken. Next: Rebuild (deletes the broken version and rebuilds it in CI)."
    return PhaseResult.succeeded(summary, details=details, check=result, consumers=consumers)
