"""`registry-bot serve`: one asyncio process for Slack (HTTP, and Socket Mode when configured), the
Alertmanager webhook, health, metrics, the maintenance loop, and (on the leader) the scheduler and scan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from typing import Any

from bot import logsetup
from bot.config import Settings, setting_fields
from bot.errors import UserFacingError

log = logging.getLogger("bot.serve")
REQUIRED = ("registry_url", "slack_bot_token", "slack_signing_secret", "slack_channel", "alertmanager_token")
START_SECRETS = ("slack_bot_token", "slack_signing_secret", "slack_app_token", "alertmanager_token", "database_url")


def serve(settings: Settings) -> int:
    logsetup.configure(settings.log_format)
    try:
        from bot.secrets import resolve_secrets

        settings = resolve_secrets(settings, START_SECRETS)
        settings.require(*REQUIRED)
    except UserFacingError as exc:
        print(f"registry-bot: {exc}", file=sys.stderr)
        return 2
    for f in setting_fields():
        if f.metadata.get("secret"):
            value = getattr(settings, f.name)
            logsetup.register_secret(value.reveal() if value else "")
    from urllib.parse import urlsplit

    logsetup.register_secret(urlsplit(settings.database).password or "")
    try:
        asyncio.run(run(settings))
    except UserFacingError as exc:
        log.error("%s", exc)
        return 2
    return 0


def all_phases() -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for module, name in (
        ("bot.runbook.rebuild", "rebuild"),
        ("bot.runbook.restart", "restart"),
        ("bot.runbook.node", "node"),
        ("bot.runbook.verify", "verify"),
    ):
        try:
            phases[name] = getattr(__import__(module, fromlist=[name]), name)
        except ModuleNotFoundError:
            continue
    return phases


async def run(settings: Settings) -> None:
    import uvicorn

    from bot.flows import RegistryBot
    from bot.incidents.store import Store
    from bot.integrations.kube import Kube, kube_configured
    from bot.slack.app import build_bolt
    from bot.slack.gateway import SlackGateway
    from bot.web import build_web

    store = Store(settings.database)
    await asyncio.to_thread(store.migrate)
    slack = SlackGateway(settings.slack_bot_token.reveal(), settings.slack_api_url, settings.slack_retry_for)
    kube = Kube(settings) if kube_configured(settings) else None
    bot = RegistryBot(settings, store, slack, kube, phases=all_phases())
    leadership = await start_leadership(bot)
    bolt = build_bolt(bot)
    web = build_web(bot, bolt, leadership.role)
    bot.spawn(slack.identify(), "identifying the bot with Slack")
    bot.spawn(bot.heartbeats(), "heartbeats")
    bot.spawn(bot.maintain(), "maintenance")
    socket_mode = None
    if settings.slack_app_token:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        socket_mode = AsyncSocketModeHandler(bolt, settings.slack_app_token.reveal())
        bot.spawn(socket_mode.connect_async(), "connecting Socket Mode")  # type: ignore[no-untyped-call]

    config = uvicorn.Config(
        web, host=settings.bot_host, port=settings.bot_port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign,attr-defined]
    # Everything allocated so far lives as long as the process: keep it out of the collector's full passes,
    # which otherwise stop every request in flight for ~100 ms (measured by benchmarks/ack.py).
    gc.collect()
    gc.freeze()
    log.info("registry-bot serving on %s:%s as replica %s", settings.bot_host, settings.bot_port, bot.replica)
    try:
        await server.serve()
    finally:
        await leadership.stop()
        if socket_mode is not None:
            with contextlib.suppress(Exception):
                await socket_mode.close_async()  # type: ignore[no-untyped-call]
        for task in list(bot.tasks):
            task.cancel()
        await asyncio.gather(*bot.tasks, return_exceptions=True)
        store.close()
        log.info("registry-bot stopped")


class NoLeadership:
    """Until the scheduler exists: every replica is a standby that serves Slack and the webhook."""

    def role(self) -> str:
        return "standby"

    async def stop(self) -> None:
        return None


async def start_leadership(bot: Any) -> Any:
    try:
        from bot.scheduler import Leadership
    except ModuleNotFoundError:
        return NoLeadership()
    leadership = Leadership(bot)
    await leadership.start()
    return leadership
