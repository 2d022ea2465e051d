"""A phase run's progress in one thread message, edited as its steps advance.

Edits are coalesced: the phase never waits on Slack, and a burst of steps becomes one edit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from bot.incidents.lifecycle import StepState
from bot.runbook.base import Link, Step
from bot.slack.blocks import progress_message
from bot.slack.gateway import SlackGateway

log = logging.getLogger(__name__)


class SlackProgress:
    MIN_INTERVAL = 1.0  # seconds between edits of one message (Slack's chat.update tier allows ~1/s)

    def __init__(
        self,
        slack: SlackGateway,
        channel: str,
        thread_ts: str,
        heading: str,
        on_posted: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.slack = slack
        self.channel = channel
        self.thread_ts = thread_ts
        self.heading = heading
        self.footer = ""
        self.ts: str | None = None
        self.steps: dict[str, Step] = {}
        self.on_posted = on_posted  # told the message's ts once it is posted
        self._version = 0
        self._shown = -1
        self._worker: asyncio.Task[None] | None = None
        self._last_edit = 0.0

    async def step(self, key: str, text: str, state: StepState = StepState.RUNNING, link: Link | None = None) -> None:
        self.steps[key] = Step(key, text, StepState(state), link)
        self._changed()

    def steps_json(self) -> str:
        return json.dumps([step.to_json() for step in self.steps.values()])

    def set_footer(self, footer: str) -> None:
        self.footer = footer
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._shown < self._version:
            wait = self.MIN_INTERVAL - (time.monotonic() - self._last_edit)
            if wait > 0 and self.ts is not None:
                await asyncio.sleep(wait)
            version = self._version
            text, blocks = progress_message(self.heading, list(self.steps.values()), self.footer)
            if self.ts is None:
                posted = await self.slack.post(self.channel, text, blocks, thread_ts=self.thread_ts)
                if posted is not None:
                    self.ts = posted.ts
                    if self.on_posted is not None:
                        await self.on_posted(posted.ts)
            else:
                await self.slack.update(self.channel, self.ts, text, blocks)
            self._last_edit = time.monotonic()
            self._shown = version

    async def flush(self) -> None:
        """Wait until the latest state is shown (Slack's own retries bound how long)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)
        if self._shown < self._version:
            self._worker = asyncio.create_task(self._run())
            await self._worker
