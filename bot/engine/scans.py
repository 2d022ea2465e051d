"""The bot's scans of its registries: one at a time, at a pace the registry can bear, their progress readable
while they run.

The pace (requests per second, each registry client's token bucket): the registry's `scan_rate_limit`, else
SCAN_RATE_LIMIT, when one is set. Otherwise the periodic probe and the deep scan of each registry are spread
over half of their interval, at the request count of that registry's last scan of their kind (the first one
after a start runs unpaced: there is nothing to go by yet); a scan someone waits for (`/registry scan`, an
alert) is not spread, and lifts the spread of a probe it joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from bot import metrics
from bot.config import Settings
from bot.engine.ports import RunProgress
from bot.registry.multiscan import scan_registries
from bot.registry.pace import RequestSlots, spread_rate
from bot.registry.progress import ScanProgress, progress_text
from bot.registry.registries import RegistryConfig, registry_list
from bot.registry.scan import ScanResult, keep_problems
from bot.secrets import SecretResolver

log = logging.getLogger(__name__)
SHOW_EVERY = 5.0  # seconds between a scan message's edits in Slack


class Scans:
    def __init__(self, settings: Settings, secrets: SecretResolver) -> None:
        self.settings = settings
        self.secrets = secrets
        self.progress: ScanProgress | None = None  # the running (or last) scan's, for the displays
        self.deep_progress: ScanProgress | None = None
        self._running: asyncio.Task[list[ScanResult]] | None = None
        self._pacing: dict[str, RequestSlots] = {}  # the running scan's clients' slots by host, to lift its pace
        self._last_requests: dict[tuple[str, str], int] = {}  # (kind, host) -> requests the last whole one sent

    async def scan(self, spread: bool = False, only: RegistryConfig | None = None) -> list[ScanResult]:
        """One scan of every registry at a time, process-wide: a scan asked for while one runs joins it. One
        ScanResult per registry, in the order of the list. `spread`: the periodic probe's, paced over half of
        SCAN_INTERVAL (see the module's docstring). `only`: that registry's result (an alert's): the running
        scan's when one runs, else a scan of that registry alone."""
        if self._running is None or self._running.done():
            if only is not None:
                return await self._run("scan", False, ScanProgress(), (only,))
            self.progress = ScanProgress()
            entries = registry_list(self.settings)
            self._running = asyncio.ensure_future(self._run("scan", spread, self.progress, entries, self._pacing))
        elif not spread:
            self._lift()
        scans = await asyncio.shield(self._running)
        return scans if only is None else [scan for scan in scans if scan.registry == only.host]

    async def deep_scan(self) -> list[ScanResult]:
        """Every tag walked and every layer hashed (DEEP_RATE_LIMIT paces the bytes, this the requests)."""
        self.deep_progress = ScanProgress()
        return await self._run("deep", True, self.deep_progress, registry_list(self.settings))

    def rate(self, kind: str, spread: bool, entry: RegistryConfig) -> float:
        """Requests per second for a scan of `kind` ("scan" or "deep") of one registry; 0 is unlimited."""
        configured = entry.view(self.settings).scan_rate_limit
        if configured > 0 or not spread:
            return configured
        interval = self.settings.deep_scan_interval if kind == "deep" else self.settings.scan_interval
        return spread_rate(self._last_requests.get((kind, entry.host)), interval)

    def _lift(self) -> None:
        """Someone waits for the running scan: each registry at its configured pace, no longer spread."""
        for entry in registry_list(self.settings):
            slots, configured = self._pacing.get(entry.host), entry.view(self.settings).scan_rate_limit
            if slots is not None and slots.rate != configured:
                log.info("a scan someone waits for joined the probe's: %s no longer spread", entry.host)
                slots.limit(configured)

    async def _run(
        self,
        kind: str,
        spread: bool,
        progress: ScanProgress,
        entries: Sequence[RegistryConfig],
        pacing: dict[str, RequestSlots] | None = None,
    ) -> list[ScanResult]:
        # Only what incidents and messages need is kept (broken and unchecked tags); metrics take counts.
        scans = await scan_registries(
            self.settings,
            self.secrets,
            entries,
            observer=metrics.observe_registry,
            deep=kind == "deep",
            keep=keep_problems,
            progress=progress,
            rate_of=lambda entry: self.rate(kind, spread, entry),
            pacing=pacing,
        )
        for entry, scan in zip(entries, scans, strict=True):
            if not scan.error:
                self._last_requests[(kind, entry.host)] = scan.requests
            metrics.observe_scan(entry.label, kind, scan.requests, scan.elapsed_ms / 1000, scan.rate_limit)
        return scans


async def shown_while(
    live: RunProgress, work: Awaitable[list[ScanResult]], progress_of: Callable[[], ScanProgress | None]
) -> list[ScanResult]:
    """Await `work` (a scan) while `live` (a message that edits itself) shows its progress every SHOW_EVERY
    seconds: tags done of listed, broken so far, requests per second, ETA. The caller puts the summary in it."""

    async def show() -> None:
        while True:
            progress = progress_of()
            await live.step("scan", progress_text(progress) if progress is not None else "listing repositories…")
            await asyncio.sleep(SHOW_EVERY)

    ticker = asyncio.ensure_future(show())
    try:
        return await work
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
