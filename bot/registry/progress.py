"""How far a scan has got, for the people waiting on it: the CLI's progress line and the Slack message that
edits itself show the same figures (tags done of listed, broken so far, requests per second, ETA)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.registry.model import human_bytes

RATE_WINDOW = 5.0  # seconds the shown request rate is measured over: the pace now, not the start's burst
SAMPLE_EVERY = 0.5


@dataclass
class ScanProgress:
    """Updated by the scan as it goes; read whenever a display wants to (it never waits on a display). One
    progress may follow the scans of several registries at once: their figures add up."""

    listed: int = 0  # tags found so far (and names refused): the total once `listing_done`
    done: int = 0
    broken: int = 0
    errors: int = 0
    deep: bool = False
    started: float = field(default_factory=time.monotonic)
    # Registries whose repositories are still being listed; the total is known when none is left.
    listing: set[str] = field(default_factory=set)
    _listing_begun: bool = field(default=False, repr=False)
    # Read when shown, so the figures move between tags too (each scan adds its client's and checker's counts).
    _request_counts: list[Callable[[], int]] = field(default_factory=list, repr=False)
    _byte_counts: list[Callable[[], int]] = field(default_factory=list, repr=False)
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=16), repr=False)

    def expect(self, registry: str) -> None:
        """A registry whose listing this progress waits for before it knows the total."""
        self.listing.add(registry)
        self._listing_begun = True

    def listed_all(self, registry: str) -> None:
        self.listing.discard(registry)

    @property
    def listing_done(self) -> bool:
        return self._listing_begun and not self.listing

    def count(self, requests: Callable[[], int], hashed: Callable[[], int]) -> None:
        """Add one scan's live counters (requests sent, bytes hashed)."""
        self._request_counts.append(requests)
        self._byte_counts.append(hashed)

    @property
    def requests(self) -> int:
        """Requests sent to the registries so far."""
        return sum(count() for count in self._request_counts)

    @property
    def bytes_hashed(self) -> int:
        """A deep scan's layer and config bytes read and hashed so far."""
        return sum(count() for count in self._byte_counts)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sample(self) -> None:
        """Note the requests sent by now (at most every SAMPLE_EVERY s): the rate is read over the last few."""
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY:
            self._samples.append((now, self.requests))

    @property
    def request_rate(self) -> float:
        """Requests per second over the last RATE_WINDOW seconds (since the start, early on)."""
        self.sample()
        now, sent = time.monotonic(), self.requests
        since = next(((at, n) for at, n in self._samples if now - at <= RATE_WINDOW), None)
        if since is not None and now - since[0] >= 1.0:
            return (sent - since[1]) / (now - since[0])
        elapsed = self.elapsed
        return sent / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far; None until the listing is complete and a tag is done."""
        if not self.listing_done or not self.done:
            return None
        return max(self.listed - self.done, 0) * self.elapsed / self.done


def progress_text(progress: ScanProgress) -> str:
    """`1,204 of 3,000 tags, 2 broken, 3 not checked, 41 requests/s, ETA 1m20s` (plain text, no markup)."""
    if not progress.listed and not progress.listing_done:
        return "listing repositories…"
    total = f"{progress.listed:,}" if progress.listing_done else f"{progress.listed:,}+"
    parts = [f"{progress.done:,} of {total} tags", f"{progress.broken:,} broken"]
    if progress.errors:
        parts.append(f"{progress.errors:,} not checked")
    parts.append(f"{progress.request_rate:,.0f} requests/s")
    if progress.deep:
        hashed, elapsed = progress.bytes_hashed, progress.elapsed
        rate = hashed / elapsed if elapsed > 0 else 0.0
        parts.append(f"{human_bytes(hashed)} hashed ({human_bytes(round(rate))}/s)")
    eta = progress.eta
    parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA when every repository is listed")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """45s, 12m05s, 3h07m."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
