"""Signals in: an Alertmanager notification, the bot's own probe, a scan, a slash command. Each is confirmed
by the bot's own check before it becomes an incident (one per image, persisted), and a new incident is
diagnosed at once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from bot import metrics
from bot.alerts import INFO_ALERTS, INTEGRITY_FAILURE, Alert, Notification
from bot.config import Settings
from bot.engine.ports import Audit, Notifier, Supervisor
from bot.engine.runner import Runner
from bot.engine.scans import Scans, shown_while
from bot.errors import BadReference, UserFacingError
from bot.incidents.lifecycle import Phase
from bot.incidents.models import Incident, InfoAlert
from bot.incidents.store import Store
from bot.integrations.kube import Kube
from bot.refs import ImageRef, parse_reference
from bot.registry.blobs import ProgressHook
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult
from bot.registry.session import open_registry
from bot.secrets import SecretResolver

log = logging.getLogger(__name__)
CONFIRM_AFTER = 1.0  # seconds before a tag a scan found broken is walked again
PROGRESS_EVERY = 5.0  # seconds between progress reports of a deep check


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
        self.scans = Scans(settings, secrets)

    # --- the registry ------------------------------------------------------------------------------------

    async def check(
        self, ref: ImageRef, display: str, deep: bool = False, on_progress: ProgressHook | None = None
    ) -> CheckResult:
        async with open_registry(self.settings, self.secrets, metrics.observe_registry) as client:
            checker = IntegrityChecker(client, deep=deep, on_progress=on_progress, progress_every=PROGRESS_EVERY)
            return await checker.check(ref, display=display)

    async def scan(self, spread: bool = False) -> ScanResult:
        """One scan of the registry at a time, process-wide (engine/scans.py: its pace and progress)."""
        return await self.scans.scan(spread)

    async def deep_scan_once(self) -> ScanResult:
        """Every tag walked and every layer hashed, its progress in a channel message; incidents for what broke."""
        channel = self.settings.slack_channel
        live = self.notifier.live_message(channel, f"🔎 Deep scan of {self.settings.registry_host}: every layer hashed")
        scan = await shown_while(live, self.scans.deep_scan(), lambda: self.scans.deep_progress)
        await self.notifier.scan_summary(channel, None, scan, live)
        summary = scan.summary()
        log.info("deep scan: %s", {k: summary.get(k) for k in ("tags", "broken", "errors", "elapsed_ms")})
        await self.report_scan(scan, "deep_scan")
        return scan

    async def confirm_broken(self, result: CheckResult) -> CheckResult | None:
        """Walk a tag a scan found broken once more, fresh, a moment later: a passing 5xx opens no incident.
        A deep scan's finding is confirmed by a deep walk (only reading the bytes can see them wrong)."""
        await asyncio.sleep(CONFIRM_AFTER)
        name, _, tag = result.reference.rpartition(":")
        again = await self.check(ImageRef(name=name, tag=tag), result.reference, deep=result.deep)
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
        detect = False
        info: dict[str, list[Alert]] = {}
        for alert in notification.alerts:
            if alert.instance != instance:
                log.info("alert %s for instance %r ignored (this bot serves %r)", alert.name, alert.instance, instance)
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name[:60], outcome="other_instance").inc()
                continue
            if alert.name == INTEGRITY_FAILURE:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                if alert.status == "firing":
                    detect = True
                else:
                    self.supervisor.spawn(self.note_resolved(alert), "noting a resolved alert")
            elif alert.name in INFO_ALERTS:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                info.setdefault(alert.name, []).append(alert)
            else:
                log.info("alert %s ignored: not one of the registry's alerts", alert.name)
                metrics.ALERTS_RECEIVED.labels(alertname="other", outcome="ignored").inc()
        if detect:  # one detection per delivery, however many alerts it carries
            self.supervisor.spawn(self.detect("alert"), "finding broken images for an alert")
        for alertname, alerts in info.items():
            self.supervisor.spawn(self.info_alerts(alertname, alerts), f"posting {alertname}")

    async def info_alerts(self, alertname: str, alerts: list[Alert]) -> None:
        """One message per firing episode (by fingerprint), however many alerts and repeats: new episodes in
        one delivery share one message, a repeat edits the message it has, a resolution says so in it."""
        instance, summary = self.settings.instance, alerts[0].annotations.get("summary", "")
        firing = [fingerprint_of(a) for a in alerts if a.status == "firing"]
        ended = [fingerprint_of(a) for a in alerts if a.status != "firing"]
        if firing:
            new, repeated = await asyncio.to_thread(self.store.record_info_alerts, alertname, firing)
            if new:
                thread = await self.notifier.info_alert(alertname, instance, summary, len(new))
                if thread is not None:
                    await asyncio.to_thread(self.store.set_info_message, new, thread.channel, thread.ts)
            for (channel, ts), rows in _by_message(repeated).items():
                times, last = max(r.repeats for r in rows) + 1, rows[0].last_seen
                note = f"still firing: notified again {times}×, last at {last:%H:%M} UTC"
                await self.notifier.info_alert_changed(channel, ts, alertname, instance, summary, len(rows), note)
        if ended:
            rows = await asyncio.to_thread(self.store.resolve_info_alerts, ended)
            for (channel, ts), done in _by_message(rows).items():
                await self.notifier.info_alert_changed(
                    channel, ts, alertname, instance, summary, len(done), "ended", ended=True
                )

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

    # --- the bot's own probe -----------------------------------------------------------------------------

    async def probe_once(self) -> ScanResult:
        """A full scan, exported under the probe's metric names, and incidents for what broke; spread over
        half of SCAN_INTERVAL unless SCAN_RATE_LIMIT says otherwise."""
        scan = await self.scan(spread=True)
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


def fingerprint_of(alert: Alert) -> str:
    """Alertmanager's fingerprint, or one made from the labels when a sender left it out."""
    if alert.fingerprint:
        return alert.fingerprint[:64]
    labels = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return hashlib.sha256(labels.encode()).hexdigest()[:16]


def _by_message(rows: list[InfoAlert]) -> dict[tuple[str, str], list[InfoAlert]]:
    grouped: dict[tuple[str, str], list[InfoAlert]] = {}
    for row in rows:
        if row.channel and row.message_ts:
            grouped.setdefault((row.channel, row.message_ts), []).append(row)
    return grouped
