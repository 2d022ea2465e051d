"""Phase runs through the lifecycle: asked for, approved where the table says so, started once (the database
decides), executed in the background, completed in one transaction, reported, and verified on schedule."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot import metrics
from bot.config import Settings
from bot.engine.ports import Audit, Notifier, RunProgress, Supervisor, VerificationScheduler
from bot.errors import UserFacingError
from bot.incidents import lifecycle
from bot.incidents.lifecycle import AFTER_FIX, Outcome, Phase, RunStatus, State, StepState
from bot.incidents.models import Incident, PhaseRun
from bot.incidents.store import AlreadyRunning, Store
from bot.integrations.kube import Kube
from bot.registry.registries import view_for_host
from bot.runbook.base import Link, PhaseContext, PhaseResult, Progress
from bot.runbook.phases import PhaseFn
from bot.secrets import SecretResolver

log = logging.getLogger(__name__)
VERIFY_RETRY = 300.0  # seconds: a verification that could not conclude runs again this much later
VERIFY_BUSY_RETRY = 60.0  # another phase runs when verification falls due: verify a minute later


@dataclass(frozen=True)
class Started:
    run: PhaseRun


@dataclass(frozen=True)
class Busy:
    """Another phase of the incident runs now."""

    run: PhaseRun


class Runner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        notifier: Notifier,
        supervisor: Supervisor,
        phases: dict[Phase, PhaseFn],
        scheduler: VerificationScheduler | None,
        *,
        kube: Kube | None,
        secrets: SecretResolver,
        replica: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.supervisor = supervisor
        self.phases = phases
        self.scheduler = scheduler
        self.kube = kube
        self.secrets = secrets
        self.replica = replica
        self.audit = Audit(store)
        self.running: dict[int, asyncio.Task[Any]] = {}  # run id -> its task, for heartbeats

    async def busy(self, incident: Incident, running: PhaseRun, user: str | None, phase: Phase) -> Busy:
        title = lifecycle.spec(running.phase).title
        detail = f"{title} is already running since {running.started_at:%H:%M} UTC, started by {running.requested_by}"
        await self.audit("refuse", "already_running", user=user, incident_id=incident.id, phase=phase, detail=detail)
        return Busy(running)

    # --- running ---------------------------------------------------------------------------------------------

    async def start(
        self,
        incident: Incident,
        phase: Phase,
        *,
        requested_by: str | None,
        approved_by: str | None,
        target: str | None = None,
        requested_at: datetime | None = None,
    ) -> Started | Busy:
        started = await asyncio.to_thread(
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
            return await self.busy(incident, started.run, requested_by, phase)
        run = started
        await self.audit(
            "start",
            RunStatus.RUNNING,
            user=requested_by,
            incident_id=incident.id,
            phase=phase,
            detail=f"attempt {run.attempt}" + (f", approved by {approved_by}" if approved_by else ""),
        )
        if requested_by and lifecycle.spec(phase).root_button:
            await asyncio.to_thread(self.store.set_clicked, incident.id, phase, requested_by)
        task = self.supervisor.spawn(self._execute(run, incident.id), f"{phase} of incident {incident.id}")
        self.running[run.id] = task
        run_id: int = run.id

        def forget(_task: asyncio.Task[Any]) -> None:
            self.running.pop(run_id, None)

        task.add_done_callback(forget)
        return Started(run)

    async def _execute(self, run: PhaseRun, incident_id: int) -> PhaseResult:
        spec = lifecycle.spec(run.phase)
        incident = await asyncio.to_thread(self.store.get, incident_id)
        assert incident is not None
        before = State(incident.state)
        if spec.during is not None:
            incident = await asyncio.to_thread(self.store.update, incident_id, state=spec.during)
        await self.notifier.refresh_incident(incident_id)
        progress = self.notifier.run_progress(incident, run)
        context = PhaseContext(
            view_for_host(self.settings, incident.registry_host) or self.settings,  # the incident's registry
            incident,
            self.secrets,
            self.kube,
            actor=run.requested_by,
            target=run.target,
            registry_observer=metrics.observe_registry,
        )
        started = time.monotonic()
        result = await self._run_phase(spec, context, AuditedProgress(progress, self.audit, run))
        seconds = time.monotonic() - started
        dry = self.settings.dry_run and spec.destructive
        outcome = Outcome.DRY_RUN if dry else result.outcome

        def decide(current: Incident) -> dict[str, Any]:
            """The incident's next fields, decided inside the transaction that ends the run."""
            state = lifecycle.next_state(spec.phase, outcome, current.state, before)
            fields: dict[str, Any] = {"state": state, "status_note": "", "clicked": "{}"}
            if state is State.FAILED and not result.ok:
                fields["failure_reason"] = f"{spec.title} failed: {result.summary}"
            if state in (State.STILL_BROKEN, State.VERIFYING) and not result.ok:
                fields["status_note"] = result.summary[:300]
            if result.consumers is not None:
                fields["consumers"] = json.dumps([w.to_json() for w in result.consumers])
            if outcome is Outcome.SUCCEEDED and spec.fixes:
                fields["fixed_at"] = datetime.now(UTC)
            return fields

        status = RunStatus.SUCCEEDED if result.ok else RunStatus.FAILED
        incident = await asyncio.to_thread(
            self.store.complete_phase, run.id, status, result.summary, progress.steps_json(), decide, result.check
        )
        metrics.PHASE_RUNS.labels(phase=spec.phase, outcome=status).inc()
        metrics.PHASE_SECONDS.labels(phase=spec.phase, outcome=status).observe(seconds)
        await self.audit(
            "finish" if result.ok else "fail",
            status,
            user=run.requested_by,
            incident_id=incident_id,
            phase=spec.phase,
            detail=result.summary,
        )
        try:
            await self.notifier.run_finished(incident, run, result, progress, seconds)
        except Exception:
            log.exception("reporting the end of %s of incident %s failed", spec.phase, incident_id)
        await self.count_incidents()
        if not dry:
            if result.ok and result.schedule_verification:
                await self.schedule_verification(incident)
            elif spec.phase is Phase.VERIFY and incident.state == State.VERIFYING:
                await self.schedule_verification(incident, VERIFY_RETRY)  # could not verify: try again later
        return result

    async def _run_phase(self, spec: lifecycle.PhaseSpec, context: PhaseContext, progress: Progress) -> PhaseResult:
        if context.settings is self.settings:  # no per-registry view: its registry left the configuration
            return PhaseResult.failed(
                f"The registry {context.incident.registry_host} is no longer configured, so {spec.title} was not run."
            )
        try:
            return await self.phases[spec.phase](context, progress)
        except UserFacingError as exc:
            return PhaseResult.failed(str(exc))
        except asyncio.CancelledError:
            raise  # the bot is stopping: the run stays running and is found interrupted at the next start
        except Exception as exc:
            log.exception("%s of incident %s failed unexpectedly", spec.phase, context.incident.id)
            return PhaseResult.failed(
                f"{spec.title} failed unexpectedly ({type(exc).__name__}); the bot's log has the details."
            )

    async def count_incidents(self) -> None:
        metrics.count_incidents([i.state for i in await asyncio.to_thread(self.store.list_open)])

    # --- verification on schedule -------------------------------------------------------------------------

    async def schedule_verification(self, incident: Incident, delay: float | None = None) -> None:
        if self.scheduler is None:
            return
        when = await self.scheduler.schedule_verification(incident, delay)
        current = await asyncio.to_thread(self.store.get, incident.id)
        if current is not None and current.state in AFTER_FIX:  # never over a phase that is running now
            at = when.astimezone(UTC).strftime("%H:%M UTC")
            await asyncio.to_thread(
                self.store.update, incident.id, state=State.VERIFYING, status_note=f"verification at {at}"
            )
        await self.notifier.verification_scheduled(incident, when)
        await self.audit(
            "schedule", "scheduled", incident_id=incident.id, phase=Phase.VERIFY, detail=f"at {when:%H:%M:%S}"
        )
        await self.notifier.refresh_incident(incident.id)

    async def run_verification(self, incident_id: int) -> None:
        """The scheduled verification of one incident (a job the leader's scheduler runs)."""
        incident = await asyncio.to_thread(self.store.get, incident_id)
        if incident is None or incident.state == State.RESOLVED:
            log.info("verification of incident %s skipped: %s", incident_id, incident.state if incident else "gone")
            return
        started = await self.start(incident, Phase.VERIFY, requested_by=None, approved_by=None)
        if isinstance(started, Busy):
            await self.schedule_verification(incident, VERIFY_BUSY_RETRY)


class AuditedProgress:
    """Passes steps on to the run's progress message, and audits each step that reaches an end state."""

    def __init__(self, inner: RunProgress, audit: Audit, run: PhaseRun) -> None:
        self.inner = inner
        self.audit = audit
        self.run = run
        self._audited: set[tuple[str, StepState]] = set()

    async def step(self, key: str, text: str, state: StepState = StepState.RUNNING, link: Link | None = None) -> None:
        await self.inner.step(key, text, state, link)
        if state.final and (key, state) not in self._audited:
            self._audited.add((key, state))
            await self.audit(
                "step",
                state,
                user=self.run.requested_by,
                incident_id=self.run.incident_id,
                phase=self.run.phase,
                detail=text[:500],
            )

    async def flush(self) -> None:
        await self.inner.flush()
