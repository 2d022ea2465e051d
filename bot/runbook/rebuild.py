"""Phase 2, rebuild and re-push: delete the broken version, rebuild it in CI, confirm the new one is whole."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bot.errors import UserFacingError
from bot.integrations.ci import CIError, CIRun
from bot.integrations.forgejo import ForgejoPackages
from bot.integrations.github import GitHubActions
from bot.integrations.woodpecker import Woodpecker
from bot.refs import manifest_path
from bot.registry.integrity import ACCEPT
from bot.runbook.base import PhaseContext, PhaseResult, Progress
from bot.runbook.diagnose import check_image
from bot.text import escape

STEP_ICONS = {
    "success": "✅",
    "failure": "❌",
    "error": "❌",
    "killed": "❌",
    "running": "⏳",
    "pending": "⏸️",
    "created": "⏸️",
    "skipped": "⏭️",
    "blocked": "⛔",
    "declined": "⛔",
    "canceled": "⛔",
}


@dataclass(frozen=True)
class BuildTarget:
    backend: str  # woodpecker or github
    repo: str  # owner/name in the CI
    branch: str
    workflow: str = ""  # GitHub workflow file or id

    def describe(self) -> str:
        if self.backend == "github":
            return f"GitHub Actions {self.repo} workflow {self.workflow} on {self.branch}"
        return f"Woodpecker {self.repo} on {self.branch}"


def build_target(ctx: PhaseContext) -> BuildTarget:
    """The CI that builds this image: the YAML `images:` entry, else the same owner/name and CI_BRANCH."""
    name = ctx.incident.name
    entry: dict[str, Any] = dict(ctx.settings.images.get(name) or {})
    backend = str(entry.get("ci") or ctx.settings.ci_backend)
    repo = str(entry.get("repo") or "/".join(name.split("/")[:2]))
    branch = str(entry.get("branch") or entry.get("ref") or ctx.settings.ci_branch)
    workflow = str(entry.get("workflow") or "build.yml")
    return BuildTarget(backend, repo, branch, workflow)


class PhaseFailed(UserFacingError):
    pass


async def rebuild(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    target = build_target(ctx)
    try:
        before = await recheck(ctx, progress)
        if before is not None:
            return before
        await delete_broken_version(ctx, progress)
        run = await run_ci(ctx, progress, target)
        if run is None:  # dry run
            return PhaseResult(True, "Dry run: nothing was deleted or built.", state=None)
        if not run.succeeded:
            details = await failing_log(ctx, target, run)
            await progress.step("ci", f"CI {run.status}: <{run.url}|#{run.number}>", "failed")
            return PhaseResult(False, f"The pipeline ended {run.status}: {run.url}", details=details)
        return await confirm(ctx, progress)
    except PhaseFailed as exc:
        return PhaseResult(False, str(exc))


async def recheck(ctx: PhaseContext, progress: Progress) -> PhaseResult | None:
    """Check again right before deleting anything: an image that is whole now must not be deleted."""
    await progress.step("recheck", f"Checking `{ctx.incident.image}` once more before deleting anything…")
    result = await check_image(ctx)
    if result.status == "intact":
        await progress.step("recheck", "Intact now: nothing deleted, nothing rebuilt", "done")
        return PhaseResult(
            False,
            "The image is intact now, so nothing was deleted or rebuilt. If pods still fail, restart the consumers.",
            state="diagnosed",
            data={"check": result},
        )
    if result.status == "error":
        await progress.step("recheck", f"Could not check: {escape(result.error or '')}", "failed")
        raise PhaseFailed(f"Could not check the image before deleting it ({result.error}); nothing was deleted.")
    await progress.step("recheck", f"Still broken ({len(result.problems)} problem(s))", "done")
    return None


async def delete_broken_version(ctx: PhaseContext, progress: Progress) -> None:
    incident = ctx.incident
    kind = ctx.settings.registry_kind
    if kind == "forgejo":
        owner, name, version = incident.name.split("/", 1)[0], incident.name.split("/", 1)[-1], incident.tag
        what = f"DELETE /api/v1/packages/{owner}/container/{name}/{version}"
        if ctx.dry_run:
            await progress.step("delete", f"Dry run: would `{what}`", "skipped")
            return
        await progress.step("delete", f"Deleting the broken version `{incident.image}` from Forgejo…")
        try:
            token = await ctx.secrets.get("forgejo_cleanup_token")
        except UserFacingError as exc:
            await progress.step("delete", f"No cleanup token: {exc}", "failed")
            raise PhaseFailed(f"Could not get the Forgejo cleanup token: {exc}") from None
        if not token:
            await progress.step("delete", "No cleanup token configured", "failed")
            raise PhaseFailed("Set FORGEJO_CLEANUP_TOKEN (or its Vault secret) to let the bot delete versions.")
        async with ctx.registry() as client:
            status = await ForgejoPackages(client, token).delete_version(owner, name, version)
        if status == 403:
            await progress.step("delete", "Forgejo refused the delete (HTTP 403)", "failed")
            raise PhaseFailed("The cleanup token lacks write:package: Forgejo refused to delete the version.")
        if status == 401:
            await progress.step("delete", "Forgejo refused the cleanup token (HTTP 401)", "failed")
            raise PhaseFailed("Forgejo refused the cleanup token (HTTP 401); it may be revoked.")
        if status not in (200, 202, 204, 404):
            await progress.step("delete", f"Forgejo answered HTTP {status}", "failed")
            raise PhaseFailed(f"Forgejo answered HTTP {status} to the delete; nothing was rebuilt.")
        gone = "was already gone" if status == 404 else "deleted"
        await progress.step("delete", f"Broken version `{incident.image}` {gone}", "done")
        return

    async with ctx.registry() as client:
        head = await client.request("HEAD", f"/v2/{incident.name}/manifests/{incident.tag}", headers={"Accept": ACCEPT})
        digest = head.headers.get("Docker-Content-Digest") if head.status_code == 200 else None
        if not digest:
            await progress.step("delete", f"`{incident.image}` does not resolve: nothing to delete", "done")
            return
        # A distribution registry deletes by digest, which removes every tag pointing at it.
        sharing = await tags_sharing(client, incident.name, incident.tag, digest)
        if sharing:
            names = ", ".join(sharing[:5])
            await progress.step("delete", f"Other tags point at the same digest: {escape(names)}", "failed")
            raise PhaseFailed(
                f"Deleting {digest[:19]} would also delete {names}; nothing was deleted. Rebuild by hand, "
                "or push the new image over the tag without deleting."
            )
        what = f"DELETE /v2/{incident.name}/manifests/{digest}"
        if ctx.dry_run:
            await progress.step("delete", f"Dry run: would `{what}`", "skipped")
            return
        await progress.step("delete", f"Deleting manifest `{digest[:19]}` of `{incident.name}`…")
        answer = await client.request("DELETE", manifest_path(incident.name, digest))
    if answer.status_code == 405:
        await progress.step("delete", "The registry does not allow deletes (HTTP 405)", "failed")
        raise PhaseFailed("The registry refuses deletes (storage.delete.enabled is off); nothing was rebuilt.")
    if answer.status_code in (401, 403):
        await progress.step("delete", f"The registry refused the delete (HTTP {answer.status_code})", "failed")
        raise PhaseFailed("The registry user may not delete manifests; nothing was rebuilt.")
    if answer.status_code not in (200, 202, 404):
        await progress.step("delete", f"The registry answered HTTP {answer.status_code}", "failed")
        raise PhaseFailed(f"The registry answered HTTP {answer.status_code} to the delete; nothing was rebuilt.")
    gone = "was already gone" if answer.status_code == 404 else "deleted"
    await progress.step("delete", f"Broken manifest of `{incident.image}` {gone}", "done")


async def tags_sharing(client: Any, name: str, tag: str, digest: str) -> list[str]:
    from bot.registry.scan import list_tags

    others = []
    for other in (await list_tags(client, name))[:200]:
        if other == tag:
            continue
        head = await client.request("HEAD", f"/v2/{name}/manifests/{other}", headers={"Accept": ACCEPT})
        if head.status_code == 200 and head.headers.get("Docker-Content-Digest") == digest:
            others.append(f"{name}:{other}")
    return others


async def run_ci(ctx: PhaseContext, progress: Progress, target: BuildTarget) -> CIRun | None:
    if target.backend == "github":
        return await _run_github(ctx, progress, target)
    return await _run_woodpecker(ctx, progress, target)


async def _token(ctx: PhaseContext, name: str, what: str, progress: Progress) -> str:
    try:
        token = await ctx.secrets.get(name)
    except UserFacingError as exc:
        await progress.step("ci", f"No {what} token: {exc}", "failed")
        raise PhaseFailed(f"Could not get the {what} token: {exc}") from None
    if not token:
        await progress.step("ci", f"No {what} token configured", "failed")
        raise PhaseFailed(f"Set {name.upper()} (or its Vault secret) so the bot can start builds.")
    return token


async def _run_woodpecker(ctx: PhaseContext, progress: Progress, target: BuildTarget) -> CIRun | None:
    if not ctx.settings.woodpecker_url:
        await progress.step("ci", "WOODPECKER_URL is not set", "failed")
        raise PhaseFailed("Set WOODPECKER_URL so the bot can start the rebuild.")
    token = await _token(ctx, "woodpecker_token", "Woodpecker", progress)
    client = Woodpecker(ctx.settings.woodpecker_url, token)
    try:
        owner, name = target.repo.split("/", 1)
        await progress.step("ci", f"Starting a pipeline: {target.describe()}…")
        try:
            repo_id = await client.lookup(owner, name)
            if ctx.dry_run:
                await progress.step("ci", f"Dry run: would start a manual pipeline of {target.describe()}", "skipped")
                return None
            run = await client.start(repo_id, target.branch)
        except CIError as exc:
            await progress.step("ci", str(exc), "failed")
            raise PhaseFailed(str(exc)) from None
        if run is None:
            await progress.step("ci", "Woodpecker filtered the pipeline out (no manual workflow)", "failed")
            raise PhaseFailed(
                "This repository has no workflow for manual runs: add `event: manual` to a workflow's `when:`."
            )
        return await _follow(ctx, progress, run, lambda: client.pipeline(repo_id, run.number))
    finally:
        await client.aclose()


async def _run_github(ctx: PhaseContext, progress: Progress, target: BuildTarget) -> CIRun | None:
    token = await _token(ctx, "github_token", "GitHub", progress)
    client = GitHubActions(ctx.settings.github_api_url, token)
    try:
        if ctx.dry_run:
            await progress.step("ci", f"Dry run: would dispatch {target.describe()}", "skipped")
            return None
        await progress.step("ci", f"Dispatching {target.describe()}…")
        try:
            run_id = await client.dispatch(target.repo, target.workflow, target.branch)
            run = await client.run(target.repo, run_id)
        except CIError as exc:
            await progress.step("ci", str(exc), "failed")
            raise PhaseFailed(str(exc)) from None
        return await _follow(ctx, progress, run, lambda: client.run(target.repo, run_id))
    finally:
        await client.aclose()


async def _follow(ctx: PhaseContext, progress: Progress, run: CIRun, poll: Any) -> CIRun:
    """Poll until the run ends, showing its steps in one progress line each; CI outages are waited out."""
    deadline = time.monotonic() + ctx.settings.ci_timeout
    failing_since: float | None = None
    while True:
        await _show(progress, run)
        if run.finished:
            return run
        if time.monotonic() > deadline:
            await progress.step(
                "ci", f"Gave up waiting after {ctx.settings.ci_timeout:g}s: <{run.url}|#{run.number}>", "failed"
            )
            raise PhaseFailed(f"The pipeline did not finish within {ctx.settings.ci_timeout:g}s: {run.url}")
        await asyncio.sleep(ctx.settings.ci_poll_interval)
        try:
            run = await poll()
            if failing_since is not None:
                await progress.step("ci-wait", "CI answers again", "info")
            failing_since = None
        except CIError as exc:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > ctx.settings.ci_unreachable_grace:
                await progress.step("ci", f"CI stopped answering: {exc}", "failed")
                raise PhaseFailed(
                    f"CI stopped answering while pipeline #{run.number} ran ({exc}). See {run.url}"
                ) from None
            await progress.step("ci-wait", f"CI not answering ({exc}); still waiting", "warning")


async def _show(progress: Progress, run: CIRun) -> None:
    state = "done" if run.succeeded else ("failed" if run.finished else "running")
    await progress.step("ci", f"Pipeline <{run.url}|#{run.number}>: {run.status}", state)
    for index, step in enumerate(run.steps[:30]):
        icon = STEP_ICONS.get(step.state, "•")
        where = f"{step.workflow} › " if step.workflow else ""
        await progress.step(f"ci-step-{index}", f"    {icon} {escape(where + step.name)}: {step.state}", "info")


async def failing_log(ctx: PhaseContext, target: BuildTarget, run: CIRun) -> list[str]:
    failing = next((s for s in run.steps if s.state in ("failure", "error", "killed")), None)
    if failing is None or failing.step_id is None:
        return []
    try:
        if target.backend == "github":
            client_gh = GitHubActions(ctx.settings.github_api_url, await ctx.secrets.get("github_token"))
            try:
                lines = await client_gh.log_tail(target.repo, int(failing.step_id))
            finally:
                await client_gh.aclose()
        else:
            client = Woodpecker(ctx.settings.woodpecker_url, await ctx.secrets.get("woodpecker_token"))
            try:
                owner, name = target.repo.split("/", 1)
                lines = await client.log_tail(await client.lookup(owner, name), run.number, int(failing.step_id))
            finally:
                await client.aclose()
    except UserFacingError:
        return []
    return [f"{failing.name} failed; last log lines:", *lines]


async def confirm(ctx: PhaseContext, progress: Progress) -> PhaseResult:
    incident = ctx.incident
    await progress.step("confirm", f"Confirming `{incident.image}` is back and whole…")
    if ctx.settings.registry_kind == "forgejo":
        async with ctx.registry() as client:
            owner, name = incident.name.split("/", 1)
            if not await ForgejoPackages(client).version_exists(owner, name, incident.tag):
                await progress.step("confirm", "Forgejo's packages API does not show the new version", "failed")
                return PhaseResult(False, f"The pipeline succeeded but Forgejo shows no {incident.image}.")
    result = await check_image(ctx)
    if result.status != "intact":
        await progress.step("confirm", f"The new image is {result.status}: {escape(result.verdict())}", "failed")
        details = [p.summary() for p in result.problems[:10]] or [result.error or ""]
        return PhaseResult(
            False,
            f"The rebuilt image is not whole: {escape(result.verdict())}",
            details=details,
            data={"check": result},
        )
    await progress.step("confirm", f"New `{incident.image}` is intact ({result.objects_checked} objects)", "done")
    consumers = await _consumer_count(ctx, result.digest)
    data: dict[str, Any] = {"check": result}
    if consumers == 0:
        data["schedule_verification"] = True
        summary = "Rebuilt and intact. No workload uses it, so verification is scheduled."
    else:
        summary = "Rebuilt and intact. Next: Restart consumers, so pods pull the new image."
    return PhaseResult(True, summary, state="rebuilt", data=data)


async def _consumer_count(ctx: PhaseContext, digest: str | None) -> int | None:
    if ctx.kube is None:
        return 0
    try:
        digests = frozenset(d for d in (digest, ctx.incident.digest) if d)
        return len(await ctx.kube.consumers(ctx.incident.name, ctx.incident.tag, digests))
    except UserFacingError:
        return None
