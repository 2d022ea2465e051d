"""A scan of several registries at once: `scan_registry` per registry, concurrently, each with its own client
(connection pool, concurrency, credentials), so a slow registry never stalls another."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from bot.config import Settings
from bot.errors import UserFacingError
from bot.registry.integrity import IntegrityChecker
from bot.registry.pace import RequestSlots
from bot.registry.progress import ScanProgress
from bot.registry.registries import RegistryConfig, registry_list
from bot.registry.scan import Keep, ResultHook, ScanResult, keep_all, scan_registry
from bot.registry.session import RegistryObserver, open_registry
from bot.secrets import SecretResolver


def select_registries(settings: Settings, hosts: Sequence[str] | None) -> tuple[RegistryConfig, ...]:
    """The registries `--registry HOST` names (every one without it); UserFacingError for a host none has."""
    entries = registry_list(settings)
    if not hosts:
        return entries
    chosen: list[RegistryConfig] = []
    for host in hosts:
        entry = next((e for e in entries if host.strip().lower() in e.all_hosts), None)
        if entry is None:
            named = ", ".join(e.host for e in entries) or "none configured"
            raise UserFacingError(f"'{host[:100]}' is none of this bot's registries ({named}).")
        if entry not in chosen:
            chosen.append(entry)
    return tuple(chosen)


RateOf = Callable[[RegistryConfig], float]


def configured_rate(settings: Settings) -> RateOf:
    """Each registry's own `scan_rate_limit` from the list, else SCAN_RATE_LIMIT (0: unlimited)."""
    return lambda entry: entry.view(settings).scan_rate_limit


async def scan_registries(
    settings: Settings,
    secrets: SecretResolver,
    entries: Sequence[RegistryConfig],
    *,
    observer: RegistryObserver | None = None,
    tags_per_repo: int | None = None,
    deep: bool = False,
    on_result: ResultHook | None = None,
    keep: Keep = keep_all,
    progress: ScanProgress | None = None,
    rate_of: RateOf | None = None,
    pacing: dict[str, RequestSlots] | None = None,
) -> list[ScanResult]:
    """One ScanResult per registry, in the order given. A registry that cannot be asked at all (its secret
    unavailable, its login refused) is a ScanResult with `error`; the others go on.

    `progress` follows them all (their figures add up); `rate_of` gives each registry's requests per second
    (default: its configured limit); `pacing` holds each running scan's request slots by host, so a caller
    can change its pace while it runs."""
    rate_of = rate_of or configured_rate(settings)
    progress = progress or ScanProgress()
    for entry in entries:
        progress.expect(entry.host)  # the total is known only once every registry is listed

    async def one(entry: RegistryConfig) -> ScanResult:
        try:
            async with open_registry(settings, secrets, observer, entry) as client:
                client.slots.limit(rate_of(entry))
                if pacing is not None:
                    pacing[entry.host] = client.slots
                checker = IntegrityChecker(client, deep=deep)
                return await scan_registry(
                    client, tags_per_repo=tags_per_repo, checker=checker, on_result=on_result, keep=keep,
                    progress=progress,
                )  # fmt: skip
        except UserFacingError as exc:
            return ScanResult(registry=entry.host, catalog_accessible=False, error=str(exc), deep=deep)
        finally:
            progress.listed_all(entry.host)
            if pacing is not None:
                pacing.pop(entry.host, None)

    return list(await asyncio.gather(*(one(entry) for entry in entries)))


def exit_code(scans: Sequence[ScanResult]) -> int:
    """2 when a registry could not be scanned, else 1 when any is broken, else 0."""
    return max((scan.exit_code for scan in scans), default=0)


def summary_of(scans: Sequence[ScanResult]) -> dict[str, Any]:
    """One registry: its scan's summary. Several: `summary` adding them up, and `registries` with each one's."""
    if len(scans) == 1:
        return {"summary": scans[0].summary()}
    summaries = [scan.summary() for scan in scans]
    counted = ("repositories", "tags", "indexes", "intact", "broken", "errors", "objects_checked", "bytes_verified")
    total: dict[str, Any] = {key: sum(s[key] for s in summaries if key in s) for key in counted}
    failed = [s["registry"] for s in summaries if s["status"] == "error"]
    status = "error" if failed else ("broken" if total["broken"] else "intact")
    total = {
        "registry": ",".join(s["registry"] for s in summaries),
        "status": status,
        **total,
        "deep": any(scan.deep for scan in scans),
        "elapsed_ms": max((s["elapsed_ms"] for s in summaries), default=0),
        **({"error": "could not scan " + ", ".join(failed)} if failed else {}),
    }
    return {"summary": total, "registries": summaries}


def json_document(scans: Sequence[ScanResult], results: Sequence[str]) -> str:
    """`scan --json`'s one document: every result (each names its registry), already written as JSON text (a scan
    keeps text, not results), then `summary_of`."""
    rest = json.dumps(summary_of(scans))
    return f'{{"results": [{", ".join(results)}], {rest[1:]}'
