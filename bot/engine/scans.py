"""The bot's scans of its registry: one at a time, at a pace the registry can bear, their progress readable
while they run.

The pace (requests per second, the client's token bucket): SCAN_RATE_LIMIT when it is set. Otherwise the
periodic probe and the deep scan are spread over half of their interval, at the request count of the last
scan of their kind (the first one after a start runs unpaced: there is nothing to go by yet); a scan someone
waits for (`/registry scan`, an alert) is not spread, and lifts the spread of a probe it joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot import metrics
from bot.config import Settings
from bot.engine.ports import RunProgress
from bot.registry.integrity import IntegrityChecker
from bot.registry.pace import RequestSlots, spread_rate
from bot.registry.progress import ScanProgress, progress_text
from bot.registry.scan import ScanResult, keep_problems, scan_registry
from bot.registry.session import open_registry
from bot.secrets import SecretResolver

log = logging.getLogger(__name__)
SHOW_EVERY = 5.0  # seconds between a scan message's edits in Slack


class Scans:
    def __init__(self, settings: Settings, secrets: SecretResolver) -> None:
        self.settings = settings
        self.secrets = secrets
        self.progress: ScanProgress | None = None  # the running (or last) scan's, for the displays
        self.deep_progress: ScanProgress | None = None
        self._running: asyncio.Task[ScanResult] | None = None
        self._slots: RequestSlots | None = None  # the running scan's client's, to lift its pace
        self._last_requests: dict[str, int] = {}  # "scan" or "deep" -> requests the last whole one sent

    async def scan(self, spread: bool = False) -> ScanResult:
        """One scan at a time, process-wide: a scan asked for while one runs joins it. `spread`: the periodic
        probe's, paced over half of SCAN_INTERVAL (see the module's docstring)."""
        if self._running is None or self._running.done():
            self.progress = ScanProgress()
            self._running = asyncio.ensure_future(self._run("scan", spread, self.progress))
        elif not spread and self._slots is not None and self._slots.rate != self.settings.scan_rate_limit:
            log.info("a scan someone waits for joined the probe's: no longer spread")
            self._slots.limit(self.settings.scan_rate_limit)
        return await asyncio.shield(self._running)

    async def deep_scan(self) -> ScanResult:
        """Every tag walked and every layer hashed (DEEP_RATE_LIMIT paces the bytes, this the requests)."""
        self.deep_progress = ScanProgress()
        return await self._run("deep", True, self.deep_progress)

    def rate(self, kind: str, spread: bool) -> float:
        """Requests per second for a scan of `kind` ("scan" or "deep"); 0 is unlimited."""
        if self.settings.scan_rate_limit > 0 or not spread:
            return self.settings.scan_rate_limit
        interval = self.settings.deep_scan_interval if kind == "deep" else self.settings.scan_interval
        return spread_rate(self._last_requests.get(kind), interval)

    async def _run(self, kind: str, spread: bool, progress: ScanProgress) -> ScanResult:
        async with open_registry(self.settings, self.secrets, metrics.observe_registry) as client:
            client.slots.limit(self.rate(kind, spread))
            if kind == "scan":
                self._slots = client.slots
            checker = IntegrityChecker(client, deep=True) if kind == "deep" else None
            try:
                # Only what incidents and messages need is kept (broken and unchecked tags); metrics take counts.
                scan = await scan_registry(client, checker=checker, keep=keep_problems, progress=progress)
            finally:
                if kind == "scan":
                    self._slots = None
        if not scan.error:
            self._last_requests[kind] = scan.requests
        metrics.observe_scan(self.settings.instance, kind, scan.requests, scan.elapsed_ms / 1000, scan.rate_limit)
        return scan


async def shown_while(
    live: RunProgress, work: Awaitable[ScanResult], progress_of: Callable[[], ScanProgress | None]
) -> ScanResult:
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
