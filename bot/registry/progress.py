"""How far a scan has got, for the people waiting on it: the CLI's progress line and the Slack message that
edits itself show the same figures (tags done of listed, broken so far, requests per second, ETA)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bot.registry.model import human_bytes


@dataclass
class ScanProgress:
    """Updated by the scan as it goes; read whenever a display wants to (it never waits on a display)."""

    listed: int = 0  # tags found so far (and names refused): the total once `listing_done`
    listing_done: bool = False
    done: int = 0
    broken: int = 0
    errors: int = 0
    requests: int = 0  # requests sent to the registry so far
    bytes_hashed: int = 0  # a deep scan's layer and config bytes read and hashed so far
    deep: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def request_rate(self) -> float:
        elapsed = self.elapsed
        return self.requests / elapsed if elapsed > 0 else 0.0

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
        rate = progress.bytes_hashed / progress.elapsed if progress.elapsed > 0 else 0.0
        parts.append(f"{human_bytes(progress.bytes_hashed)} hashed ({human_bytes(round(rate))}/s)")
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
