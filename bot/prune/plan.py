"""The plan: per repository, what the policy keeps, everything a kept version needs, and the rest to delete.

Keep: the N newest tagged versions (by the registry's creation time where it gives one, else the index's or
config's `created`), every tag matching --keep-tags, everything newer than --older-than. Then, however deep:
every manifest a kept index lists, the subject of a kept referrer, and the referrers (signatures, SBOMs) of a
kept image. A child shared by a kept and a deleted index stays. Everything else the registry can delete is
planned for deletion, indexes and referrers before what they point at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from bot.prune.graph import Manifests, tags_now
from bot.prune.model import Decision, Manifest, Plan, Policy, RepositoryPlan, Version, age_text, referrer_subject
from bot.prune.sources import Source
from bot.registry.client import RegistryClient

REPOSITORIES_IN_FLIGHT = 4
NEVER = datetime.min.replace(tzinfo=UTC)


async def make_plan(client: RegistryClient, source: Source, policy: Policy, manifests: Manifests | None = None) -> Plan:
    """The whole registry's plan (or one repository's); PlanError when any part of it cannot be made."""
    manifests = manifests or Manifests(client)
    plan = Plan(client.settings.registry_host, source.kind, policy)
    repositories = [policy.repository] if policy.repository else await source.repositories()
    gate = asyncio.Semaphore(REPOSITORIES_IN_FLIGHT)
    now = datetime.now(UTC)

    async def one(repository: str) -> RepositoryPlan:
        async with gate:
            return await plan_repository(client, source, manifests, repository, policy, now, plan.notes)

    for repository_plan in await asyncio.gather(*(one(r) for r in repositories)):
        if repository_plan.versions:
            plan.repositories.append(repository_plan)
    return plan


async def plan_repository(
    client: RegistryClient,
    source: Source,
    manifests: Manifests,
    repository: str,
    policy: Policy,
    now: datetime,
    notes: list[str],
) -> RepositoryPlan:
    versions = await inventory(client, source, repository)
    graph = await manifests.walk(repository, list(versions))
    for digest in graph:
        versions.setdefault(digest, Version(repository, digest))
    referrers = await _referrers(manifests, repository, versions, graph)
    for version in versions.values():
        if version.tags and version.created is None and not graph[version.digest].missing:
            version.created = await manifests.created(repository, graph[version.digest])
    undated = sorted(tag for v in versions.values() if v.tags and v.created is None for tag in v.tags)
    if undated:
        notes.append(f"{repository}: no creation time for {', '.join(undated[:5])}"
                     f"{' and more' if len(undated) > 5 else ''}; they count as the oldest.")  # fmt: skip
    kept = _seeds(versions, policy, now)
    _keep_foreign_referrers(kept, versions, graph)
    _close(kept, graph, referrers)
    for digest in kept:
        for child in graph[digest].children if digest in graph else ():
            if graph.get(child, Manifest(child)).missing:
                notes.append(f"{repository}@{digest[:19]} lists {child[:19]}, which is missing: it is already broken.")
    deletable = [
        v
        for v in versions.values()
        if v.digest not in kept and not graph[v.digest].missing and (source.kind == "distribution" or v.ids)
    ]
    deleted = [Decision(repository, v.digest, tuple(v.all_tags), _why(v, graph, policy)) for v in deletable]
    return RepositoryPlan(repository, versions, graph, kept, _order(deleted, graph))


async def inventory(client: RegistryClient, source: Source, repository: str) -> dict[str, Version]:
    """The repository's versions: what the registry lists, joined with every tag's digest now."""
    versions = {v.digest: v for v in await source.listed(repository)}
    tag_rows = await source.tag_versions(repository)
    for tag, digest in (await tags_now(client, repository)).items():
        version = versions.setdefault(digest, Version(repository, digest))
        (version.referrer_tags if referrer_subject(tag) else version.tags).add(tag)
        if tag in tag_rows:
            version.ids.append(tag)
            created = tag_rows[tag]
            if created is not None and (version.created is None or created < version.created):
                version.created = created
    return versions


async def _referrers(
    manifests: Manifests, repository: str, versions: dict[str, Version], graph: dict[str, Manifest]
) -> dict[str, set[str]]:
    """subject digest -> the digests that refer to it: by their `subject`, their tag, or the referrers API."""
    found: dict[str, set[str]] = {}
    for manifest in graph.values():
        if manifest.subject:
            found.setdefault(manifest.subject, set()).add(manifest.digest)
    for version in versions.values():
        for tag in version.referrer_tags:
            subject = referrer_subject(tag)
            if subject and subject != version.digest:
                found.setdefault(subject, set()).add(version.digest)
    for version in [v for v in versions.values() if v.tags]:
        more = await manifests.referrers(repository, version.digest)
        if more:
            graph.update(await manifests.walk(repository, more))
            for digest in more:
                versions.setdefault(digest, Version(repository, digest))
                found.setdefault(version.digest, set()).add(digest)
    for digest in list(graph):  # what the referrers API added is walked like the rest
        versions.setdefault(digest, Version(repository, digest))
    return found


def _seeds(versions: dict[str, Version], policy: Policy, now: datetime) -> dict[str, str]:
    kept: dict[str, str] = {}
    tagged = sorted(
        (v for v in versions.values() if v.tags),
        key=lambda v: (v.created or NEVER, max(v.tags)),
        reverse=True,
    )
    for version in tagged[: policy.keep]:
        kept.setdefault(version.digest, f"one of the {policy.keep} newest tagged versions")
    for version in versions.values():
        for tag in version.all_tags:
            if policy.keeps_tag(tag):
                kept.setdefault(version.digest, f"tag {tag} matches --keep-tags")
    if policy.older_than is not None:
        cutoff = now - timedelta(seconds=policy.older_than)
        for version in versions.values():
            if not (version.tags or version.ids):
                continue  # reached only through an index: its index decides
            if version.created is None:
                kept.setdefault(version.digest, "its age is unknown")
            elif version.created > cutoff:
                kept.setdefault(version.digest, f"newer than {age_text(policy.older_than)}")
    return kept


def _keep_foreign_referrers(kept: dict[str, str], versions: dict[str, Version], graph: dict[str, Manifest]) -> None:
    """A referrer whose subject is not in this repository (cosign's COSIGN_REPOSITORY keeps signatures apart):
    whether its image is kept cannot be seen from here, so it stays."""
    for version in versions.values():
        manifest = graph.get(version.digest)
        subject = (manifest.subject if manifest else None) or next(
            filter(None, (referrer_subject(t) for t in version.referrer_tags)), None
        )
        if subject and subject not in graph and version.digest not in kept:
            kept[version.digest] = f"a referrer of {subject[:19]}, which is not in this repository"


def needs(digest: str, graph: dict[str, Manifest], referrers: dict[str, set[str]]) -> Iterable[tuple[str, str]]:
    """(what `digest` needs kept, why): an index's children, a referrer's subject, an image's referrers."""
    manifest = graph.get(digest)
    short = digest[:19]
    if manifest is not None:
        for child in manifest.children:
            yield child, f"listed by kept index {short}"
        if manifest.subject:
            yield manifest.subject, f"the subject of kept referrer {short}"
    for referrer in sorted(referrers.get(digest, ())):
        yield referrer, f"a referrer of kept {short}"


def _close(kept: dict[str, str], graph: dict[str, Manifest], referrers: dict[str, set[str]]) -> None:
    todo = list(kept)
    while todo:
        for needed, why in needs(todo.pop(), graph, referrers):
            if needed not in kept:
                kept[needed] = why
                todo.append(needed)


def _why(version: Version, graph: dict[str, Manifest], policy: Policy) -> str:
    manifest = graph[version.digest]
    age = f", older than {age_text(policy.older_than)}" if policy.older_than is not None else ""
    if version.tags:
        return f"tagged, not among the {policy.keep} newest{age}"
    subject = manifest.subject or next(filter(None, (referrer_subject(t) for t in version.referrer_tags)), None)
    if subject:
        return f"a referrer of {subject[:19]}, which is not kept"
    if version.ids:
        return f"untagged, and no kept version needs it{age}"
    return "reached only from deleted versions"


def _order(deleted: list[Decision], graph: dict[str, Manifest]) -> list[Decision]:
    """Indexes before their children and referrers before their subjects (Kahn's order over the deleted ones)."""
    by_digest = {d.digest: d for d in deleted}
    parents: dict[str, set[str]] = {d: set() for d in by_digest}
    for digest in by_digest:
        manifest = graph.get(digest)
        pointed = (*manifest.children, *([manifest.subject] if manifest.subject else [])) if manifest else ()
        for target in pointed:
            if target in parents and target != digest:
                parents[target].add(digest)
    ordered: list[Decision] = []
    ready = sorted(d for d, p in parents.items() if not p)
    while ready:
        digest = ready.pop(0)
        ordered.append(by_digest[digest])
        for other in sorted(parents):
            if digest in parents[other]:
                parents[other].discard(digest)
                if not parents[other] and by_digest[other] not in ordered and other not in ready:
                    ready.append(other)
    ordered += [d for d in deleted if d not in ordered]  # a cycle (never in a valid registry): as listed
    return ordered
