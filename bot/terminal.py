"""A scan's progress line on a terminal: tags done of listed, broken so far, requests per second, ETA.

Drawn with tqdm on stderr, and only when stderr is a terminal: stdout (the verdicts, --json, --jsonl) never
gets a byte of it, and a pipe or a log file gets nothing. tqdm is imported only then: it adds ~17 ms to a
start-up of ~300 ms (measured on this 2-core machine under load), and nothing to `check` or to a scan whose
stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any, TextIO

from bot.registry.model import human_bytes
from bot.registry.progress import ScanProgress

REDRAW_EVERY = 0.5  # seconds


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


class ProgressLine:
    """Redraws `progress` every REDRAW_EVERY seconds until closed; the line is cleared when it closes."""

    def __init__(self, progress: ScanProgress, stream: TextIO) -> None:
        from tqdm import tqdm

        self.progress = progress
        sized = _width(stream) > 0  # a terminal that says its size; else (a bare pty) 100 x 24, or tqdm hides
        self.bar: Any = tqdm(
            total=None,
            file=stream,
            unit=" tags",
            leave=False,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 24,
            mininterval=0,
            miniters=1,  # every update() draws: one draw a tick
            bar_format="{n_fmt}/{total_fmt} tags |{bar}| [{elapsed}<{remaining}]{postfix}",
        )
        self._task = asyncio.ensure_future(self._redraw())

    @classmethod
    def on_terminal(cls, progress: ScanProgress, stream: TextIO | None = None) -> ProgressLine | None:
        """A line on `stream` (stderr) when it is a terminal; None otherwise."""
        stream = stream or sys.stderr
        return cls(progress, stream) if stream.isatty() else None

    async def _redraw(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(REDRAW_EVERY)

    def draw(self) -> None:
        progress, bar = self.progress, self.bar
        bar.total = progress.listed if progress.listing_done else None
        figures = [f"{progress.broken:,} broken"]
        if progress.errors:
            figures.append(f"{progress.errors:,} not checked")
        figures.append(f"{progress.request_rate:,.0f} requests/s")
        if progress.deep:
            figures.append(f"{human_bytes(progress.bytes_hashed)} hashed")
        if not progress.listing_done:
            figures.append(f"listing: {progress.listed:,} tags so far")
        bar.set_postfix_str(", ".join(figures), refresh=False)
        if progress.done > bar.n:
            bar.update(progress.done - bar.n)  # tqdm's own rate and ETA follow the tags done
        else:
            bar.refresh()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.bar.close()
