"""Signals in: an Alertmanager notification, the bot's own probe, a scan, a slash command. Each is confirmed
by the bot's own check before it becomes an incident (one per image, persisted), and a new incident is
diagnosed at once."""

from __future__ import annotations

import asyncio
import logging
import time

from bot import metrics
from bot.alerts import INFO_ALERTS, INTEGRITY_FAILURE, Alert, Notification
from bot.config import Settings
from bot.engine.ports import Audit, Notifier, Supervisor
from bot.engine.runner import Runner
from bot.errors import BadReference, UserFacingError
from bot.incidents.lifecycle import Phase
from bot.incidents.models import Incident
from bot.incidents.store import Store
from bot.integrations.kube import Kube
from bot.refs import ImageRef, parse_reference
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult, scan_registry
from bot.registry.session import open_registry
from bot.secrets import SecretResolver

log = logging.getLogger(__name__)
CONFIRM_AFTER = 1.0  # seconds before a tag a scan found broken is walked again


class Intake:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        notifier: Notifier,
        supervisor: Supervisor,
        runner: Runner,
        *,
        kube: Kube | None,
        secrets: SecretResolver,
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.supervisor = supervisor
        self.runner = runner
        self.kube = kube
        self.secrets = secrets
        self.audit = Audit(store)
        self._detection: asyncio.Task[list[Incident]] | None = None

    # --- the registry ------------------------------------------------------------------------------------

    async def check(self, ref: ImageRef, display: str) -> CheckResult:
        async with open_registry(self.settings, self.secrets, metrics.observe_registry) as client:
            return await IntegrityChecker(client).check(ref, display=display)

    async def scan(self) -> ScanResult:
        async with open_registry(self.settings, self.secrets, metrics.observe_registry) as client:
            return await scan_registry(client)

    async def confirm_broken(self, result: CheckResult) -> CheckResult | None:
        """Walk a tag a scan found broken once more, fresh, a moment later: a passing 5xx opens no incident."""
        await asyncio.sleep(CONFIRM_AFTER)
        name, _, tag = result.reference.rpartition(":")
        again = await self.check(ImageRef(name=name, tag=tag), result.reference)
        if again.status != "broken":
            log.info("%s looked broken in the scan but is %s on a second look", result.reference, again.status)
            return None
        return again

    # --- incidents ---------------------------------------------------------------------------------------

    async def report_broken(self, result: CheckResult, source: str, user: str | None = None) -> Incident:
        """Open an incident for a broken image (posting its root message and diagnosing it), or touch it."""
        image = result.reference
        incident, created = await asyncio.to_thread(
            self.store.record_broken, result, image, source, user, self.settings.slack_channel
        )
        if not created:
            await self.notifier.refresh_incident(incident.id)
            return incident
        await self.audit("open", "opened", user=user, incident_id=incident.id, detail=f"{image} from {source}")
        thread = await self.notifier.post_incident(incident)
        if thread is not None:
            incident = await asyncio.to_thread(
                self.store.update, incident.id, root_ts=thread.ts, channel=thread.channel
            )
        await self.runner.count_incidents()
        await self.runner.start(incident, Phase.DIAGNOSE, requested_by=None, approved_by=None)
        return incident

    async def report_scan(self, scan: ScanResult, source: str, user: str | None = None) -> list[Incident]:
        opened = []
        for result in scan.broken:
            if (confirmed := await self.confirm_broken(result)) is not None:
                opened.append(await self.report_broken(confirmed, source, user))
        return opened

    # --- Alertmanager ------------------------------------------------------------------------------------

    async def handle_notification(self, notification: Notification) -> None:
        instance = self.settings.instance
        for alert in notification.alerts:
            if alert.instance != instance:
                log.info("alert %s for instance %r ignored (this bot serves %r)", alert.name, alert.instance, instance)
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name[:60], outcome="other_instance").inc()
                continue
            if alert.name == INTEGRITY_FAILURE:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                if alert.status == "firing":
                    self.supervisor.spawn(self.detect("alert"), "finding broken images for an alert")
                else:
                    self.supervisor.spawn(self.note_resolved(alert), "noting a resolved alert")
            elif alert.name in INFO_ALERTS:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                if alert.status == "firing":
                    summary = alert.annotations.get("summary", "")
                    self.supervisor.spawn(self.notifier.info_alert(alert.name, instance, summary), "posting an alert")
            else:
                log.info("alert %s ignored: not one of the registry's alerts", alert.name)
                metrics.ALERTS_RECEIVED.labels(alertname="other", outcome="ignored").inc()

    async def detect(self, source: str) -> list[Incident]:
        """Which images are broken (the alert names only the registry). One detection at a time: a request
        that arrives while one runs joins it."""
        if self._detection is None or self._detection.done():
            self._detection = asyncio.ensure_future(self._detect(source))
        return await asyncio.shield(self._detection)

    async def _detect(self, source: str) -> list[Incident]:
        candidates = await self._probe_candidates()
        if candidates is None:
            scan = await self.scan()
            if scan.error:
                log.error("the scan for an alert could not list the registry: %s", scan.error)
                await self.notifier.channel_note(
                    f"⚠️ {INTEGRITY_FAILURE} fired, but the registry cannot be listed: {scan.error}"
                )
                return []
            return await self.report_scan(scan, source)
        opened = []
        for repo, tag in candidates:
            try:
                ref = ImageRef(name=parse_reference(f"{repo}:{tag}").name, tag=tag)
            except BadReference:
                log.warning("probe log names %s:%s, which is not a valid reference", repo[:100], tag[:100])
                continue
            result = await self.check(ref, f"{ref.name}:{tag}")
            if result.status == "broken":
                opened.append(await self.report_broken(result, source))
            else:
                log.info("probe reported %s, but our check says %s", result.reference, result.status)
        return opened

    async def _probe_candidates(self) -> list[tuple[str, str]] | None:
        """The images the cluster's probe logged as failing; None when there is no log to go by."""
        if self.kube is None:
            return None
        try:
            probe = await self.kube.probe_log()
        except UserFacingError as exc:
            log.warning("probe log unavailable, scanning instead: %s", exc)
            return None
        if probe is None or not probe.failures:
            return None
        return list(dict.fromkeys((repo, tag) for repo, tag, _ in probe.failures))

    async def note_resolved(self, alert: Alert) -> None:
        for incident in await asyncio.to_thread(self.store.list_open):
            if incident.registry_host == self.settings.registry_host:
                await self.notifier.thread_note(
                    incident, f"ℹ️ Alertmanager: {alert.name} {alert.status} for {self.settings.instance}."
                )
                await self.audit("alert", alert.status, incident_id=incident.id, detail=alert.name)

    # --- commands ----------------------------------------------------------------------------------------

    async def command_check(self, ref: ImageRef, user: str, channel: str) -> None:
        display = f"{ref.name}:{ref.tag}" if ref.tag else str(ref)
        result = await self.check(ref, display)
        result.note = ref.implied_note
        await self.audit("check", result.status, user=user, detail=display)
        by_tag = ref.tag is not None and ref.digest is None
        if result.status == "broken" and by_tag:
            incident = await self.report_broken(result, "command", user)
            if channel != incident.channel:
                await self.notifier.broken_elsewhere(channel, user, incident)
            return
        if result.status == "error":
            await self.notifier.tell(channel, user, f"⚠️ {result.verdict()}")
            return
        await self.notifier.check_verdict(channel, user, result)
        if by_tag:
            open_incident = await asyncio.to_thread(self.store.find_open, self.settings.registry_host, display)
            if open_incident is not None and result.status == "intact":
                await self.notifier.check_intact_now(open_incident, user)

    async def command_scan(self, user: str | None, channel: str) -> ScanResult:
        scan = await self.scan()
        await self.audit("scan", "error" if scan.error else f"{len(scan.broken)} broken", user=user)
        await self.notifier.scan_summary(channel, user, scan)
        await self.report_scan(scan, "scan", user)
        return scan

    async def open_incidents(self) -> list[Incident]:
        return await asyncio.to_thread(self.store.list_open)

    # --- the bot's own probe -----------------------------------------------------------------------------

    async def probe_once(self) -> ScanResult:
        """A full scan, exported under the probe's metric names, and incidents for what broke."""
        scan = await self.scan()
        instance = self.settings.instance
        summary = scan.summary()
        metrics.PROBE_CATALOG.labels(instance=instance).set(0 if scan.error else 1)
        if not scan.error:
            metrics.PROBE_FAILURES.labels(instance=instance).set(summary["broken"])
            metrics.PROBE_REPOS.labels(instance=instance).set(summary["repositories"])
            metrics.PROBE_TAGS.labels(instance=instance).set(summary["tags"])
            metrics.PROBE_INDEXES.labels(instance=instance).set(summary["indexes"])
        metrics.PROBE_LAST_RUN.labels(instance=instance).set(time.time())
        await self.report_scan(scan, "probe")
        log.info("probe: %s", {k: summary[k] for k in ("tags", "broken", "errors", "elapsed_ms") if k in summary})
        return scan
