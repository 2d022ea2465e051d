"""Applying a prune: plan again, fresh; right before each delete, check that no tag pushed since points at the
digest and that no kept version needs it now; delete through the registry's own API, indexes before their
children; then walk every tag that is left (the full integrity walk) and report the verdict.

Nothing is deleted when the plan cannot be made completely; a refused delete (a missing scope) stops the
apply where it is, and what was deleted until then is reported and verified.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.errors import UserFacingError
from bot.prune.graph import Manifests, tags_now
from bot.prune.model import (
    Decision,
    Deleted,
    DeleteRefused,
    Outcome,
    Plan,
    PlanError,
    RepositoryPlan,
    Skipped,
    Verified,
    referrer_subject,
)
from bot.prune.plan import make_plan, needs
from bot.prune.sources import Source
from bot.refs import ImageRef
from bot.registry.client import RegistryClient


@dataclass
class Hooks:
    """What an apply tells its caller as it goes (the CLI prints, Slack edits a message, both audit)."""

    progress: Callable[[str], Awaitable[None]] | None = None
    deleted: Callable[[Deleted], Awaitable[None]] | None = None
    skipped: Callable[[Skipped], Awaitable[None]] | None = None
    # The digests the approvers saw planned (Slack): the fresh plan deletes no others.
    approved: frozenset[str] | None = None

    async def say(self, text: str) -> None:
        if self.progress is not None:
            await self.progress(text)


async def apply_prune(client: RegistryClient, source: Source, outcome: Outcome, hooks: Hooks | None = None) -> None:
    """Plan fresh, delete what the plan still allows, verify every tag left. Fills `outcome` in as it goes."""
    hooks = hooks or Hooks()
    manifests = Manifests(client)
    outcome.plan = plan = await make_plan(client, source, outcome.policy, manifests)
    outcome.applied = True
    total = len(plan.deletions)
    await hooks.say(f"Planned again: {total} version(s) to delete in {len(plan.counts())} repositories.")
    if total:
        await source.ready_to_delete()
    try:
        for repository in plan.repositories:
            for decision in repository.deleted:
                await _delete_one(client, source, manifests, repository, decision, outcome, hooks)
    except UserFacingError as exc:  # a refused delete (a missing scope), the registry gone: stop here
        outcome.error = str(exc)
    await hooks.say(f"Deleted {len(outcome.deleted)} of {total}; checking every tag that is left…")
    outcome.verified = await verify(client, plan)


async def _delete_one(
    client: RegistryClient,
    source: Source,
    manifests: Manifests,
    repository: RepositoryPlan,
    decision: Decision,
    outcome: Outcome,
    hooks: Hooks,
) -> None:
    tags_there: set[str] = set()
    if hooks.approved is not None and decision.digest not in hooks.approved:
        why = "not in the plan that was approved (planned since)"
    else:
        kept_after_all = {item.digest for item in outcome.skipped}
        why, tags_there = await _protected(client, manifests, repository, decision, kept_after_all)
    if why:
        skipped = Skipped(decision.repository, decision.digest, why)
        outcome.skipped.append(skipped)
        if hooks.skipped is not None:
            await hooks.skipped(skipped)
        return
    result = await source.delete(repository.versions[decision.digest], tags_there)
    deleted = Deleted(decision.repository, decision.digest, decision.tags, result)
    outcome.deleted.append(deleted)
    if hooks.deleted is not None:
        await hooks.deleted(deleted)
    await hooks.say(f"{len(outcome.deleted)} deleted: {decision.repository}@{decision.digest[:19]}")


async def _protected(
    client: RegistryClient,
    manifests: Manifests,
    repository: RepositoryPlan,
    decision: Decision,
    kept_after_all: set[str],
) -> tuple[str, set[str]]:
    """Why this digest must stay after all ('' when it may go): a tag pushed since the plan points at it, or a
    version kept now needs it (a planned one that was skipped is kept too); and the planned tags that still
    point at it."""
    try:
        tags = await tags_now(client, decision.repository)
    except PlanError as exc:
        raise DeleteRefused(f"Could not check {decision.repository} again before deleting: {exc}") from None
    planned = {(tag, d.digest) for d in repository.deleted if d.digest not in kept_after_all for tag in d.tags}
    there = {tag for tag, digest in tags.items() if digest == decision.digest}
    new_tags = sorted(there - set(decision.tags))
    if new_tags:
        return f"tag {', '.join(new_tags[:5])} points at it now", there
    roots = set(repository.kept) | {digest for tag, digest in tags.items() if (tag, digest) not in planned}
    try:
        graph = {**repository.manifests, **await manifests.walk(decision.repository, roots)}
    except PlanError as exc:
        raise DeleteRefused(f"Could not check {decision.repository} again before deleting: {exc}") from None
    referrers: dict[str, set[str]] = {}
    for manifest in graph.values():
        if manifest.subject:
            referrers.setdefault(manifest.subject, set()).add(manifest.digest)
    for tag, digest in tags.items():
        subject = referrer_subject(tag)
        if subject:
            referrers.setdefault(subject, set()).add(digest)
    seen, todo = set(roots), list(roots)
    while todo:
        for needed, why in needs(todo.pop(), graph, referrers):
            if needed == decision.digest:
                return f"now {why}", there
            if needed not in seen:
                seen.add(needed)
                todo.append(needed)
    return "", there


async def verify(client: RegistryClient, plan: Plan) -> Verified:
    """The full walk of every tag left in the planned repositories; a tag the plan kept that is gone is broken
    (a delete took it with another tag's version)."""
    from bot.registry.integrity import IntegrityChecker

    verified = Verified()
    checker = IntegrityChecker(client)
    for repository in plan.repositories:
        try:
            tags = sorted(await tags_now(client, repository.repository))
        except UserFacingError:
            tags = []
            verified.errors.append(_error(client, repository.repository))
        else:
            verified.broken += _kept_tags_gone(client, repository, set(tags))
        for tag in tags:
            result = await checker.check(ImageRef(name=repository.repository, tag=tag))
            if result.status == "intact":
                verified.intact += 1
            elif result.status == "broken":
                verified.broken.append(result)
            else:
                verified.errors.append(result)
    return verified


def _kept_tags_gone(client: RegistryClient, repository: RepositoryPlan, tags: set[str]) -> list[Any]:
    from bot.registry.model import CheckResult, Problem

    gone: list[Any] = []
    missing = "the tag is gone after the prune"
    for digest in repository.kept:
        version = repository.versions.get(digest)
        for tag in sorted(version.tags if version else ()):
            if tag not in tags:
                gone.append(
                    CheckResult(
                        reference=f"{repository.repository}:{tag}",
                        registry=client.settings.registry_host,
                        status="broken",
                        digest=digest,
                        problems=[Problem(digest, "manifest", "missing", 404, detail=missing)],
                    )
                )
    return gone


def _error(client: RegistryClient, repository: str) -> object:
    from bot.registry.model import CheckResult

    return CheckResult(
        reference=repository,
        registry=client.settings.registry_host,
        status="error",
        error=f"could not list the tags of {repository} after the prune",
    )
