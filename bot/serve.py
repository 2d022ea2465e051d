"""`registry-bot serve`: one asyncio process for Slack (HTTP, and Socket Mode when configured), the
Alertmanager webhook, health, metrics, the maintenance loop, and (on the leader) the scheduler and scan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot import logsetup
from bot.config import Settings, setting_fields
from bot.errors import UserFacingError

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp
    from starlette.applications import Starlette

    from bot.engine.ports import Supervisor
    from bot.engine.recovery import Recovery
    from bot.incidents.store import Store
    from bot.scheduler import Leadership
    from bot.slack.gateway import SlackGateway

log = logging.getLogger("bot.serve")
REQUIRED = ("slack_bot_token", "slack_signing_secret", "slack_channel", "alertmanager_token")
START_SECRETS = ("slack_bot_token", "slack_signing_secret", "slack_app_token", "alertmanager_token", "database_url")


def serve(settings: Settings) -> int:
    logsetup.configure(settings.log_format)
    try:
        from bot.secrets import resolve_secrets

        settings = resolve_secrets(settings, START_SECRETS)
        from bot.registry.registries import registry_list

        # A registry: REGISTRY_URL, unless the config file lists `registries:`.
        settings.require(*(REQUIRED if registry_list(settings) else ("registry_url", *REQUIRED)))
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


def replica_id(settings: Settings) -> str:
    name = settings.pod_name or socket.gethostname()
    return f"{name}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Parts:
    replica: str
    store: Store
    slack: SlackGateway
    supervisor: Supervisor
    leadership: Leadership
    recovery: Recovery
    bolt: AsyncApp
    web: Starlette


async def compose(settings: Settings) -> Parts:
    """The composition root: every part built once here and handed what it uses."""
    from bot.engine.commands import Commands
    from bot.engine.intake import Intake
    from bot.engine.ports import Supervisor
    from bot.engine.prune import PruneFlow
    from bot.engine.recovery import Recovery
    from bot.engine.requests import Requests
    from bot.engine.runner import Runner
    from bot.incidents.store import Store
    from bot.integrations.kube import Kube, kube_configured
    from bot.runbook.phases import all_phases
    from bot.scheduler import Leadership
    from bot.secrets import SecretResolver
    from bot.slack.app import SlackApp
    from bot.slack.clicks import Clicks
    from bot.slack.gateway import SlackGateway
    from bot.slack.notifier import SlackNotifier
    from bot.slack.prune import PruneClicks, SlackPruneNotifier
    from bot.web import build_web

    store = Store(settings.database)
    await asyncio.to_thread(store.migrate)
    slack = SlackGateway(settings.slack_bot_token.reveal(), settings.slack_api_url, settings.slack_retry_for)
    kube = Kube(settings) if kube_configured(settings) else None
    replica = replica_id(settings)
    secret_resolver = SecretResolver(settings)
    supervisor = Supervisor()
    notifier = SlackNotifier(settings, slack, store)
    # The scheduler runs verification through the runner, which schedules through the scheduler: the first
    # is handed a call that reaches the second once both exist.
    runner: Runner | None = None

    async def verify(incident_id: int) -> None:
        assert runner is not None
        await runner.run_verification(incident_id)

    async def probe() -> None:
        await intake.probe_once()

    async def deep_scan() -> None:
        await intake.deep_scan_once()

    flow: PruneFlow | None = None

    async def scheduled_prune() -> None:
        assert flow is not None
        await flow.scheduled()

    leadership = Leadership(settings, store, kube, replica, verify, probe, deep_scan, scheduled_prune)
    runner = Runner(
        settings,
        store,
        notifier,
        supervisor,
        all_phases(),
        leadership,
        kube=kube,
        secrets=secret_resolver,
        replica=replica,
    )
    intake = Intake(settings, store, notifier, supervisor, runner, kube=kube, secrets=secret_resolver)
    recovery = Recovery(settings, store, notifier, supervisor, runner, lambda: leadership.is_leader)
    commands = Commands(settings, store, notifier, supervisor, intake, secret_resolver)
    clicks = Clicks(settings, store, slack, notifier, commands, Requests(settings, store, notifier, runner))
    flow = PruneFlow(settings, store, SlackPruneNotifier(settings, slack), intake, secret_resolver)
    prune = PruneClicks(store, slack, clicks, flow)
    bolt = SlackApp(settings, store, slack, supervisor, commands, clicks, prune).build()
    web = build_web(settings, store, intake, bolt, leadership.role, replica)
    return Parts(replica, store, slack, supervisor, leadership, recovery, bolt, web)


async def run(settings: Settings) -> None:
    import uvicorn

    parts = await compose(settings)
    supervisor, leadership = parts.supervisor, parts.leadership
    await leadership.start()
    supervisor.spawn(parts.slack.identify(), "identifying the bot with Slack")
    parts.recovery.start()
    socket_mode = None
    if settings.slack_app_token:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        socket_mode = AsyncSocketModeHandler(parts.bolt, settings.slack_app_token.reveal())
        supervisor.spawn(socket_mode.connect_async(), "connecting Socket Mode")  # type: ignore[no-untyped-call]

    config = uvicorn.Config(
        parts.web,
        host=settings.bot_host,
        port=settings.bot_port,
        log_level="warning",
        log_config=None,  # uvicorn logs through the root logger: the same format and the same masking
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()

    def stop_serving() -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop_serving)
    # Everything allocated so far lives as long as the process: keep it out of the collector's full passes,
    # which otherwise stop every request in flight for ~100 ms (measured by benchmarks/ack.py).
    gc.collect()
    gc.freeze()
    log.info("registry-bot serving on %s:%s as replica %s", settings.bot_host, settings.bot_port, parts.replica)
    try:
        await server.serve()
    finally:
        await leadership.stop()
        if socket_mode is not None:
            with contextlib.suppress(Exception):
                await socket_mode.close_async()  # type: ignore[no-untyped-call]
        await supervisor.stop()
        parts.store.close()
        log.info("registry-bot stopped")
