"""Phase 4, verify recovery: the probe's metric back at 0 from a run newer than the fix, the bot's own full
check intact, and the consumers healthy. Each part says what it found; a part that cannot be checked says
so rather than passing silently."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bot.errors import UserFacingError
from bot.incidents.lifecycle import Outcome, StepState
from bot.integrations.kube import KubeWriter
from bot.integrations.prometheus import Prometheus
from bot.runbook.base import PhaseContext, PhaseResult, Progress
from bot.runbook.diagnose import check_image, image_digests


@dataclass
class Part:
    key: str
    outcome: str  # pass, fail, unknown
    text: str


async def verify(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    parts = [await metric_part(ctx, progress), await check_part(ctx, progress), await cluster_part(ctx, progress)]
    failed = [p for p in parts if p.outcome == "fail"]
    unknown = [p for p in parts if p.outcome == "unknown"]
    check = next(p for p in parts if p.key == "check")
    if failed:
        return PhaseResult.failed("Still broken: " + "; ".join(p.text for p in failed))
    if check.outcome == "unknown":
        return PhaseResult(Outcome.INCONCLUSIVE, f"Could not verify: {check.text}. Try Verify now later.")
    summary = "Resolved: the registry is whole again."
    if unknown:
        summary += " Not checked: " + "; ".join(p.text for p in unknown) + "."
    return PhaseResult.succeeded(summary)


async def metric_part(ctx: PhaseContext, progress: Progress) -> Part:
    settings = ctx.settings
    if not settings.prometheus_url:
        part = Part("metric", "unknown", "the probe's metric (PROMETHEUS_URL is not set)")
        await progress.step("metric", "Probe metric: not checked, PROMETHEUS_URL is not set", StepState.SKIPPED)
        return part
    instance = settings.instance.replace("\\", "\\\\").replace('"', '\\"')
    prometheus = Prometheus(settings.prometheus_url)
    try:
        failures = await prometheus.query(f'registry_manifest_integrity_failures{{instance="{instance}"}}')
        last_run = await prometheus.query(f'registry_manifest_integrity_last_run_timestamp{{instance="{instance}"}}')
    except UserFacingError as exc:
        await progress.step("metric", f"Probe metric: not checked, {exc}", StepState.WARNING)
        return Part("metric", "unknown", f"the probe's metric ({exc})")
    if not failures or not last_run:
        await progress.step(
            "metric", f"Probe metric: Prometheus has no series for instance {settings.instance}", StepState.WARNING
        )
        return Part("metric", "unknown", f"the probe's metric (no series for instance {settings.instance})")
    value = max(s.value for s in failures)
    ran = datetime.fromtimestamp(max(s.value for s in last_run), UTC)
    fixed = ctx.incident.fixed_at
    if fixed is not None and ran <= fixed:
        text = f"the probe has not run since the fix (last run {ran:%H:%M:%S} UTC, fix {fixed:%H:%M:%S} UTC)"
        await progress.step("metric", f"Probe metric: {text}", StepState.WARNING)
        return Part("metric", "unknown", text)
    if value > 0:
        # The metric counts the whole registry: another broken image must not keep this one open.
        named = await _probe_names_image(ctx)
        text = f"registry_manifest_integrity_failures is {value:g} (probe run {ran:%H:%M} UTC)"
        if named is False:
            text += ", none of them this image (the probe's log)"
            await progress.step("metric", f"Probe metric: {text}", StepState.DONE)
            return Part("metric", "pass", text)
        if named is None:
            text += "; whether this image is among them is not known (no probe log)"
            await progress.step("metric", f"Probe metric: {text}", StepState.WARNING)
            return Part("metric", "unknown", text)
        await progress.step("metric", f"Probe metric: {text}, this image among them", StepState.FAILED)
        return Part("metric", "fail", text)
    await progress.step("metric", f"Probe metric: 0 failures in the run at {ran:%H:%M:%S} UTC", StepState.DONE)
    return Part("metric", "pass", "probe reports 0")


async def check_part(ctx: PhaseContext, progress: Progress) -> Part:
    try:
        result = await check_image(ctx)
    except UserFacingError as exc:
        await progress.step("check", f"Full check: could not check ({exc})", StepState.WARNING)
        return Part("check", "unknown", str(exc))
    if result.status == "intact":
        await progress.step("check", f"Full check: intact, {result.objects_checked} objects", StepState.DONE)
        return Part("check", "pass", "intact")
    if result.status == "error":
        await progress.step("check", f"Full check: could not check ({result.error})", StepState.WARNING)
        return Part("check", "unknown", result.error or "could not check")
    text = f"the full check finds {len(result.problems)} problem(s): {result.problems[0].summary()}"
    await progress.step("check", f"Full check: {text}", StepState.FAILED)
    return Part("check", "fail", text)


async def cluster_part(ctx: PhaseContext, progress: Progress) -> Part:
    if ctx.kube is None:
        await progress.step("cluster", "Consumers: not checked, no cluster configured", StepState.SKIPPED)
        return Part("cluster", "unknown", "the consumers (no cluster configured)")
    incident = ctx.incident
    digests = image_digests(incident.digest, None)
    try:
        workloads = await ctx.kube.consumers(
            incident.name, incident.tag, digests, hosts=ctx.settings.all_registry_hosts
        )
        writer = KubeWriter(ctx.kube)
        unhealthy: list[str] = []
        for workload in workloads:
            status = await writer.rollout(workload)
            if not status.done:
                unhealthy.append(f"{workload} ({status.message})")
        failing = await ctx.kube.failing_pods(
            incident.name, incident.tag, digests, hosts=ctx.settings.all_registry_hosts
        )
    except UserFacingError as exc:
        await progress.step("cluster", f"Consumers: not checked ({exc})", StepState.WARNING)
        return Part("cluster", "unknown", f"the consumers ({exc})")
    problems = unhealthy + [f"pod {p.namespace}/{p.name} on {p.node} in {p.reason}" for p in failing]
    if problems:
        text = "; ".join(problems[:5])
        await progress.step("cluster", f"Consumers: {text}", StepState.FAILED)
        return Part("cluster", "fail", text)
    await progress.step(
        "cluster", f"Consumers: {len(workloads)} workload(s) healthy, no pod failing to pull", StepState.DONE
    )
    return Part("cluster", "pass", "healthy")


async def _probe_names_image(ctx: PhaseContext) -> bool | None:
    """Whether the probe's latest log names this image as failing; None when there is no log to read."""
    if ctx.kube is None:
        return None
    try:
        probe = await ctx.kube.probe_log()
    except UserFacingError:
        return None
    if probe is None:
        return None
    return any(f"{repo}:{tag}" == ctx.incident.image for repo, tag, _ in probe.failures)
