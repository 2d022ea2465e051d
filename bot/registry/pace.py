"""The load one client puts on its registry: requests in flight (REGISTRY_CONCURRENCY), requests per second
(SCAN_RATE_LIMIT, a token bucket), and how many it has sent.

Every request a RegistryClient sends (`request`, streamed blob GETs) goes through its `slots`: one of the
concurrency slots first, then, with a rate set, a token from the bucket. Holding a slot while waiting for a
token keeps the bookings ahead at most REGISTRY_CONCURRENCY long, so a rate changed mid-scan applies at once.

The bucket holds one second of tokens (at least one) and starts full: over any window of W seconds it lets
at most rate x W + max(rate, 1) requests through, so a minute of a scan stays within 2% of the rate (at
rates under one a second, one request of burst is what a minute can be over).
"""

from __future__ import annotations

import asyncio
import time

MIN_SPREAD_RATE = 10.0  # requests/s: spreading a scan thinner than this spares no registry anything


class TokenBucket:
    """Requests per second, in the order they ask (GCRA: each booking advances one theoretical arrival time).

    `rate` 0 means unlimited. It may be changed at any time; bookings made under the old rate stand.
    """

    def __init__(self, rate: float = 0.0) -> None:
        self.rate = rate
        self._due: float | None = None  # when the bucket would next be empty at the steady rate

    @property
    def burst(self) -> float:
        return max(self.rate, 1.0)

    def reserve(self, now: float) -> float:
        """Book one request at `now` (monotonic seconds); how long it must wait before it is sent."""
        if self.rate <= 0:
            self._due = None
            return 0.0
        interval = 1.0 / self.rate
        due = now if self._due is None else max(self._due, now)
        send_at = max(now, due - (self.burst - 1.0) * interval)
        self._due = due + interval
        return send_at - now

    async def take(self) -> None:
        wait = self.reserve(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


class RequestSlots:
    """`async with slots:` around each request: at most `concurrency` at once, paced by `bucket`, counted."""

    def __init__(self, concurrency: int, rate: float = 0.0) -> None:
        self._gate = asyncio.Semaphore(concurrency)
        self.bucket = TokenBucket(rate)
        self.sent = 0  # requests that got their slot and token: what was sent, retries included

    @property
    def rate(self) -> float:
        return self.bucket.rate

    def limit(self, rate: float) -> None:
        """Requests per second from now on (0: unlimited)."""
        self.bucket.rate = max(rate, 0.0)

    async def __aenter__(self) -> None:
        await self._gate.acquire()
        try:
            await self.bucket.take()
        except BaseException:
            self._gate.release()
            raise
        self.sent += 1

    async def __aexit__(self, *exc: object) -> None:
        self._gate.release()


def spread_rate(last_requests: int | None, interval: float) -> float:
    """Requests per second that spread a scan like the last one (`last_requests`) over half of `interval`;
    0 (unlimited) with no last scan to go by or no interval, and never under MIN_SPREAD_RATE."""
    if not last_requests or interval <= 0:
        return 0.0
    return max(last_requests / (interval / 2), MIN_SPREAD_RATE)
