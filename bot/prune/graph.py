"""What ties a repository's versions together, read from the registry: every tag's digest now, each
manifest's children (an index's, however deep) and subject (a referrer's), and the referrers of a digest
(the OCI referrers API where the registry has it; the `sha256-<hex>` tag schema otherwise, read from the tags).

Manifests are addressed by digest and never change, so each is read once per run (plan and apply share it).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bot.errors import CouldNotCheck, UserFacingError
from bot.prune.model import Manifest, PlanError
from bot.refs import manifest_path, validate_digest
from bot.registry.client import RegistryClient
from bot.registry.media import ACCEPT, OCI_INDEX

ACCEPT_ALL = ACCEPT + ", application/vnd.oci.artifact.manifest.v1+json"
MAX_DEPTH = 8
TAGS_IN_FLIGHT = 16
CREATED = "org.opencontainers.image.created"
_FRACTION = re.compile(r"(\.[0-9]+)")


class Manifests:
    """Reads and remembers manifests of one registry (by repository and digest)."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.host = client.settings.registry_host
        self._cache: dict[tuple[str, str], Manifest] = {}
        self._created: dict[tuple[str, str], datetime | None] = {}
        self.referrers_api: bool | None = None  # None until the registry has answered a referrers request
        self._gate = asyncio.Semaphore(TAGS_IN_FLIGHT)

    async def get(self, repository: str, digest: str) -> Manifest:
        key = (repository, digest)
        if key not in self._cache:
            self._cache[key] = await self._read(repository, digest)
        return self._cache[key]

    async def _read(self, repository: str, digest: str) -> Manifest:
        where = f"{repository}@{digest[:19]}"
        try:
            async with self._gate:
                response = await self.client.request(
                    "GET", manifest_path(repository, digest), headers={"Accept": ACCEPT_ALL}
                )
        except UserFacingError as exc:
            raise PlanError(f"Could not read {where}, so nothing was deleted: {exc}") from None
        if response.status_code == 404:
            return Manifest(digest, missing=True)
        if response.status_code != 200:
            raise PlanError(
                f"The registry {self.host} answered HTTP {response.status_code} for {where}, so the plan could not "
                "be made and nothing was deleted."
            )
        try:
            document = json.loads(response.content)
            if not isinstance(document, dict):
                raise ValueError("not an object")
            return _manifest(digest, document)
        except (ValueError, TypeError, KeyError, UserFacingError):
            raise PlanError(
                f"{where} is not a manifest the bot can read, so it cannot tell what it needs; nothing was deleted."
            ) from None

    async def walk(self, repository: str, roots: Iterable[str]) -> dict[str, Manifest]:
        """Every manifest the roots reach through index children and referrer subjects, however deep."""
        found: dict[str, Manifest] = {}
        frontier = set(roots)
        for _ in range(MAX_DEPTH + 1):
            if not frontier:
                break
            read = await asyncio.gather(*(self.get(repository, d) for d in sorted(frontier)))
            nxt: set[str] = set()
            for manifest in read:
                found[manifest.digest] = manifest
                nxt.update(manifest.children)
                if manifest.subject:
                    nxt.add(manifest.subject)
            frontier = nxt - set(found)
        if frontier:
            raise PlanError(f"Indexes in {repository} nest deeper than {MAX_DEPTH} levels; nothing was deleted.")
        return found

    async def created(self, repository: str, manifest: Manifest) -> datetime | None:
        """When an image was built: the index's `created` annotation, else its first child's config `created`."""
        if manifest.created is not None:
            return manifest.created
        if manifest.is_index:
            for child in manifest.children[:1]:
                return await self.created(repository, await self.get(repository, child))
            return None
        if not manifest.config:
            return None
        key = (repository, manifest.config)
        if key not in self._created:
            self._created[key] = await self._config_created(repository, manifest.config)
        return self._created[key]

    async def _config_created(self, repository: str, digest: str) -> datetime | None:
        try:
            async with self._gate:
                response = await self.client.request("GET", f"/v2/{repository}/blobs/{digest}")
            if response.status_code != 200 or len(response.content) > 4 * 2**20:
                return None  # a redirect to storage elsewhere, or not there: its age is unknown
            config = json.loads(response.content)
            return _time(config.get("created")) if isinstance(config, dict) else None
        except (UserFacingError, ValueError):
            return None

    async def referrers(self, repository: str, digest: str) -> list[str]:
        """The digest's referrers by the OCI referrers API; [] where the registry does not have it."""
        if self.referrers_api is False:
            return []
        try:
            async with self._gate:
                response = await self.client.request(
                    "GET", f"/v2/{repository}/referrers/{digest}", headers={"Accept": OCI_INDEX}
                )
            document = json.loads(response.content) if response.status_code == 200 else None
        except (UserFacingError, ValueError):
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
            if self.referrers_api is None:
                self.referrers_api = False  # 404 and the like: the tag schema is what there is
            return []
        self.referrers_api = True
        found = []
        for descriptor in document["manifests"]:
            try:
                found.append(validate_digest(str(descriptor["digest"])))
            except (KeyError, TypeError, UserFacingError):
                continue
        return found


async def tags_now(client: RegistryClient, repository: str) -> dict[str, str]:
    """Every tag of the repository and the digest it points at now. A tag that answers 404 went away since the
    listing and is left out; any other failure, or a tag name outside the grammar, is a PlanError: a tag the
    bot could not look up might point at a version it would otherwise delete."""
    from bot.registry.scan import list_tags_checked

    try:
        tags, bad = await list_tags_checked(client, repository)
    except CouldNotCheck as exc:
        raise PlanError(f"Could not list the tags of {repository}, so nothing was deleted: {exc}") from None
    if bad:
        raise PlanError(
            f"{repository} has a tag the bot cannot look up ('{bad[0][:60]}' is outside the tag grammar), so "
            "nothing was deleted."
        )
    gate = asyncio.Semaphore(TAGS_IN_FLIGHT)

    async def resolve(tag: str) -> str | None:
        async with gate:
            try:
                return await client.resolve_digest(repository, tag)
            except CouldNotCheck as exc:  # a tag it could not look up might point at a version planned to go
                raise PlanError(f"{str(exc).rstrip('.')}, so nothing was deleted.") from None

    try:
        digests = await asyncio.gather(*(resolve(tag) for tag in tags))
    except PlanError:
        raise
    except UserFacingError as exc:
        raise PlanError(f"Could not resolve the tags of {repository}, so nothing was deleted: {exc}") from None
    return {tag: digest for tag, digest in zip(tags, digests, strict=True) if digest}


def _manifest(digest: str, document: dict[str, Any]) -> Manifest:
    subject = document.get("subject")
    subject_digest = validate_digest(str(subject["digest"])) if isinstance(subject, dict) else None
    annotations = document.get("annotations") if isinstance(document.get("annotations"), dict) else {}
    created = _time((annotations or {}).get(CREATED))
    children = document.get("manifests")
    if isinstance(children, list):
        digests = tuple(validate_digest(str(child["digest"])) for child in children)
        return Manifest(digest, True, digests, subject_digest, None, created)
    config = document.get("config")
    config_digest = str(config["digest"]) if isinstance(config, dict) and "digest" in config else None
    return Manifest(digest, False, (), subject_digest, config_digest, created)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(lambda m: m[1][:7], value.strip().replace("Z", "+00:00"))  # Go: nanoseconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
