"""Phase 2, rebuild and re-push: delete the broken version, rebuild it in CI, confirm the new one is whole."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bot.errors import UserFacingError
from bot.incidents.lifecycle import Outcome, StepState
from bot.integrations.ci import CIBackend, CIError, CIRun
from bot.integrations.github import GitHubActions, GitHubBuild
from bot.integrations.woodpecker import Woodpecker, WoodpeckerBuild
from bot.registry.client import RegistryClient
from bot.registry.forgejo import ForgejoPackages
from bot.runbook.base import Link, PhaseContext, PhaseResult, Progress
from bot.runbook.diagnose import check_image

# A CI step's state, as a progress line shows it.
CI_STEP_STATE = {
    "success": StepState.DONE,
    "failure": StepState.FAILED,
    "error": StepState.FAILED,
    "killed": StepState.FAILED,
    "running": StepState.RUNNING,
    "skipped": StepState.SKIPPED,
    "blocked": StepState.SKIPPED,
    "declined": StepState.SKIPPED,
    "canceled": StepState.SKIPPED,
}
LOG_LINES = 30


@dataclass(frozen=True)
class BuildTarget:
    backend: str  # woodpecker or github
    repo: str  # owner/name in the CI
    branch: str
    workflow: str = ""  # GitHub workflow file or id


def build_target(ctx: PhaseContext) -> BuildTarget:
    """The CI that builds this image: the YAML `images:` entry, else the same owner/name and CI_BRANCH."""
    name = ctx.incident.name
    entry: dict[str, Any] = dict(ctx.settings.images.get(name) or {})
    # GHCR's images are built by GitHub Actions; the others by CI_BACKEND, unless the image says otherwise.
    default = "github" if ctx.settings.registry_kind == "ghcr" else ctx.settings.ci_backend
    backend = str(entry.get("ci") or default)
    repo = str(entry.get("repo") or "/".join(name.split("/")[:2]))
    branch = str(entry.get("branch") or entry.get("ref") or ctx.settings.ci_branch)
    workflow = str(entry.get("workflow") or "build.yml")
    return BuildTarget(backend, repo, branch, workflow)


class PhaseFailed(UserFacingError):
    pass


async def open_ci(ctx: PhaseContext, target: BuildTarget, progress: Progress) -> CIBackend:
    """The image's CI backend, chosen once here, with its token."""
    if target.backend == "github":
        token = await _github_token(ctx, progress)
        return GitHubBuild(
            GitHubActions(ctx.settings.github_api_url, token), target.repo, target.workflow, target.branch
        )
    if not ctx.settings.woodpecker_url:
        await progress.step("ci", "WOODPECKER_URL is not set", StepState.FAILED)
        raise PhaseFailed("Set WOODPECKER_URL so the bot can start the rebuild.")
    token = await _token(ctx, "woodpecker_token", "Woodpecker", progress)
    return WoodpeckerBuild(Woodpecker(ctx.settings.woodpecker_url, token), target.repo, target.branch)


async def rebuild(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    try:
        before = await recheck(ctx, progress)
        if before is not None:
            return before
        await delete_broken_version(ctx, progress)
        ci = await open_ci(ctx, build_target(ctx), progress)
        try:
            run = await run_ci(ctx, progress, ci)
            if run is None:
                return PhaseResult(Outcome.DRY_RUN, "Dry run: nothing was deleted or built.")
            if not run.succeeded:
                link = Link(run.url, f"#{run.number}")
                await progress.step("ci", f"CI {run.status}: #{run.number}", StepState.FAILED, link)
                details = await failing_log(ci, run)
                return PhaseResult.failed(f"The pipeline ended {run.status}: {run.url}", details=details, link=link)
        finally:
            await ci.aclose()
        return await confirm(ctx, progress)
    except PhaseFailed as exc:
        return PhaseResult.failed(str(exc))


async def recheck(ctx: PhaseContext, progress: Progress) -> PhaseResult | None:
    """Check again right before deleting anything: an image that is whole now must not be deleted."""
    await progress.step("recheck", f"Checking `{ctx.incident.image}` once more before deleting anything…")
    result = await check_image(ctx)
    if result.status == "intact":
        await progress.step("recheck", "Intact now: nothing deleted, nothing rebuilt", StepState.DONE)
        return PhaseResult(
            Outcome.UNNEEDED,
            "The image is intact now, so nothing was deleted or rebuilt. If pods still fail, restart the consumers.",
            check=result,
        )
    if result.status == "error":
        await progress.step("recheck", f"Could not check: {result.error or ''}", StepState.FAILED)
        raise PhaseFailed(f"Could not check the image before deleting it ({result.error}); nothing was deleted.")
    await progress.step("recheck", f"Still broken ({len(result.problems)} problem(s))", StepState.DONE)
    return None


async def delete_broken_version(ctx: PhaseContext, progress: Progress) -> None:
    if ctx.settings.registry_kind == "forgejo":
        await _delete_forgejo_version(ctx, progress)
    elif ctx.settings.registry_kind == "ghcr":
        from bot.runbook.ghcr_delete import GhcrDeleteFailed, delete_ghcr_version

        try:
            await delete_ghcr_version(ctx, progress)
        except GhcrDeleteFailed as exc:
            raise PhaseFailed(str(exc)) from None
    else:
        await _delete_manifest(ctx, progress)


async def _delete_forgejo_version(ctx: PhaseContext, progress: Progress) -> None:
    incident = ctx.incident
    ref = incident.ref
    what = f"DELETE /api/v1/packages/{ref.owner}/container/{ref.short_name}/{incident.tag}"
    if ctx.dry_run:
        await progress.step("delete", f"Dry run: would `{what}`", StepState.SKIPPED)
        return
    await progress.step("delete", f"Deleting the broken version `{incident.image}` from Forgejo…")
    try:
        token = await ctx.secrets.get("forgejo_cleanup_token")
    except UserFacingError as exc:
        await progress.step("delete", f"No cleanup token: {exc}", StepState.FAILED)
        raise PhaseFailed(f"Could not get the Forgejo cleanup token: {exc}") from None
    if not token:
        await progress.step("delete", "No cleanup token configured", StepState.FAILED)
        raise PhaseFailed("Set FORGEJO_CLEANUP_TOKEN (or its Vault secret) to let the bot delete versions.")
    async with ctx.registry() as client:
        status = await ForgejoPackages(client, token).delete_version(ref.owner, ref.short_name, incident.tag)
    refusals = {
        403: (
            "Forgejo refused the delete (HTTP 403)",
            "The cleanup token lacks write:package: Forgejo refused to delete the version.",
        ),
        401: (
            "Forgejo refused the cleanup token (HTTP 401)",
            "Forgejo refused the cleanup token (HTTP 401); it may be revoked.",
        ),
    }
    if status in refusals:
        step, reason = refusals[status]
        await progress.step("delete", step, StepState.FAILED)
        raise PhaseFailed(reason)
    if status not in (200, 202, 204, 404):
        await progress.step("delete", f"Forgejo answered HTTP {status}", StepState.FAILED)
        raise PhaseFailed(f"Forgejo answered HTTP {status} to the delete; nothing was rebuilt.")
    gone = "was already gone" if status == 404 else "deleted"
    await progress.step("delete", f"Broken version `{incident.image}` {gone}", StepState.DONE)


async def _delete_manifest(ctx: PhaseContext, progress: Progress) -> None:
    incident = ctx.incident
    async with ctx.registry() as client:
        digest = await client.resolve_digest(incident.name, incident.tag)
        if not digest:
            await progress.step("delete", f"`{incident.image}` does not resolve: nothing to delete", StepState.DONE)
            return
        # A distribution registry deletes by digest, which removes every tag pointing at it.
        sharing = await tags_sharing(client, incident.name, incident.tag, digest)
        if sharing:
            names = ", ".join(sharing[:5])
            await progress.step("delete", f"Other tags point at the same digest: {names}", StepState.FAILED)
            raise PhaseFailed(
                f"Deleting {digest[:19]} would also delete {names}; nothing was deleted. Rebuild by hand, "
                "or push the new image over the tag without deleting."
            )
        if ctx.dry_run:
            await progress.step(
                "delete", f"Dry run: would `DELETE /v2/{incident.name}/manifests/{digest}`", StepState.SKIPPED
            )
            return
        await progress.step("delete", f"Deleting manifest `{digest[:19]}` of `{incident.name}`…")
        status = await client.delete_manifest(incident.name, digest)
    if status == 405:
        await progress.step("delete", "The registry does not allow deletes (HTTP 405)", StepState.FAILED)
        raise PhaseFailed("The registry refuses deletes (storage.delete.enabled is off); nothing was rebuilt.")
    if status in (401, 403):
        await progress.step("delete", f"The registry refused the delete (HTTP {status})", StepState.FAILED)
        raise PhaseFailed("The registry user may not delete manifests; nothing was rebuilt.")
    if status not in (200, 202, 404):
        await progress.step("delete", f"The registry answered HTTP {status}", StepState.FAILED)
        raise PhaseFailed(f"The registry answered HTTP {status} to the delete; nothing was rebuilt.")
    gone = "was already gone" if status == 404 else "deleted"
    await progress.step("delete", f"Broken manifest of `{incident.image}` {gone}", StepState.DONE)


async def tags_sharing(client: RegistryClient, name: str, tag: str, digest: str) -> list[str]:
    from bot.registry.scan import list_tags

    others = []
    for other in (await list_tags(client, name))[:200]:
        if other != tag and await client.resolve_digest(name, other) == digest:
            others.append(f"{name}:{other}")
    return others


async def _github_token(ctx: PhaseContext, progress: Progress) -> str:
    """GITHUB_TOKEN; on a ghcr registry without it, that registry's GitHub token (its PAT)."""
    if ctx.settings.registry_kind == "ghcr" and not ctx.settings.github_token and not ctx.settings.vault_addr:
        from bot.registry.registries import github_token_of, registry_list

        token = await github_token_of(registry_list(ctx.settings)[0], ctx.secrets)
        if token:
            return token
    return await _token(ctx, "github_token", "GitHub", progress)


async def _token(ctx: PhaseContext, name: str, what: str, progress: Progress) -> str:
    try:
        token = await ctx.secrets.get(name)
    except UserFacingError as exc:
        await progress.step("ci", f"No {what} token: {exc}", StepState.FAILED)
        raise PhaseFailed(f"Could not get the {what} token: {exc}") from None
    if not token:
        await progress.step("ci", f"No {what} token configured", StepState.FAILED)
        raise PhaseFailed(f"Set {name.upper()} (or its Vault secret) so the bot can start builds.")
    return token


async def run_ci(ctx: PhaseContext, progress: Progress, ci: CIBackend) -> CIRun | None:
    """Start the build and follow it to its end; None on a dry run."""
    await progress.step("ci", f"Starting a build: {ci.description}…")
    try:
        await ci.prepare()
        if ctx.dry_run:
            await progress.step("ci", f"Dry run: would start {ci.description}", StepState.SKIPPED)
            return None
        run = await ci.start()
    except CIError as exc:
        await progress.step("ci", str(exc), StepState.FAILED)
        raise PhaseFailed(str(exc)) from None
    return await _follow(ctx, progress, ci, run)


async def _follow(ctx: PhaseContext, progress: Progress, ci: CIBackend, run: CIRun) -> CIRun:
    """Poll until the run ends, showing its steps in one progress line each; CI outages are waited out."""
    deadline = time.monotonic() + ctx.settings.ci_timeout
    failing_since: float | None = None
    while True:
        await _show(progress, run)
        if run.finished:
            return run
        if time.monotonic() > deadline:
            link = Link(run.url, f"#{run.number}")
            await progress.step(
                "ci", f"Gave up waiting after {ctx.settings.ci_timeout:g}s: #{run.number}", StepState.FAILED, link
            )
            raise PhaseFailed(f"The pipeline did not finish within {ctx.settings.ci_timeout:g}s: {run.url}")
        await asyncio.sleep(ctx.settings.ci_poll_interval)
        try:
            run = await ci.poll(run)
            if failing_since is not None:
                await progress.step("ci-wait", "CI answers again", StepState.INFO)
            failing_since = None
        except CIError as exc:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > ctx.settings.ci_unreachable_grace:
                await progress.step("ci", f"CI stopped answering: {exc}", StepState.FAILED)
                raise PhaseFailed(
                    f"CI stopped answering while pipeline #{run.number} ran ({exc}). See {run.url}"
                ) from None
            await progress.step("ci-wait", f"CI not answering ({exc}); still waiting", StepState.WARNING)


async def _show(progress: Progress, run: CIRun) -> None:
    state = StepState.DONE if run.succeeded else (StepState.FAILED if run.finished else StepState.RUNNING)
    await progress.step("ci", f"Pipeline #{run.number}: {run.status}", state, Link(run.url, f"#{run.number}"))
    for index, step in enumerate(run.steps[:30]):
        where = f"{step.workflow} › " if step.workflow else ""
        shown = CI_STEP_STATE.get(step.state, StepState.INFO)
        await progress.step(f"ci-step-{index}", f"    {where}{step.name}: {step.state}", shown)


async def failing_log(ci: CIBackend, run: CIRun) -> list[str]:
    failing = next((s for s in run.steps if s.state in ("failure", "error", "killed")), None)
    if failing is None:
        return []
    try:
        lines = await ci.log_tail(run, failing)
    except UserFacingError:
        return []
    return [f"{failing.name} failed; last log lines:", *lines[-LOG_LINES:]]


async def confirm(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    incident = ctx.incident
    await progress.step("confirm", f"Confirming `{incident.image}` is back and whole…")
    if ctx.settings.registry_kind == "forgejo":
        ref = incident.ref
        async with ctx.registry() as client:
            if not await ForgejoPackages(client).version_exists(ref.owner, ref.short_name, incident.tag):
                await progress.step("confirm", "Forgejo's packages API does not show the new version", StepState.FAILED)
                return PhaseResult.failed(f"The pipeline succeeded but Forgejo shows no {incident.image}.")
    result = await check_image(ctx)
    if result.status != "intact":
        await progress.step("confirm", f"The new image is {result.status}: {result.verdict()}", StepState.FAILED)
        details = [p.summary() for p in result.problems[:10]] or [result.error or ""]
        return PhaseResult.failed(f"The rebuilt image is not whole: {result.verdict()}", details=details, check=result)
    await progress.step(
        "confirm", f"New `{incident.image}` is intact ({result.objects_checked} objects)", StepState.DONE
    )
    if await _consumer_count(ctx, result.digest) == 0:
        return PhaseResult.succeeded(
            "Rebuilt and intact. No workload uses it, so verification is scheduled.",
            check=result,
            schedule_verification=True,
        )
    return PhaseResult.succeeded(
        "Rebuilt and intact. Next: Restart consumers, so pods pull the new image.", check=result
    )


async def _consumer_count(ctx: PhaseContext, digest: str | None) -> int | None:
    if ctx.kube is None:
        return 0
    try:
        digests = frozenset(d for d in (digest, ctx.incident.digest) if d)
        return len(
            await ctx.kube.consumers(
                ctx.incident.name, ctx.incident.tag, digests, hosts=ctx.settings.all_registry_hosts
            )
        )
    except UserFacingError:
        return None
