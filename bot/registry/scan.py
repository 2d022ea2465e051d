"""The scan: every repository and tag the registry lists, each walked by one shared IntegrityChecker.

What the registry lists is not trusted: a next-page link is followed only on the registry's own origin, and a
repository or tag name that does not fit the reference grammar is reported, never put in a request path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from bot.errors import CouldNotCheck
from bot.refs import ImageRef, valid_repository_name, valid_tag
from bot.registry.client import RegistryClient, host_of
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult

PAGE_SIZE = 100
TAGS_IN_FLIGHT = 24


@dataclass
class ScanResult:
    registry: str
    results: list[CheckResult] = field(default_factory=list)
    repositories: int = 0
    catalog_accessible: bool = True
    listed_by: str = "catalog"
    elapsed_ms: int = 0
    error: str | None = None
    deep: bool = False
    bytes_verified: int = 0  # bytes the run read and hashed, each shared blob once

    @property
    def broken(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "broken"]

    @property
    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "error"]

    @property
    def exit_code(self) -> int:
        if self.error:
            return 2
        return 1 if self.broken else 0

    def summary(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "status": "error" if self.error else ("broken" if self.broken else "intact"),
            "repositories": self.repositories,
            "tags": len(self.results),
            "indexes": sum(1 for r in self.results if r.is_index),
            "intact": sum(1 for r in self.results if r.status == "intact"),
            "broken": len(self.broken),
            "errors": len(self.errors),
            "objects_checked": sum(r.objects_checked for r in self.results),
            "bytes_verified": self.bytes_verified,
            "deep": self.deep,
            "catalog_accessible": self.catalog_accessible,
            "listed_by": self.listed_by,
            "elapsed_ms": self.elapsed_ms,
            **({"error": self.error} if self.error else {}),
        }

    def to_json(self) -> dict[str, Any]:
        return {"results": [r.to_json() for r in self.results], "summary": self.summary()}


async def _paged(client: RegistryClient, path: str, params: dict[str, str], key: str) -> list[str]:
    """Follow `Link: <...>; rel="next"` through a paginated listing, collecting `key` from each page."""
    items: list[str] = []
    url: str | None = path
    query: dict[str, str] | None = params
    pages = 0
    while url and pages < 10_000:
        pages += 1
        response = await client.request("GET", url, params=query)
        if response.status_code != 200:
            raise CouldNotCheck(
                f"The registry {client.settings.registry_host} answered HTTP {response.status_code} "
                f"to GET {urlsplit(url).path}; it cannot be listed."
            )
        try:
            page = response.json().get(key) or []
        except (ValueError, AttributeError):
            raise CouldNotCheck(f"The registry's {urlsplit(url).path} answer is not JSON.") from None
        if not isinstance(page, list):
            raise CouldNotCheck(f"The registry's {urlsplit(url).path} answer has no list of {key}.")
        items.extend(str(item) for item in page)
        next_link = response.next_link
        url = urljoin(client.base_url + "/", next_link) if next_link else None
        if url is not None and not client.same_origin(url):
            raise CouldNotCheck(
                f"The registry {client.settings.registry_host} put the next page of {urlsplit(path).path} on "
                f"{host_of(url)}, another host; the bot follows pages only on the registry itself, so it could "
                "not list it."
            )
        query = None  # the next link carries its own query
    return items


async def list_repositories(client: RegistryClient) -> tuple[list[str], str]:
    """Every repository name, and where the list came from ('catalog', 'packages API', 'GitHub packages API')."""
    if client.settings.registry_kind == "ghcr":  # ghcr.io has no catalog
        from bot.registry.ghcr import list_repositories as list_ghcr

        return await list_ghcr(client), "GitHub packages API"
    try:
        return await _paged(client, "/v2/_catalog", {"n": str(PAGE_SIZE)}, "repositories"), "catalog"
    except CouldNotCheck:
        if client.settings.registry_kind != "forgejo":
            raise
    from bot.registry.forgejo import ForgejoPackages  # only on the fallback path

    packages = ForgejoPackages(client)
    return await packages.container_repositories(client.settings.forgejo_owners), "packages API"


async def list_tags(client: RegistryClient, name: str) -> list[str]:
    """The tags of a repository that fit the grammar (others are dropped: see `list_tags_checked`)."""
    return (await list_tags_checked(client, name))[0]


async def list_tags_checked(client: RegistryClient, name: str) -> tuple[list[str], list[str]]:
    """(tags that fit the grammar, names listed as tags that do not) of a repository."""
    if not valid_repository_name(name):
        raise CouldNotCheck(f"'{_clip(name)}' is not a valid repository name; its tags were not listed.")
    tags = await _paged(client, f"/v2/{name}/tags/list", {"n": str(PAGE_SIZE)}, "tags")
    return [t for t in tags if valid_tag(t)], [t for t in tags if not valid_tag(t)]


def _clip(text: str, limit: int = 80) -> str:
    """A name from the registry, safe to echo: printable, bounded."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


async def scan_registry(
    client: RegistryClient,
    *,
    tags_per_repo: int | None = None,
    checker: IntegrityChecker | None = None,
) -> ScanResult:
    """`checker`: a deep one (IntegrityChecker(client, deep=True, on_progress=...)) for a deep scan."""
    started = time.perf_counter()
    result = ScanResult(registry=client.settings.registry_host)
    try:
        repositories, result.listed_by = await list_repositories(client)
    except CouldNotCheck as exc:
        result.catalog_accessible = False
        result.error = str(exc)
        result.elapsed_ms = round((time.perf_counter() - started) * 1000)
        return result
    result.repositories = len(repositories)
    checker = checker or IntegrityChecker(client)
    result.deep = checker.deep
    gate = asyncio.Semaphore(TAGS_IN_FLIGHT)

    async def check_tag(name: str, tag: str) -> CheckResult:
        async with gate:
            outcome = await checker.check(ImageRef(name=name, tag=tag), display=f"{name}:{tag}")
        return outcome

    def refused(reference: str, error: str) -> CheckResult:
        return CheckResult(reference=_clip(reference), registry=result.registry, status="error", error=error)

    async def check_repository(name: str) -> list[CheckResult]:
        if not valid_repository_name(name):
            return [refused(name, f"The registry listed '{_clip(name)}', which is not a valid repository name; "
                                  "it was not checked.")]  # fmt: skip
        try:
            tags, bad_tags = await list_tags_checked(client, name)
        except CouldNotCheck as exc:
            return [refused(name, str(exc))]
        if tags_per_repo is not None:
            tags = tags[-tags_per_repo:] if tags_per_repo > 0 else []
        skipped = [
            refused(f"{name}:{tag}", f"The registry listed '{_clip(tag)}' in {name}, which is not a valid tag; "
                                     "it was not checked.")
            for tag in bad_tags
        ]  # fmt: skip
        return skipped + list(await asyncio.gather(*(check_tag(name, tag) for tag in tags)))

    for tag_results in await asyncio.gather(*(check_repository(name) for name in repositories)):
        result.results.extend(tag_results)
    result.bytes_verified = checker.bytes_hashed
    result.elapsed_ms = round((time.perf_counter() - started) * 1000)
    return result
