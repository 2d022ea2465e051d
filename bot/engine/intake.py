"""Signals in: an Alertmanager notification, the bot's own probe, a scan, a slash command. Each is confirmed
by the bot's own check before it becomes an incident (one per image, persisted), and a new incident is
diagnosed at once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

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
from bot.registry.registries import RegistryConfig, for_host, for_instance, registries_named, registry_list
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
        self._detection: dict[str, asyncio.Task[list[Incident]]] = {}  # by registry instance
        self._again: set[str] = set()  # registries asked to detect again while a detection ran
        self.scans = Scans(settings, secrets)

    # --- the registry ------------------------------------------------------------------------------------

    async def check(
        self, ref: ImageRef, display: str, deep: bool = False, on_progress: ProgressHook | None = None
    ) -> CheckResult:
        """Check on the registry the reference's host names (the default one without a host)."""
        entry = for_host(self.settings, ref.host)
        if entry is None:  # parse_reference refuses foreign hosts first; a registry gone from the config lands here
            error = f"'{ref.host}' is none of this bot's registries; it was not checked."
            return CheckResult(reference=display, registry=ref.host or "", status="error", error=error)
        async with open_registry(self.settings, self.secrets, metrics.observe_registry, entry) as client:
            checker = IntegrityChecker(client, deep=deep, on_progress=on_progress, progress_every=PROGRESS_EVERY)
            return await checker.check(ref, display=display)

    async def scan(self, spread: bool = False, only: RegistryConfig | None = None) -> list[ScanResult]:
        """One scan of every registry at a time, process-wide (engine/scans.py: its pace and progress)."""
        return await self.scans.scan(spread, only)

    async def deep_scan_once(self) -> list[ScanResult]:
        """Every tag walked and every layer hashed, its progress in a channel message; incidents for what broke."""
        channel = self.settings.slack_channel
        live = self.notifier.live_message(
            channel, f"🔎 Deep scan of {registries_named(self.settings)}: every layer hashed"
        )
        scans = await shown_while(live, self.scans.deep_scan(), lambda: self.scans.deep_progress)
        await self.notifier.scan_summary(channel, None, scans, live)
        for scan in scans:
            summary = scan.summary()
            shown = {k: summary.get(k) for k in ("registry", "tags", "broken", "errors", "elapsed_ms")}
            log.info("deep scan: %s", shown)
        await self.report_scan(scans, "deep_scan")
        return scans

    async def confirm_broken(self, result: CheckResult) -> CheckResult | None:
        """Walk a tag a scan found broken once more, fresh, a moment later: a passing 5xx opens no incident.
        A deep scan's finding is confirmed by a deep walk (only reading the bytes can see them wrong)."""
        await asyncio.sleep(CONFIRM_AFTER)
        name, _, tag = result.reference.rpartition(":")
        again = await self.check(ImageRef(name=name, tag=tag, host=result.registry), result.reference, result.deep)
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

    async def report_scan(self, scans: Sequence[ScanResult], source: str, user: str | None = None) -> list[Incident]:
        opened = []
        for result in (result for scan in scans for result in scan.broken):
            if (confirmed := await self.confirm_broken(result)) is not None:
                opened.append(await self.report_broken(confirmed, source, user))
        return opened

    # --- Alertmanager ------------------------------------------------------------------------------------

    async def handle_notification(self, notification: Notification) -> None:
        """Each alert goes to the registry its `instance` names; an instance no registry has is logged, ignored."""
        detect: dict[str, RegistryConfig] = {}
        info: dict[tuple[str, str], list[Alert]] = {}
        for alert in notification.alerts:
            entry = for_instance(self.settings, alert.instance)
            if entry is None:
                known = ", ".join(e.label for e in registry_list(self.settings))
                log.info("alert %s for instance %r ignored (this bot serves %s)", alert.name, alert.instance, known)
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name[:60], outcome="other_instance").inc()
                continue
            if alert.name == INTEGRITY_FAILURE:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                if alert.status == "firing":
                    detect[entry.label] = entry
                else:
                    self.supervisor.spawn(self.note_resolved(alert, entry), "noting a resolved alert")
            elif alert.name in INFO_ALERTS:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                info.setdefault((alert.name, entry.label), []).append(alert)
            else:
                log.info("alert %s ignored: not one of the registry's alerts", alert.name)
                metrics.ALERTS_RECEIVED.labels(alertname="other", outcome="ignored").inc()
        for entry in detect.values():  # one detection per registry and delivery, however many alerts it carries
            self.supervisor.spawn(self.detect("alert", entry), f"finding broken images on {entry.host} for an alert")
        for (alertname, instance), alerts in info.items():
            self.supervisor.spawn(self.info_alerts(alertname, alerts, instance), f"posting {alertname}")

    async def info_alerts(self, alertname: str, alerts: list[Alert], instance: str | None = None) -> None:
        """One message per firing episode (by fingerprint), however many alerts and repeats: new episodes in
        one delivery share one message, a repeat edits the message it has, a resolution says so in it."""
        instance = instance or alerts[0].instance
        summary = alerts[0].annotations.get("summary", "")
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

    async def detect(self, source: str, entry: RegistryConfig | None = None) -> list[Incident]:
        """Which images of a registry are broken (the alert names only the registry). One detection per
        registry at a time: a request that arrives while one runs joins it, and the running one goes round
        once more when it ends (it may have passed the image before the alert came)."""
        entry = entry or registry_list(self.settings)[0]
        running = self._detection.get(entry.label)
        if running is not None and not running.done():
            self._again.add(entry.label)
        else:
            running = self._detection[entry.label] = asyncio.ensure_future(self._detect_rounds(source, entry))
        return await asyncio.shield(running)

    async def _detect_rounds(self, source: str, entry: RegistryConfig) -> list[Incident]:
        opened = await self._detect(source, entry)
        while entry.label in self._again:  # asked for again meanwhile: one more round covers every such ask
            self._again.discard(entry.label)
            opened += await self._detect(source, entry)
        return opened

    async def _detect(self, source: str, entry: RegistryConfig) -> list[Incident]:
        # The cluster's probe (PROBE_JOB) watches the default registry: its log names images there only.
        is_default = entry == registry_list(self.settings)[0]
        candidates = await self._probe_candidates() if is_default else None
        if candidates is None:
            (scan,) = await self.scan(only=entry)
            if scan.error:
                log.error("the scan for an alert could not list %s: %s", entry.host, scan.error)
                await self.notifier.channel_note(
                    f"⚠️ {INTEGRITY_FAILURE} fired for {entry.label}, but the registry cannot be listed: {scan.error}"
                )
                return []
            return await self.report_scan([scan], source)
        opened = []
        for repo, tag in candidates:
            try:
                ref = ImageRef(name=parse_reference(f"{repo}:{tag}").name, tag=tag, host=entry.host)
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

    async def note_resolved(self, alert: Alert, entry: RegistryConfig) -> None:
        running = self._detection.get(entry.label)
        if running is not None and not running.done():  # let the detection post what it opens first
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        for incident in await asyncio.to_thread(self.store.list_open):
            if incident.registry_host == entry.host:
                await self.notifier.thread_note(
                    incident, f"ℹ️ Alertmanager: {alert.name} {alert.status} for {entry.label}."
                )
                await self.audit("alert", alert.status, incident_id=incident.id, detail=alert.name)

    # --- the bot's own probe -----------------------------------------------------------------------------

    async def probe_once(self) -> list[ScanResult]:
        """A full scan of every registry, exported under the probe's metric names once per registry (with
        that registry's `instance`), and incidents for what broke; spread over half of SCAN_INTERVAL unless a
        rate limit says otherwise."""
        scans = await self.scan(spread=True)
        for scan, entry in zip(scans, registry_list(self.settings), strict=False):
            instance, summary = entry.label, scan.summary()
            metrics.PROBE_CATALOG.labels(instance=instance).set(0 if scan.error else 1)
            if not scan.error:
                metrics.PROBE_FAILURES.labels(instance=instance).set(summary["broken"])
                metrics.PROBE_REPOS.labels(instance=instance).set(summary["repositories"])
                metrics.PROBE_TAGS.labels(instance=instance).set(summary["tags"])
                metrics.PROBE_INDEXES.labels(instance=instance).set(summary["indexes"])
            metrics.PROBE_LAST_RUN.labels(instance=instance).set(time.time())
            shown: dict[str, Any] = {"instance": instance}
            shown.update((k, summary[k]) for k in ("tags", "broken", "errors", "elapsed_ms") if k in summary)
            log.info("probe: %s", shown)
        await self.report_scan(scans, "probe")
        return scans


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
