"""Scale (issue 17): a scan streams its results in bounded memory, and `scan --jsonl` shows them as they come.

Memory is tested by its structure, never by time or by a byte count: what a scan holds while it runs must
not grow with the number of repositories or tags (benchmarks/scan.py --scale measures the bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.config import Settings
from bot.registry import scan as scan_module
from bot.registry.client import RegistryClient
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult, keep_problems, scan_registry
from tests.peers.registry import ImagePusher, Registry

REPOS, TAGS = 40, 3


@pytest.fixture(scope="module")
def many() -> Iterator[Registry]:
    """REPOS repositories of TAGS tags each, sharing a base layer; one tag broken."""
    with Registry() as registry:
        base = (b"shared base " * 200,)

        def push(repo: int) -> None:
            pusher = ImagePusher(registry.url)
            for tag in range(TAGS):
                pusher.push_single(f"viktor/svc-{repo:02d}", f"v{tag}", base_layers=base, layers=1)
            pusher.close()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(push, range(REPOS)))
        pusher = ImagePusher(registry.url)
        broken = pusher.push_single("viktor/svc-07", "v1", base_layers=base, layers=1)
        pusher.close()
        registry.break_layer_link("viktor/svc-07", broken.layers["linux/amd64"][-1])
        yield registry


def test_memory_stays_flat_across_repositories(many, monkeypatch):
    """Walks in flight are bounded by TAGS_IN_FLIGHT, not by the tags; a repository's shared objects are
    dropped when its last tag is done; only what incidents need is kept."""
    monkeypatch.setattr(scan_module, "TAGS_IN_FLIGHT", 4)
    seen: list[tuple[int, int]] = []  # at each result: repositories whose shared objects are held, tasks

    async def scan() -> tuple[ScanResult, IntegrityChecker]:
        async with RegistryClient(Settings(registry_url=many.url, registry_kind="distribution")) as client:
            checker = IntegrityChecker(client)

            def watch(_: CheckResult) -> None:
                seen.append((len(checker._cache), len(asyncio.all_tasks())))

            return await scan_registry(client, checker=checker, on_result=watch, keep=keep_problems), checker

    scanned, checker = asyncio.run(scan())
    assert scanned.summary()["tags"] == REPOS * TAGS and scanned.summary()["broken"] == 1
    assert [r.reference for r in scanned.results] == ["viktor/svc-07:v1"], "intact tags were kept"
    assert len(seen) == REPOS * TAGS
    open_repositories = max(open_ for open_, _ in seen)
    tasks = max(running for _, running in seen)
    # Four walkers over repositories of three tags: at most a walker's worth of repositories is open at once
    # (each walker's current one, plus the one whose tags the walkers are finishing).
    assert open_repositories <= 4 + 1, open_repositories
    # The main task, four listers, four walkers, and the shared walks of at most four tags in flight (a
    # manifest, its config and two layers each): never one task per tag or per repository.
    assert tasks <= 1 + scan_module.LISTINGS_IN_FLIGHT + 4 + 4 * 4, tasks
    assert checker._cache == {}, "a repository's shared objects outlived the scan"
