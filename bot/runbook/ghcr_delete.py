"""Rebuild on GHCR, its first step: delete the broken package version by id through GitHub's packages API.

The version is the one whose digest the tag points at now. It is never deleted while another tag still
uses that digest (GitHub lists a version's tags in `metadata.container.tags`); without `delete:packages`
GitHub answers 403, which is one sentence naming the scope.
"""

from __future__ import annotations

from urllib.parse import quote

from bot.errors import UserFacingError
from bot.incidents.lifecycle import StepState
from bot.registry.ghcr import GhcrPackages
from bot.registry.registries import RegistryConfig, github_token_of, registry_list
from bot.runbook.base import PhaseContext, Progress


class GhcrDeleteFailed(UserFacingError):
    pass


async def delete_ghcr_version(ctx: PhaseContext, progress: Progress) -> None:
    incident, entry = ctx.incident, registry_list(ctx.settings)[0]  # the incident's registry (a per-registry view)
    owner, _, package = incident.name.partition("/")
    if owner != entry.owner or not package:
        await progress.step("delete", f"`{incident.name}` is not a package of {entry.owner}", StepState.FAILED)
        raise GhcrDeleteFailed(
            f"{incident.name} is not one of {entry.owner}'s packages on {entry.host}; nothing was deleted."
        )
    async with ctx.registry() as client:
        digest = await client.resolve_digest(incident.name, incident.tag)
    if not digest:
        await progress.step("delete", f"`{incident.image}` does not resolve: nothing to delete", StepState.DONE)
        return
    token = await _token(ctx, entry, progress)
    async with GhcrPackages(entry, token, timeout=max(ctx.settings.registry_timeout, 15.0)) as packages:
        version = next((v for v in await packages.versions(package) if v.digest == digest), None)
        if version is None:
            await progress.step("delete", f"GitHub lists no version `{digest[:19]}`: already gone", StepState.DONE)
            return
        sharing = [f"{incident.name}:{tag}" for tag in version.tags if tag != incident.tag]
        if sharing:
            names = ", ".join(sharing[:5])
            await progress.step("delete", f"Other tags point at the same digest: {names}", StepState.FAILED)
            raise GhcrDeleteFailed(
                f"Deleting version {version.id} ({digest[:19]}) would also delete {names}; nothing was deleted. "
                "Rebuild by hand, or push the new image over the tag without deleting."
            )
        where = f"/packages/container/{quote(package, safe='')}/versions/{version.id}"
        if ctx.dry_run:
            await progress.step("delete", f"Dry run: would `DELETE {where}` ({digest[:19]})", StepState.SKIPPED)
            return
        await progress.step("delete", f"Deleting version {version.id} (`{digest[:19]}`) of `{incident.name}`…")
        status = await packages.delete_version(package, version.id)
    await _report(status, version.id, incident.image, progress)


async def _token(ctx: PhaseContext, entry: RegistryConfig, progress: Progress) -> str:
    try:
        token = await github_token_of(entry, ctx.secrets)
    except UserFacingError as exc:
        await progress.step("delete", f"No GitHub token: {exc}", StepState.FAILED)
        raise GhcrDeleteFailed(f"Could not get the GitHub token for {entry.host}: {exc}") from None
    if not token:
        await progress.step("delete", "No GitHub token configured", StepState.FAILED)
        raise GhcrDeleteFailed(
            f"Give {entry.host} a password (the PAT) or github_token with delete:packages, so the bot can delete "
            "versions."
        )
    return token


async def _report(status: int, version_id: int, image: str, progress: Progress) -> None:
    if status == 403:
        await progress.step("delete", "GitHub refused the delete (HTTP 403)", StepState.FAILED)
        raise GhcrDeleteFailed(
            "The GitHub token lacks the delete:packages scope, so GitHub refused to delete the version; "
            "nothing was deleted or rebuilt."
        )
    if status == 401:
        await progress.step("delete", "GitHub refused the token (HTTP 401)", StepState.FAILED)
        raise GhcrDeleteFailed("GitHub refused the token (HTTP 401); it may be revoked. Nothing was rebuilt.")
    if status not in (200, 202, 204, 404):
        await progress.step("delete", f"GitHub answered HTTP {status}", StepState.FAILED)
        raise GhcrDeleteFailed(f"GitHub answered HTTP {status} to the delete; nothing was rebuilt.")
    gone = "was already gone" if status == 404 else "deleted"
    await progress.step("delete", f"Broken version {version_id} of `{image}` {gone}", StepState.DONE)
