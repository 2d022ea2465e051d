"""The scan: every repository and tag the registry lists, each walked by one shared IntegrityChecker.

What the registry lists is not trusted: a next-page link is followed only on the registry's own origin, and a
repository or tag name that does not fit the reference grammar is reported, never put in a request path.

Memory stays flat however many tags there are: each tag's result goes out (`on_result`) as soon as it is
done and is kept only when `keep` says so (the bot keeps what incidents need: broken and unchecked tags);
TAGS_IN_FLIGHT walks run at once whatever the number of tags, a repository's tags are walked together, and
its shared manifests and blobs are forgotten when its last tag is done. The tag names listed but not walked
yet are all that grows with the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from bot.errors import CouldNotCheck
from bot.refs import ImageRef, valid_repository_name, valid_tag
from bot.registry.client import RegistryClient, host_of
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.progress import ScanProgress

PAGE_SIZE = 100
TAGS_IN_FLIGHT = 24
# Repositories whose tags are listed at once, ahead of the walks. Under a rate limit the listers and walkers
# share one token bucket; at 4 listers against 24 walkers the listing got a seventh of it, so a paced scan's
# total (and its ETA) stayed unknown for most of the scan.
LISTINGS_IN_FLIGHT = 16

ResultHook = Callable[[CheckResult], None]
Keep = Callable[[CheckResult], bool]


def keep_all(result: CheckResult) -> bool:
    return True


def keep_problems(result: CheckResult) -> bool:
    """What incidents and messages need: broken tags and those that could not be checked."""
    return result.status != "intact"


@dataclass
class Tally:
    """Counts over every tag of a scan, kept or not."""

    tags: int = 0
    indexes: int = 0
    intact: int = 0
    broken: int = 0
    errors: int = 0
    objects_checked: int = 0

    def add(self, result: CheckResult) -> None:
        self.tags += 1
        self.indexes += result.is_index
        self.intact += result.status == "intact"
        self.broken += result.status == "broken"
        self.errors += result.status == "error"
        self.objects_checked += result.objects_checked


@dataclass
class ScanResult:
    registry: str
    results: list[CheckResult] = field(default_factory=list)  # the tags `keep` kept (every tag by default)
    repositories: int = 0
    catalog_accessible: bool = True
    listed_by: str = "catalog"
    elapsed_ms: int = 0
    error: str | None = None
    deep: bool = False
    bytes_verified: int = 0  # bytes the run read and hashed, each shared blob once
    tally: Tally = field(default_factory=Tally)
    requests: int = 0  # requests sent to the registry, listings and retries included
    rate_limit: float = 0.0  # the requests per second it was held to (0: unlimited)

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
        return 1 if self.tally.broken or self.broken else 0

    def summary(self) -> dict[str, Any]:
        tally = self.tally
        return {
            "registry": self.registry,
            "status": "error" if self.error else ("broken" if tally.broken else "intact"),
            "repositories": self.repositories,
            "tags": tally.tags,
            "indexes": tally.indexes,
            "intact": tally.intact,
            "broken": tally.broken,
            "errors": tally.errors,
            "objects_checked": tally.objects_checked,
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
    if url:  # a listing cut short would pass for the whole one
        raise CouldNotCheck(
            f"The registry listed {urlsplit(path).path} over more than {pages:,} pages; the bot stopped."
        )
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
    on_result: ResultHook | None = None,
    keep: Keep = keep_all,
    progress: ScanProgress | None = None,
) -> ScanResult:
    """Every tag, each told to `on_result` when it is done and kept in `results` when `keep` says so.

    `checker`: a deep one (IntegrityChecker(client, deep=True)) for a deep scan. `progress` is kept up to date
    for a display. The client's `slots` set the pace (requests per second); the scan counts what it sent.
    """
    started = time.perf_counter()
    first_request = client.slots.sent
    result = ScanResult(registry=client.settings.registry_host, rate_limit=client.slots.rate)
    checker = checker or IntegrityChecker(client)
    progress = progress or ScanProgress()
    progress.deep = result.deep = checker.deep
    progress.expect(result.registry)
    progress.count(lambda: client.slots.sent - first_request, lambda: checker.bytes_hashed)
    try:
        repositories, result.listed_by = await list_repositories(client)
    except CouldNotCheck as exc:
        result.catalog_accessible = False
        result.error = str(exc)
    else:
        result.repositories = len(repositories)
        walk = _Walk(client, checker, result, progress, on_result, keep, tags_per_repo)
        await walk.run(iter(repositories))
    finally:
        progress.listed_all(result.registry)
    result.bytes_verified = checker.bytes_hashed
    result.requests = client.slots.sent - first_request
    result.elapsed_ms = round((time.perf_counter() - started) * 1000)
    return result


class _Walk:
    """One scan's listing and walking: LISTINGS_IN_FLIGHT listers put tags on a queue, TAGS_IN_FLIGHT walkers
    take them off; a repository's shared objects are forgotten when its last tag is done."""

    def __init__(
        self,
        client: RegistryClient,
        checker: IntegrityChecker,
        result: ScanResult,
        progress: ScanProgress,
        on_result: ResultHook | None,
        keep: Keep,
        tags_per_repo: int | None,
    ) -> None:
        self.client = client
        self.checker = checker
        self.result = result
        self.progress = progress
        self.on_result = on_result
        self.keep = keep
        self.tags_per_repo = tags_per_repo
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._open: dict[str, int] = {}  # repository -> its tags not done yet

    async def run(self, repositories: Iterator[str]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                listers = [group.create_task(self._list(repositories)) for _ in range(LISTINGS_IN_FLIGHT)]
                for _ in range(TAGS_IN_FLIGHT):
                    group.create_task(self._walk())
                await asyncio.gather(*listers)
                self.progress.listed_all(self.result.registry)
                for _ in range(TAGS_IN_FLIGHT):
                    self._queue.put_nowait(None)  # one stop for each walker, after every tag
        except BaseExceptionGroup as failed:  # the first failure, as the caller would see it from one task
            raise failed.exceptions[0] from None

    async def _list(self, repositories: Iterator[str]) -> None:
        for name in repositories:  # shared by the listers: each takes the next repository
            if not valid_repository_name(name):
                self._refuse(name, f"The registry listed '{_clip(name)}', which is not a valid repository name; "
                                   "it was not checked.")  # fmt: skip
                continue
            try:
                tags, bad_tags = await list_tags_checked(self.client, name)
            except CouldNotCheck as exc:
                self._refuse(name, str(exc))
                continue
            if self.tags_per_repo is not None:
                tags = tags[-self.tags_per_repo :] if self.tags_per_repo > 0 else []
            for tag in bad_tags:
                self._refuse(f"{name}:{tag}", f"The registry listed '{_clip(tag)}' in {name}, which is not a valid "
                                              "tag; it was not checked.")  # fmt: skip
            if tags:
                self._open[name] = self._open.get(name, 0) + len(tags)  # a catalog may list a name twice
                self.progress.listed += len(tags)
                for tag in tags:
                    self._queue.put_nowait((name, tag))

    async def _walk(self) -> None:
        while (item := await self._queue.get()) is not None:
            name, tag = item
            outcome = await self.checker.check(ImageRef(name=name, tag=tag), display=f"{name}:{tag}")
            self._open[name] -= 1
            if not self._open[name]:
                del self._open[name]
                self.checker.forget(name)
            self._emit(outcome)

    def _refuse(self, reference: str, error: str) -> None:
        self.progress.listed += 1
        registry = self.result.registry
        self._emit(CheckResult(reference=_clip(reference), registry=registry, status="error", error=error))

    def _emit(self, outcome: CheckResult) -> None:
        self.result.tally.add(outcome)
        if self.keep(outcome):
            self.result.results.append(outcome)
        progress = self.progress
        progress.done += 1
        progress.broken += outcome.status == "broken"
        progress.errors += outcome.status == "error"
        progress.sample()
        if self.on_result is not None:
            self.on_result(outcome)
