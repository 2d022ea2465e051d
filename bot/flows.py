"""The bot's flows: a signal becomes an incident, an incident gets phase runs, each run moves its state.

Signals are Alertmanager notifications, scans and slash commands; phase runs are requested by buttons,
authorized by the Guard, made unique by the database, executed as background tasks, and reported in the
incident's thread. Everything a person does or is refused is audited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import metrics
from bot.alerts import INFO_ALERTS, INTEGRITY_FAILURE, Notification
from bot.config import Settings
from bot.errors import BadReference, UserFacingError
from bot.incidents.approvals import DESTRUCTIVE_PHASES, Guard
from bot.incidents.models import Incident, PhaseRun
from bot.incidents.store import OPEN_STATES, AlreadyRunning, Store
from bot.integrations.kube import Kube
from bot.refs import ImageRef, parse_reference
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult, scan_registry
from bot.runbook.base import PhaseContext, PhaseResult, Progress, SecretResolver, open_registry
from bot.runbook.diagnose import diagnose
from bot.slack import blocks
from bot.slack.gateway import SlackGateway
from bot.slack.progress import SlackProgress
from bot.text import escape

log = logging.getLogger(__name__)

PhaseFn = Callable[[PhaseContext, Progress], Awaitable[PhaseResult]]
TITLES = {
    "diagnose": "🔎 Diagnose",
    "rebuild": "🏗️ Rebuild",
    "restart": "🔄 Restart consumers",
    "node": "🧰 Drain node and restart containerd",
    "verify": "⏱️ Verify",
}
ACTION_PHASE = {
    "registry_diagnose": "diagnose",
    "registry_rebuild": "rebuild",
    "registry_restart": "restart",
    "registry_verify_now": "verify",
    "registry_node": "node",
}
VERIFY_RETRY = 300.0  # seconds: a verification that could not conclude, or could not start, runs again
# The state to return to when a phase leaves its during-state without naming one (a dry run).
STATE_BEFORE = {"rebuilding": "diagnosed", "restarting": "rebuilt"}
# The incident's state while a phase runs, after it succeeds, after it fails (None: leave it).
STATE_FLOW: dict[str, tuple[str | None, str | None, str | None]] = {
    "diagnose": (None, "diagnosed", None),
    "rebuild": ("rebuilding", "rebuilt", "failed"),
    "restart": ("restarting", "restarted", "failed"),
    "node": ("restarting", "restarted", "failed"),
    "verify": (None, "resolved", "still_broken"),
}
AFTER_FIX = ("rebuilt", "restarted", "verifying", "still_broken", "failed")
# Where a person may start each phase (the buttons shown follow this; the server enforces it too).
PHASE_STATES: dict[str, tuple[str, ...]] = {
    "diagnose": OPEN_STATES,
    "rebuild": ("open", "diagnosed", *AFTER_FIX),
    "restart": ("open", "diagnosed", *AFTER_FIX),
    "node": AFTER_FIX,
    "verify": AFTER_FIX,
}
PHASE_ACTION = {phase: action_id for action_id, phase in ACTION_PHASE.items()}
_ID = re.compile(r"^[0-9]{1,12}$")
_NODE_VALUE = re.compile(r"^([0-9]{1,12}):([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$")


def replica_id(settings: Settings) -> str:
    name = settings.pod_name or socket.gethostname()
    return f"{name}-{os.getpid()}-{secrets.token_hex(3)}"


class RegistryBot:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        slack: SlackGateway,
        kube: Kube | None = None,
        phases: dict[str, PhaseFn] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slack = slack
        self.kube = kube
        self.guard = Guard(settings, slack)
        self.secrets = SecretResolver(settings)
        self.replica = replica_id(settings)
        self.phases: dict[str, PhaseFn] = {"diagnose": diagnose, **(phases or {})}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.running_runs: dict[int, asyncio.Task[Any]] = {}
        self._root_locks: dict[int, asyncio.Lock] = {}
        self._detect_lock = asyncio.Lock()
        # Work started by Slack requests runs a few at a time: a burst of clicks must not crowd the event
        # loop that acknowledges the next ones (benchmarks/ack.py).
        self.request_work = asyncio.Semaphore(4)
        self.on_fixed: Callable[..., Awaitable[Any]] | None = None  # schedules verification (incident, delay)
        self.registry_observer = _observe_registry
        self.is_leader: Callable[[], bool] = lambda: True  # the Leadership replaces it

    # --- plumbing -------------------------------------------------------------------------------------

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        what: str,
        tell: tuple[str, str] | None = None,
        gate: asyncio.Semaphore | None = None,
    ) -> asyncio.Task[Any]:
        """Run background work; its failure is logged, never lost silently, never crashes the bot.

        `tell` (channel, user): who hears, in one line only they see, that their request failed.
        """

        async def guarded() -> Any:
            try:
                if gate is None:
                    return await coro
                async with gate:
                    return await coro
            except asyncio.CancelledError:
                raise
            except UserFacingError as exc:
                log.warning("%s failed: %s", what, exc)
                if tell:
                    await self.slack.ephemeral(tell[0], tell[1], f"⚠️ {escape(str(exc))}")
            except Exception:
                log.exception("%s failed unexpectedly", what)
                if tell:
                    await self.slack.ephemeral(
                        tell[0], tell[1], f"⚠️ {what} failed unexpectedly; the bot's log has the details."
                    )

        task = asyncio.create_task(guarded(), name=what)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def audit(self, action: str, outcome: str, **fields: Any) -> None:
        try:
            await self.db(self.store.audit, action, outcome, **fields)
        except UserFacingError as exc:
            log.error("audit %s/%s not written: %s", action, outcome, exc)

    def context(self, incident: Incident, actor: str | None = None, target: str | None = None) -> PhaseContext:
        return PhaseContext(
            self.settings,
            incident,
            self.secrets,
            self.kube,
            actor=actor,
            target=target,
            registry_observer=self.registry_observer,
        )

    async def checker_run(self, ref: ImageRef, display: str) -> CheckResult:
        async with open_registry(self.settings, self.secrets, self.registry_observer) as client:
            return await IntegrityChecker(client).check(ref, display=display)

    async def scan(self) -> ScanResult:
        async with open_registry(self.settings, self.secrets, self.registry_observer) as client:
            return await scan_registry(client)

    # --- the root message ----------------------------------------------------------------------------------

    async def refresh_root(self, incident_id: int) -> None:
        lock = self._root_locks.setdefault(incident_id, asyncio.Lock())
        async with lock:
            incident = await self.db(self.store.get, incident_id)
            if incident is None or not incident.root_ts or not incident.channel:
                return
            text, message = blocks.incident_message(incident)
            await self.slack.update(incident.channel, incident.root_ts, text, message)

    async def thread_reply(self, incident: Incident, text: str, message: list[dict[str, Any]] | None = None) -> None:
        if incident.root_ts and incident.channel:
            await self.slack.post(incident.channel, text, message, thread_ts=incident.root_ts)

    async def update_metrics(self) -> None:
        incidents = await self.db(self.store.list_open)
        counts: dict[str, int] = {}
        for incident in incidents:
            counts[incident.state] = counts.get(incident.state, 0) + 1
        for state in blocks.STATE_LABEL:
            metrics.INCIDENTS.labels(state=state).set(counts.get(state, 0))

    # --- signals ----------------------------------------------------------------------------------------

    async def report_broken(self, result: CheckResult, source: str, user: str | None = None) -> Incident:
        """Open an incident for a broken image (posting its root message and diagnosing it), or touch it."""
        image = result.reference
        incident, created = await self.db(
            self.store.record_broken, result, image, source, user, self.settings.slack_channel
        )
        if not created:
            await self.refresh_root(incident.id)
            return incident  # type: ignore[no-any-return]
        await self.audit("open", "opened", user=user, incident_id=incident.id, detail=f"{image} from {source}")
        text, message = blocks.incident_message(incident)
        posted = await self.slack.post(self.settings.slack_channel, text, message)
        if posted is not None:
            incident = await self.db(self.store.update, incident.id, root_ts=posted.ts, channel=posted.channel)
        await self.update_metrics()
        await self.start_phase(incident, "diagnose", requested_by=None, approved_by=None)
        return incident  # type: ignore[no-any-return]

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
                    self.spawn(self.find_broken_images("alert"), "finding broken images for an alert")
                else:
                    self.spawn(self.note_resolved(alert.name), "noting a resolved alert")
            elif alert.name in INFO_ALERTS:
                metrics.ALERTS_RECEIVED.labels(alertname=alert.name, outcome=alert.status).inc()
                if alert.status == "firing":
                    text, message = blocks.info_alert(alert.name, instance, alert.annotations.get("summary", ""))
                    self.spawn(self.slack.post(self.settings.slack_channel, text, message), "posting an alert")
            else:
                log.info("alert %s ignored: not one of the registry's alerts", alert.name)
                metrics.ALERTS_RECEIVED.labels(alertname="other", outcome="ignored").inc()

    async def find_broken_images(self, source: str) -> list[Incident]:
        """The alert names only the registry: find which images are broken (probe log, else our own scan)."""
        async with self._detect_lock:  # a burst of notifications is one detection
            candidates: list[tuple[str, str]] | None = None
            if self.kube is not None:
                try:
                    probe = await self.kube.probe_log()
                    if probe is not None and probe.failures:
                        candidates = list(dict.fromkeys((repo, tag) for repo, tag, _ in probe.failures))
                except UserFacingError as exc:
                    log.warning("probe log unavailable, scanning instead: %s", exc)
            opened = []
            if candidates is None:
                scan = await self.scan()
                if scan.error:
                    log.error("the scan for an alert could not list the registry: %s", scan.error)
                    await self.slack.post(
                        self.settings.slack_channel,
                        f"⚠️ {INTEGRITY_FAILURE} fired, but the registry cannot be listed: {escape(scan.error)}",
                    )
                    return []
                for result in scan.broken:
                    if (confirmed := await self.confirm_broken(result)) is not None:
                        opened.append(await self.report_broken(confirmed, source))
                return opened
            for repo, tag in candidates:
                try:
                    ref = ImageRef(name=parse_reference(f"{repo}:{tag}").name, tag=tag)
                except BadReference:
                    log.warning("probe log names %s:%s, which is not a valid reference", repo[:100], tag[:100])
                    continue
                result = await self.checker_run(ref, f"{ref.name}:{tag}")
                if result.status == "broken":
                    opened.append(await self.report_broken(result, source))
                else:
                    log.info("probe reported %s, but our check says %s", result.reference, result.status)
            return opened

    async def confirm_broken(self, result: CheckResult) -> CheckResult | None:
        """Walk a tag a scan found broken once more, fresh, a moment later: a passing 5xx opens no incident."""
        await asyncio.sleep(1.0)
        name, _, tag = result.reference.rpartition(":")
        again = await self.checker_run(ImageRef(name=name, tag=tag), result.reference)
        if again.status != "broken":
            log.info("%s looked broken in the scan but is %s on a second look", result.reference, again.status)
            return None
        return again

    async def note_resolved(self, alertname: str) -> None:
        for incident in await self.db(self.store.list_open):
            if incident.registry_host == self.settings.registry_host:
                await self.thread_reply(incident, f"ℹ️ Alertmanager: {alertname} resolved for {self.settings.instance}.")
                await self.audit("alert", "resolved", incident_id=incident.id, detail=alertname)

    # --- slash commands -----------------------------------------------------------------------------------

    async def command_check(self, ref: ImageRef, text: str, user: str, channel: str) -> None:
        display = f"{ref.name}:{ref.tag}" if ref.tag else str(ref)
        result = await self.checker_run(ref, display)
        await self.audit("check", result.status, user=user, detail=display)
        by_tag = ref.tag is not None and ref.digest is None
        if result.status == "broken" and by_tag:
            incident = await self.report_broken(result, "command", user)
            link = self.slack.permalink(incident.channel or "", incident.root_ts or "")
            if channel != incident.channel:
                await self.slack.ephemeral(channel, user, f"🔴 {display} is broken: incident <{link}|#{incident.id}>.")
            return
        if result.status == "error":
            await self.slack.ephemeral(channel, user, f"⚠️ {escape(result.verdict())}")
            return
        text_, message = blocks.check_message(result, user)
        await self.slack.post(channel, text_, message)
        if by_tag:
            open_incident = await self.db(self.store.find_open, self.settings.registry_host, display)
            if open_incident is not None and result.status == "intact":
                await self.thread_reply(open_incident, f"ℹ️ `/registry check` by <@{user}>: intact now.")

    async def command_scan(self, user: str | None, channel: str) -> ScanResult:
        scan = await self.scan()
        await self.audit("scan", "error" if scan.error else f"{len(scan.broken)} broken", user=user)
        refs = [r.reference for r in scan.broken]
        text, message = blocks.scan_summary(scan.summary(), user, refs)
        await self.slack.post(channel, text, message)
        for result in scan.broken:
            if (confirmed := await self.confirm_broken(result)) is not None:
                await self.report_broken(confirmed, "scan", user)
        return scan

    async def status_text(self) -> str:
        incidents = await self.db(self.store.list_open)
        return blocks.status_list(incidents, self.slack.permalink)

    # --- buttons ----------------------------------------------------------------------------------------

    async def on_action(self, action: dict[str, Any]) -> None:
        """A validated click (signature checked by Bolt); `action` holds the fields we read from the payload."""
        action_id, value, user = action["action_id"], action["value"], action["user"]
        channel, message_ts, thread_ts = action["channel"], action["message_ts"], action.get("thread_ts")
        if not await self.db(self.store.claim_delivery, f"action:{action.get('action_ts')}:{user}:{action_id}"):
            log.info("duplicate delivery of %s by %s ignored", action_id, user)
            return

        async def refuse(reason: str, incident_id: int | None = None, phase: str | None = None) -> None:
            await self.audit("refuse", "refused", user=user, incident_id=incident_id, phase=phase, detail=reason)
            await self.slack.ephemeral(channel, user, f"🚫 {reason}")

        if action_id == "registry_check_now":
            await self.audit("check_now", "requested", user=user)
            await self.command_scan(user, channel)
            return
        if action_id in ("registry_approve", "registry_deny"):
            await self.answer_approval(action, refuse)
            return
        if action_id not in ACTION_PHASE:
            await refuse(f"Unknown action `{escape(action_id[:40])}`; nothing was done.")
            return
        phase = ACTION_PHASE[action_id]
        target = None
        if phase == "node":
            match = _NODE_VALUE.match(value or "")
            if not match:
                await refuse("That button's value is malformed; nothing was done.")
                return
            incident_id, target = int(match[1]), match[2]
        else:
            if not _ID.match(value or ""):
                await refuse("That button's value is malformed; nothing was done.")
                return
            incident_id = int(value)
        incident = await self.db(self.store.get, incident_id)
        if incident is None:
            await refuse(f"Incident #{incident_id} does not exist; nothing was done.")
            return
        if channel != incident.channel or incident.root_ts not in (message_ts, thread_ts):
            await refuse(f"That button does not belong to incident #{incident_id}; nothing was done.", incident_id)
            return
        if incident.state == "resolved":
            await self.slack.ephemeral(channel, user, f"Incident #{incident.id} is already resolved.")
            return
        if phase in DESTRUCTIVE_PHASES and not await self.guard.is_approver(user):
            await refuse(f"Only approvers may run {TITLES[phase]}: {self.guard.approvers_text()}.", incident.id, phase)
            await self.thread_reply(incident, f"🚫 <@{user}> asked for {TITLES[phase]}: refused, not an approver.")
            return
        running = await self.db(self.store.running_phase, incident.id)
        if running is not None:  # the usual double click: say what runs, not that the state forbids it
            await self.tell_already_running(incident, running, user, phase)
            return
        if incident.state not in PHASE_STATES[phase]:
            await refuse(f"{TITLES[phase]} does not apply while the incident is {incident.state}.", incident.id, phase)
            return
        if phase not in self.phases:
            await refuse(f"{TITLES[phase]} is not available on this bot.", incident.id, phase)
            return
        await self.request_phase(incident, phase, user, target)

    async def request_phase(self, incident: Incident, phase: str, user: str, target: str | None = None) -> None:
        if self.guard.needs_two_people(phase):
            pending = [
                r
                for r in await self.db(self.store.pending_approvals, incident.id)
                if (r.phase, r.target) == (phase, target)
            ]
            if pending:
                await self.slack.ephemeral(
                    incident.channel or self.settings.slack_channel,
                    user,
                    f"⏳ <@{pending[0].requested_by}> already asked for {TITLES[phase]}; "
                    "it waits for a second approver.",
                )
                return
            ttl = timedelta(seconds=self.settings.approval_ttl)
            request = await self.db(self.store.create_approval, incident.id, phase, user, ttl, target)
            await self.audit(
                "request",
                "pending",
                user=user,
                incident_id=incident.id,
                phase=phase,
                detail=f"approval request #{request.id}" + (f" for {target}" if target else ""),
            )
            what = TITLES[phase] + (f" on {target}" if target else "")
            text, message = blocks.approval_message(request, what)
            posted = None
            if incident.channel and incident.root_ts:
                posted = await self.slack.post(incident.channel, text, message, thread_ts=incident.root_ts)
            if posted is not None:
                await self.db(self.store.set_approval_message, request.id, posted.ts)
            return
        approved_by = user if phase in DESTRUCTIVE_PHASES else None
        await self.audit("request", "accepted", user=user, incident_id=incident.id, phase=phase)
        await self.start_phase(incident, phase, requested_by=user, approved_by=approved_by, target=target)

    async def answer_approval(self, action: dict[str, Any], refuse: Callable[..., Awaitable[None]]) -> None:
        user, value, approve = action["user"], action["value"], action["action_id"] == "registry_approve"
        if not _ID.match(value or ""):
            await refuse("That button's value is malformed; nothing was done.")
            return
        request = await self.db(self.store.get_approval, int(value))
        incident = await self.db(self.store.get, request.incident_id) if request else None
        if request is None or incident is None:
            await refuse("That approval request does not exist; nothing was done.")
            return
        if action["channel"] != incident.channel or request.message_ts != action["message_ts"]:
            await refuse("That button does not belong to this request; nothing was done.", incident.id)
            return
        if not await self.guard.is_approver(user):
            await refuse(f"Only approvers may answer: {self.guard.approvers_text()}.", incident.id, request.phase)
            return
        if approve and incident.state not in PHASE_STATES[request.phase]:
            await refuse(
                f"{TITLES[request.phase]} no longer applies: the incident is {incident.state}.",
                incident.id,
                request.phase,
            )
            return
        answer = await self.db(self.store.answer_approval, request.id, user, approve)
        what = TITLES[request.phase] + (f" on {request.target}" if request.target else "")
        if not answer.accepted:
            await refuse(f"Not done: {answer.reason}.", incident.id, request.phase)
            if answer.request is not None and answer.request.status == "expired" and request.message_ts:
                text, message = blocks.approval_answered(answer.request, what)
                await self.slack.update(incident.channel or "", request.message_ts, text, message)
            return
        decided = answer.request
        await self.audit(
            "approve" if approve else "deny",
            decided.status,
            user=user,
            incident_id=incident.id,
            phase=request.phase,
            detail=f"approval request #{request.id} by {request.requested_by}",
        )
        text, message = blocks.approval_answered(decided, what)
        if request.message_ts:
            await self.slack.update(incident.channel or "", request.message_ts, text, message)
        if approve:
            await self.start_phase(
                incident,
                request.phase,
                requested_by=request.requested_by,
                approved_by=user,
                target=request.target,
                requested_at=request.requested_at,
            )
        else:
            await self.db(self.store.clear_clicked, incident.id)
            await self.refresh_root(incident.id)

    # --- running a phase --------------------------------------------------------------------------------

    async def start_phase(
        self,
        incident: Incident,
        phase: str,
        *,
        requested_by: str | None,
        approved_by: str | None,
        target: str | None = None,
        requested_at: datetime | None = None,
    ) -> PhaseRun | None:
        started = await self.db(
            self.store.start_phase,
            incident.id,
            phase,
            requested_by=requested_by,
            approved_by=approved_by,
            owner=self.replica,
            target=target,
            requested_at=requested_at,
        )
        if isinstance(started, AlreadyRunning):
            await self.tell_already_running(incident, started.run, requested_by, phase)
            return None
        run = started
        await self.audit(
            "start",
            "running",
            user=requested_by,
            incident_id=incident.id,
            phase=phase,
            detail=f"attempt {run.attempt}" + (f", approved by {approved_by}" if approved_by else ""),
        )
        action_id = PHASE_ACTION[phase]
        if requested_by and action_id in blocks.ACTIONS:
            label = f"✅ {blocks.ACTIONS[action_id]} by <@{requested_by}>"
            await self.db(self.store.set_clicked, incident.id, action_id, label)
        task = self.spawn(self._execute(run, incident.id), f"{phase} of incident {incident.id}")
        self.running_runs[run.id] = task
        run_id: int = run.id

        def forget(_task: asyncio.Task[Any]) -> None:
            self.running_runs.pop(run_id, None)

        task.add_done_callback(forget)
        return run  # type: ignore[no-any-return]

    async def tell_already_running(self, incident: Incident, running: PhaseRun, user: str | None, phase: str) -> None:
        since = running.started_at.astimezone(UTC).strftime("%H:%M UTC")
        by = f"<@{running.requested_by}>" if running.requested_by else "the bot"
        reason = f"{TITLES.get(running.phase, running.phase)} is already running since {since}, started by {by}."
        await self.audit("refuse", "already_running", user=user, incident_id=incident.id, phase=phase, detail=reason)
        if user and incident.channel:
            await self.slack.ephemeral(incident.channel, user, f"⏳ {reason}")

    async def _execute(self, run: PhaseRun, incident_id: int) -> PhaseResult:
        phase = run.phase
        title = TITLES[phase] + (f" {run.target}" if run.target else "")
        during, after_ok, after_fail = STATE_FLOW[phase]
        who = ""
        if run.requested_by:
            who = f" — requested by <@{run.requested_by}>"
            if run.approved_by and run.approved_by != run.requested_by:
                who += f", approved by <@{run.approved_by}>"
        incident = await self.db(self.store.get, incident_id)
        note = f"{TITLES[phase]} running" + (f", started by <@{run.requested_by}>" if run.requested_by else "")
        fields: dict[str, Any] = {"status_note": note}
        if during:
            fields["state"] = during
        incident = await self.db(self.store.update, incident_id, **fields)
        await self.refresh_root(incident_id)

        progress = SlackProgress(
            self.slack,
            incident.channel or self.settings.slack_channel,
            incident.root_ts or "",
            f"{title} (attempt {run.attempt}){who}",
        )

        async def remember(ts: str) -> None:
            await self.db(self.store.update_run, run.id, progress_ts=ts)

        progress.on_posted = remember
        sink = AuditedProgress(progress, self, run)
        started = time.monotonic()
        try:
            result = await self.phases[phase](self.context(incident, run.requested_by, run.target), sink)
        except UserFacingError as exc:
            result = PhaseResult(False, str(exc))
        except asyncio.CancelledError:
            raise  # the bot is stopping: the run stays `running` and is found interrupted at the next start
        except Exception as exc:
            log.exception("%s of incident %s failed unexpectedly", phase, incident_id)
            result = PhaseResult(
                False, f"{TITLES[phase]} failed unexpectedly ({type(exc).__name__}); the bot's log has the details."
            )
        seconds = time.monotonic() - started
        outcome = "succeeded" if result.ok else "failed"
        dry = self.settings.dry_run and phase in DESTRUCTIVE_PHASES
        fields = {"status_note": "", "clicked": "{}"}
        next_state = None if dry else result.state or (after_ok if result.ok else after_fail)
        current = (await self.db(self.store.get, incident_id)).state
        if phase == "diagnose" and current not in ("open", "diagnosed"):
            next_state = current  # a diagnosis never moves an incident backwards
        if next_state is None and during:
            next_state = current if current != during else STATE_BEFORE.get(during, "diagnosed")
        if next_state:
            fields["state"] = next_state
        if not result.ok and next_state == "failed":
            fields["failure_reason"] = f"{TITLES[phase]} failed: {result.summary}"
        if next_state in ("still_broken", "verifying") and not result.ok:
            fields["status_note"] = escape(result.summary[:300])
        if "consumers" in result.data:
            fields["consumers"] = json.dumps(result.data["consumers"])
        if result.ok and not dry and phase in ("rebuild", "restart", "node"):
            fields["fixed_at"] = datetime.now(UTC)
        check = result.data.get("check") if isinstance(result.data.get("check"), CheckResult) else None
        # The run's end and the incident's next state are one transaction: nothing is left half-recorded.
        incident = await self.db(
            self.store.complete_phase,
            run.id,
            outcome,
            result.summary,
            json.dumps(list(progress.steps.values())),
            fields,
            check,
        )
        metrics.PHASE_RUNS.labels(phase=phase, outcome=outcome).inc()
        metrics.PHASE_SECONDS.labels(phase=phase, outcome=outcome).observe(seconds)
        await self.audit(
            "finish" if result.ok else "fail",
            outcome,
            user=run.requested_by,
            incident_id=incident_id,
            phase=phase,
            detail=result.summary,
        )
        try:
            await self._report_result(incident, phase, result, progress, seconds)
        except Exception:
            log.exception("reporting the end of %s of incident %s failed", phase, incident_id)
        if self.on_fixed is not None and not dry:
            if result.ok and result.data.get("schedule_verification"):
                await self.on_fixed(incident)
            elif phase == "verify" and next_state == "verifying":
                await self.on_fixed(incident, VERIFY_RETRY)  # could not verify: try again later
        return result

    async def _report_result(
        self, incident: Incident, phase: str, result: PhaseResult, progress: SlackProgress, seconds: float
    ) -> None:
        icon = "✅" if result.ok else "❌"
        progress.set_footer(f"{icon} {'Done' if result.ok else 'Failed'} in {_duration(seconds)}")
        await progress.flush()
        reply = f"{icon} {TITLES[phase]}: {result.summary}"
        if result.details:
            reply += "\n" + "\n".join(f"> {escape(line)}" for line in result.details[:20])
        await self.thread_reply(incident, reply)
        await self.refresh_root(incident.id)
        await self.update_metrics()
        nodes = result.data.get("nodes") or []
        if phase == "restart" and nodes and self.settings.node_actions:
            text, message = blocks.node_offer(incident.id, nodes)
            await self.thread_reply(incident, text, message)

    # --- verification and the bot's own probe -----------------------------------------------------------

    async def announce_verification(self, incident: Incident, when: datetime) -> None:
        at = when.astimezone(UTC).strftime("%H:%M UTC")
        current = await self.db(self.store.get, incident.id)
        if current is not None and current.state in AFTER_FIX:  # never over a phase that is running now
            await self.db(self.store.update, incident.id, state="verifying", status_note=f"verification at {at}")
        await self.thread_reply(incident, f"⏱️ Verification at {at}.")
        await self.audit("schedule", "scheduled", incident_id=incident.id, phase="verify", detail=f"at {when:%H:%M:%S}")
        await self.refresh_root(incident.id)

    async def run_verification(self, incident_id: int, requested_by: str | None) -> None:
        incident = await self.db(self.store.get, incident_id)
        if incident is None or incident.state == "resolved":
            log.info("verification of incident %s skipped: %s", incident_id, "resolved" if incident else "gone")
            return
        started = await self.start_phase(incident, "verify", requested_by=requested_by, approved_by=None)
        if started is None and self.on_fixed is not None:
            await self.on_fixed(incident, 60.0)  # another phase runs now: verify a minute later

    async def probe_once(self) -> ScanResult:
        """The bot's own probe: a full scan, exported under the probe's metric names, incidents for what broke."""
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
        for result in scan.broken:
            if (confirmed := await self.confirm_broken(result)) is not None:
                await self.report_broken(confirmed, "probe")
        log.info("probe: %s", {k: summary[k] for k in ("tags", "broken", "errors", "elapsed_ms") if k in summary})
        return scan

    # --- crash safety ----------------------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """Only the database: a Slack outage must never stop them (others would think our phases died)."""
        while True:
            try:
                await self.db(self.store.heartbeat, list(self.running_runs))
            except Exception as exc:
                log.warning("heartbeat not written: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def maintain(self) -> None:
        """Interrupted phases, expired approvals, incidents left behind: found here, reported in the background."""
        interval = self.settings.heartbeat_interval
        while True:
            try:
                await self.maintain_once()
            except UserFacingError as exc:
                log.warning("maintenance skipped: %s", exc)
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(interval)

    async def maintain_once(self) -> None:
        stale_after = timedelta(seconds=self.settings.heartbeat_interval * 3 + 5)
        for run in await self.db(self.store.claim_interrupted, stale_after):
            self.spawn(self.report_interrupted(run), f"reporting interrupted run {run.id}")
        for request in await self.db(self.store.expire_approvals):
            self.spawn(self.report_expired(request), f"reporting expired approval {request.id}")
        if self.is_leader():
            for incident in await self.db(self.store.list_open):
                if not incident.root_ts and incident.created_at < datetime.now(UTC) - timedelta(seconds=30):
                    self.spawn(self.post_missing_root(incident.id), f"posting incident {incident.id}")
            for incident in await self.db(self.store.stranded, tuple(STATE_BEFORE)):
                self.spawn(self.report_stranded(incident), f"repairing incident {incident.id}")
            await self.db(self.store.forget_deliveries, timedelta(days=2))

    async def report_expired(self, request: Any) -> None:
        incident = await self.db(self.store.get, request.incident_id)
        await self.audit(
            "expire",
            "expired",
            incident_id=request.incident_id,
            phase=request.phase,
            detail=f"approval request #{request.id} by {request.requested_by}",
        )
        if incident and request.message_ts:
            text, message = blocks.approval_answered(request, TITLES[request.phase])
            await self.slack.update(incident.channel or "", request.message_ts, text, message)

    async def post_missing_root(self, incident_id: int) -> None:
        """An incident whose root message never reached Slack (Slack down past the retries): post it now."""
        incident = await self.db(self.store.get, incident_id)
        if incident is None or incident.root_ts:
            return
        text, message = blocks.incident_message(incident)
        posted = await self.slack.post(incident.channel or self.settings.slack_channel, text, message)
        if posted is not None:
            await self.db(self.store.update, incident.id, root_ts=posted.ts, channel=posted.channel)

    async def report_stranded(self, incident: Incident) -> None:
        """An incident left in a during-phase state with no phase running (its run ended unrecorded)."""
        reason = f"{blocks.STATE_LABEL.get(incident.state, incident.state)} ended without a recorded result."
        await self.db(
            self.store.update, incident.id, state="failed", failure_reason=reason, status_note="", clicked="{}"
        )
        await self.audit("repair", "failed", incident_id=incident.id, detail=reason)
        await self.thread_reply(incident, f"⚠️ {reason} Check the steps above, then run the phase again.")
        await self.refresh_root(incident.id)

    async def report_interrupted(self, run: PhaseRun) -> None:
        title = TITLES.get(run.phase, run.phase)
        await self.audit(
            "interrupted",
            "interrupted",
            incident_id=run.incident_id,
            phase=run.phase,
            detail=f"attempt {run.attempt}, last heartbeat {run.heartbeat_at:%H:%M:%S} UTC",
        )
        reason = f"{title} (attempt {run.attempt}) was interrupted: the bot stopped while it ran."
        incident = await self.db(
            self.store.update, run.incident_id, state="failed", failure_reason=reason, status_note="", clicked="{}"
        )
        action_id = PHASE_ACTION.get(run.phase, "registry_diagnose")
        value = f"{incident.id}:{run.target}" if run.phase == "node" and run.target else str(incident.id)
        text = f"⚠️ {reason} Nothing half-done is forgotten: check the steps above, then run it again."
        message: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "elements": [blocks.button(action_id, f"Run {title} again", value)]},
        ]
        await self.thread_reply(incident, text, message)
        await self.refresh_root(incident.id)


class AuditedProgress:
    """Passes steps to the Slack message, and audits each step that reaches an end state."""

    def __init__(self, inner: SlackProgress, bot: RegistryBot, run: PhaseRun) -> None:
        self.inner = inner
        self.bot = bot
        self.run = run
        self._audited: set[tuple[str, str]] = set()

    async def step(self, key: str, text: str, state: str = "running") -> None:
        await self.inner.step(key, text, state)
        if state in ("done", "failed", "warning") and (key, state) not in self._audited:
            self._audited.add((key, state))
            await self.bot.audit(
                "step",
                state,
                user=self.run.requested_by,
                incident_id=self.run.incident_id,
                phase=self.run.phase,
                detail=text[:500],
            )

    async def flush(self) -> None:
        await self.inner.flush()


def _observe_registry(method: str, status: int, seconds: float) -> None:
    metrics.REGISTRY_REQUESTS.labels(method=method, status=str(status) if status else "none").inc()
    metrics.REGISTRY_LATENCY.labels(method=method).observe(seconds)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"
