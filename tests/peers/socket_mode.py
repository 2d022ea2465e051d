"""Slack's Socket Mode side for tests: a WebSocket server that hands envelopes to the connected app and
waits for its acknowledgement, as Slack does. Pair it with the Web API stand-in, whose
`apps.connections.open` is stubbed to return this server's URL."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from concurrent.futures import Future
from typing import Any

from aiohttp import WSMsgType, web


class SocketModeStandIn:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.connected = threading.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link/?ticket=standin"

    def __enter__(self) -> SocketModeStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for ws in self._sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "standin"},
                    "connection_info": {"app_id": "A0STANDIN"},
                }
            )
        )
        self.connected.set()
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._acks.pop(str(data.get("envelope_id")), None)
            if future is not None and not future.done():
                future.set_result(data)
        return ws

    def send(self, kind: str, payload: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Deliver one envelope (`slash_commands`, `interactive`, `events_api`); return the app's ack."""
        envelope_id = secrets.token_hex(8)

        async def deliver() -> dict[str, Any]:
            future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
            self._acks[envelope_id] = future
            envelope = {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind == "slash_commands",
                "retry_attempt": 0,
                "retry_reason": "",
            }
            await self._sockets[-1].send_str(json.dumps(envelope))
            return await asyncio.wait_for(future, timeout)

        result: Future[dict[str, Any]] = asyncio.run_coroutine_threadsafe(deliver(), self._loop)
        return result.result(timeout + 1)
