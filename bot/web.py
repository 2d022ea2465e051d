"""The HTTP surface: /slack/events, /alertmanager, /healthz, /readyz, /metrics, on one Starlette app."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import metrics
from bot.alerts import NotAnAlertPayload, parse_notification
from bot.config import Settings
from bot.engine.intake import Intake
from bot.incidents.store import Store

log = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1_000_000


def build_web(
    settings: Settings, store: Store, intake: Intake, bolt: AsyncApp, role: Callable[[], str], replica: str
) -> Starlette:
    slack_handler = AsyncSlackRequestHandler(bolt)
    expected = f"Bearer {settings.alertmanager_token.reveal()}".encode()

    async def slack_events(request: Request) -> Response:
        try:
            return await slack_handler.handle(request)
        except Exception as exc:  # Bolt parses the body before anything else: a malformed one raises
            log.warning("refused a malformed Slack request (%s)", type(exc).__name__)
            return PlainTextResponse("malformed Slack request\n", status_code=400)

    async def alertmanager(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            metrics.ALERTS_RECEIVED.labels(alertname="-", outcome="unauthorized").inc()
            return PlainTextResponse("unauthorized: send Authorization: Bearer <ALERTMANAGER_TOKEN>\n", status_code=401)
        body = await request.body()
        if len(body) > MAX_WEBHOOK_BYTES:
            return PlainTextResponse("payload too large\n", status_code=413)
        try:
            notification = parse_notification(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            reason = str(exc) if isinstance(exc, NotAnAlertPayload) else "the body is not JSON"
            metrics.ALERTS_RECEIVED.labels(alertname="-", outcome="bad_payload").inc()
            log.warning("refused an /alertmanager payload: %s", reason)
            return PlainTextResponse(f"not an Alertmanager payload: {reason}\n", status_code=400)
        await intake.handle_notification(notification)
        return JSONResponse({"status": "accepted", "alerts": len(notification.alerts)})

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_request: Request) -> Response:
        database = await asyncio.to_thread(store.ping)
        body = {"ready": database, "role": role(), "database": database, "replica": replica}
        return JSONResponse(body, status_code=200 if database else 503)

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/slack/events", slack_events, methods=["POST"]),
            Route("/alertmanager", alertmanager, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
