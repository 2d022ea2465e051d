"""Each kind of registry lists its versions and deletes them its own way.

- distribution: the catalog lists repositories and tags; a manifest is deleted by digest (`DELETE
  /v2/<name>/manifests/<digest>`), which removes every tag pointing at it. Its blobs stay on disk until the
  registry's garbage collection runs (`registry garbage-collect`).
- Forgejo: the packages API lists versions (a version is a tag, or a digest for a manifest pushed by digest,
  such as an index's children) with their creation time, and deletes one version at a time with a token
  that has write:package (FORGEJO_CLEANUP_TOKEN).
- GHCR: GitHub's packages API lists one version per digest (its tags in `metadata.container.tags`, index
  children untagged) with its creation time, and deletes a version by id with delete:packages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol

from bot.errors import UserFacingError
from bot.prune.model import DeleteRefused, Version
from bot.registry.client import RegistryClient
from bot.registry.registries import RegistryConfig
from bot.secrets import SecretResolver

GONE = "gone"
DELETED = "deleted"


class Source(Protocol):
    kind: str

    async def repositories(self) -> list[str]: ...

    async def listed(self, repository: str) -> list[Version]:
        """The versions the registry lists of its own (none for distribution, which lists only tags)."""
        ...

    async def tag_versions(self, repository: str) -> dict[str, datetime | None]:
        """Versions the registry lists by tag name (Forgejo's), with when each was created."""
        ...

    async def ready_to_delete(self) -> None:
        """Raise DeleteRefused (one sentence) when deletes cannot work at all (no token): before any delete."""
        ...

    async def delete(self, version: Version, tags_now: set[str]) -> str:
        """Delete one version (whose tags now are `tags_now`): DELETED, or GONE when it was already gone."""
        ...


def _deleted(status: int) -> str | None:
    if status in (200, 202, 204):
        return DELETED
    if status == 404:
        return GONE
    return None


class DistributionSource:
    kind = "distribution"

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.host = client.settings.registry_host

    async def repositories(self) -> list[str]:
        from bot.registry.scan import list_repositories

        return (await list_repositories(self.client))[0]

    async def listed(self, repository: str) -> list[Version]:
        return []

    async def tag_versions(self, repository: str) -> dict[str, datetime | None]:
        return {}

    async def ready_to_delete(self) -> None:
        return None

    async def delete(self, version: Version, tags_now: set[str]) -> str:
        status = await self.client.delete_manifest(version.repository, version.digest)
        outcome = _deleted(status)
        if outcome is not None:
            return outcome
        if status == 405:
            raise DeleteRefused(
                f"The registry {self.host} refuses deletes (HTTP 405: storage.delete.enabled is off), so nothing "
                "more was deleted."
            )
        if status in (401, 403):
            raise DeleteRefused(
                f"The registry {self.host} refused to delete {version.repository}@{version.digest[:19]} (HTTP "
                f"{status}): its user needs delete rights on the repository, and nothing more was deleted."
            )
        raise DeleteRefused(
            f"The registry {self.host} answered HTTP {status} to deleting {version.repository}@"
            f"{version.digest[:19]}, so nothing more was deleted."
        )


class ForgejoSource:
    kind = "forgejo"

    def __init__(self, client: RegistryClient, owners: tuple[str, ...], secrets: SecretResolver) -> None:
        from bot.registry.forgejo import ForgejoPackages

        self.client = client
        self.owners = owners
        self.secrets = secrets
        self.host = client.settings.registry_host
        self._listing = ForgejoPackages(client)
        self._rows: dict[str, list[tuple[str, datetime | None]]] | None = None  # repository -> (version, created)
        self._token = ""

    async def _all_rows(self) -> dict[str, list[tuple[str, datetime | None]]]:
        if self._rows is None:
            rows: dict[str, list[tuple[str, datetime | None]]] = {}
            for owner in self.owners:
                for item in await self._listing.list_container_versions(owner):
                    version = str(item.get("version") or "")
                    if version:
                        repository = f"{owner}/{item['name']}"
                        rows.setdefault(repository, []).append((version, _when(item.get("created_at"))))
            self._rows = rows
        return self._rows

    async def repositories(self) -> list[str]:
        return sorted(await self._all_rows())

    async def listed(self, repository: str) -> list[Version]:
        """Forgejo's versions named by digest; those named by tag are joined to their digest by the caller."""
        found: dict[str, Version] = {}
        for name, created in (await self._all_rows()).get(repository, []):
            if ":" in name:  # a manifest pushed by digest (an index's child): its version is the digest
                version = found.setdefault(name, Version(repository, name))
                version.ids.append(name)
                version.created = _earliest(version.created, created)
        return list(found.values())

    async def tag_versions(self, repository: str) -> dict[str, datetime | None]:
        """The versions named by tag, with when each was created."""
        rows = (await self._all_rows()).get(repository, [])
        return {name: created for name, created in rows if ":" not in name}

    async def ready_to_delete(self) -> None:
        try:
            self._token = await self.secrets.get("forgejo_cleanup_token")
        except UserFacingError as exc:
            raise DeleteRefused(f"Could not get the Forgejo cleanup token, so nothing was deleted: {exc}") from None
        if not self._token:
            raise DeleteRefused(
                "Set FORGEJO_CLEANUP_TOKEN (a Forgejo token with write:package) so the bot can delete versions; "
                "nothing was deleted."
            )

    async def delete(self, version: Version, tags_now: set[str]) -> str:
        """Forgejo deletes one version at a time: each tag still pointing at the digest, then the digest's own."""
        from bot.registry.forgejo import ForgejoPackages

        owner, _, name = version.repository.partition("/")
        packages = ForgejoPackages(self.client, self._token)
        names = [n for n in version.ids if n in tags_now or ":" in n]
        outcomes = []
        for each in names:
            status = await packages.delete_version(owner, name, each)
            outcome = _deleted(status)
            if outcome is None:
                raise DeleteRefused(_forgejo_refusal(status, version.repository, each))
            outcomes.append(outcome)
        return DELETED if DELETED in outcomes else GONE


def _forgejo_refusal(status: int, repository: str, name: str) -> str:
    if status == 403:
        return (
            f"The Forgejo token lacks write:package, so Forgejo refused to delete {repository} version {name[:30]}; "
            "nothing more was deleted."
        )
    if status == 401:
        return "Forgejo refused the cleanup token (HTTP 401), which may be revoked; nothing more was deleted."
    return f"Forgejo answered HTTP {status} to deleting {repository} version {name[:30]}; nothing more was deleted."


class GhcrSource:
    kind = "ghcr"

    def __init__(self, entry: RegistryConfig, packages: object) -> None:
        from bot.registry.ghcr import GhcrPackages

        assert isinstance(packages, GhcrPackages)
        self.entry = entry
        self.packages = packages

    def _package(self, repository: str) -> str:
        return repository.removeprefix(self.entry.owner + "/")

    async def repositories(self) -> list[str]:
        return await self.packages.repositories()

    async def listed(self, repository: str) -> list[Version]:
        return [
            # GitHub's own tags count too: a tag whose lookup went wrong must still protect its version.
            Version(repository, v.digest, tags=_image_tags(v.tags), created=v.created, ids=[str(v.id)])
            for v in await self.packages.versions(self._package(repository))
        ]

    async def tag_versions(self, repository: str) -> dict[str, datetime | None]:
        return {}

    async def ready_to_delete(self) -> None:
        return None

    async def delete(self, version: Version, tags_now: set[str]) -> str:
        if not version.ids:
            return GONE
        status = await self.packages.delete_version(self._package(version.repository), int(version.ids[0]))
        outcome = _deleted(status)
        if outcome is not None:
            return outcome
        if status == 403:
            raise DeleteRefused(
                f"The GitHub token lacks the delete:packages scope, so GitHub refused to delete version "
                f"{version.ids[0]} of {version.repository}; nothing more was deleted."
            )
        if status == 401:
            raise DeleteRefused("GitHub refused the token (HTTP 401), which may be revoked; nothing more was deleted.")
        raise DeleteRefused(
            f"GitHub answered HTTP {status} to deleting version {version.ids[0]} of {version.repository}; nothing "
            "more was deleted."
        )


@asynccontextmanager
async def open_source(client: RegistryClient, entry: RegistryConfig, secrets: SecretResolver) -> AsyncIterator[Source]:
    """The way `entry`'s kind lists and deletes versions, over `client` (and GitHub's API for GHCR)."""
    if entry.kind == "ghcr":
        from bot.registry.ghcr import GhcrPackages
        from bot.registry.registries import github_token_of

        token = await github_token_of(entry, secrets)
        timeout = max(client.settings.registry_timeout, 15.0)
        async with GhcrPackages(entry, token, timeout=timeout) as packages:
            yield GhcrSource(entry, packages)
    elif entry.kind == "forgejo":
        yield ForgejoSource(client, client.settings.forgejo_owners, secrets)
    else:
        yield DistributionSource(client)


def _when(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # GitHub's and Forgejo's are UTC
    except ValueError:
        return None


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(x for x in (a, b) if x is not None) if (a or b) else None


def _image_tags(tags: tuple[str, ...]) -> set[str]:
    from bot.prune.model import referrer_subject

    return {tag for tag in tags if not referrer_subject(tag)}
