"""The incident store: every read and write of the bot's database, one short transaction each.

Incidents and phase runs are here; approvals, audit, deliveries and the leader lock in records.py; the
engine and transactions in database.py. Async code calls these methods through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.incidents.database import StoreUnavailable
from bot.incidents.lifecycle import ApprovalStatus, RunStatus, State
from bot.incidents.models import ApprovalRequest, Incident, PhaseRun, utcnow
from bot.incidents.prune_records import PruneRecords
from bot.incidents.records import Records
from bot.registry.model import CheckResult

__all__ = ["AlreadyRunning", "Store", "StoreUnavailable"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlreadyRunning:
    run: PhaseRun


def open_key(registry: str, image: str) -> str:
    return f"{registry}/{image}"


class Store(Records, PruneRecords):
    """Incidents and their phase runs (and, from Records, approvals, audit, deliveries, leadership)."""

    # --- incidents ------------------------------------------------------------------------------------

    def record_broken(
        self, result: CheckResult, image: str, source: str, user: str | None, channel: str | None
    ) -> tuple[Incident, bool]:
        """Open an incident for a broken image, or touch the open one (count, last seen). (incident, created)."""
        key = open_key(result.registry, image)
        now = utcnow()
        for _ in range(3):
            try:
                with self._tx() as session:
                    incident = session.scalars(select(Incident).where(Incident.open_key == key)).first()
                    if incident is not None:
                        incident.seen_count += 1
                        incident.last_seen = now
                        _apply_result(incident, result)
                        return incident, False
                    incident = Incident(
                        registry_host=result.registry,
                        image=image,
                        open_key=key,
                        state=State.OPEN,
                        source=source,
                        source_user=user,
                        first_seen=now,
                        last_seen=now,
                        channel=channel,
                    )
                    _apply_result(incident, result)
                    session.add(incident)
                    session.flush()
                    return incident, True
            except IntegrityError:
                continue  # another replica opened it between our read and write: touch theirs
        raise StoreUnavailable("Could not record the incident after three tries.")

    def get(self, incident_id: int) -> Incident | None:
        with self._tx() as session:
            return session.get(Incident, incident_id)

    def find_open(self, registry: str, image: str) -> Incident | None:
        with self._tx() as session:
            return session.scalars(select(Incident).where(Incident.open_key == open_key(registry, image))).first()

    def list_open(self) -> list[Incident]:
        with self._tx() as session:
            return list(session.scalars(select(Incident).where(Incident.open_key.is_not(None)).order_by(Incident.id)))

    def update(self, incident_id: int, **fields: Any) -> Incident:
        with self._tx() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                raise KeyError(incident_id)
            _update_incident(session, incident, fields)
            return incident

    def set_clicked(self, incident_id: int, phase: str, user: str) -> Incident:
        """Remember who started `phase` from its button, so the root shows who did it in its place."""
        with self._tx() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                raise KeyError(incident_id)
            clicked = json.loads(incident.clicked or "{}")
            clicked[phase] = user
            incident.clicked = json.dumps(clicked)
            return incident

    def clear_clicked(self, incident_id: int) -> None:
        with self._tx() as session:
            session.execute(update(Incident).where(Incident.id == incident_id).values(clicked="{}"))

    # --- phase runs -------------------------------------------------------------------------------------

    def start_phase(
        self,
        incident_id: int,
        phase: str,
        *,
        requested_by: str | None,
        approved_by: str | None,
        owner: str,
        target: str | None = None,
        requested_at: datetime | None = None,
    ) -> PhaseRun | AlreadyRunning:
        """Insert a running phase run, or report the one already running (the database decides)."""
        for _ in range(5):
            now = utcnow()
            try:
                with self._tx() as session:
                    attempt = (
                        session.scalar(
                            select(func.max(PhaseRun.attempt)).where(
                                PhaseRun.incident_id == incident_id, PhaseRun.phase == phase
                            )
                        )
                        or 0
                    ) + 1
                    run = PhaseRun(
                        incident_id=incident_id,
                        phase=phase,
                        attempt=attempt,
                        status=RunStatus.RUNNING,
                        target=target,
                        requested_by=requested_by,
                        approved_by=approved_by,
                        requested_at=requested_at or now,
                        approved_at=now if approved_by else None,
                        started_at=now,
                        heartbeat_at=now,
                        owner=owner,
                    )
                    session.add(run)
                    session.flush()
                    return run
            except IntegrityError:
                running = self.running_phase(incident_id)
                if running is not None:
                    return AlreadyRunning(running)
                # Two inserts took the same attempt number and none is running now: try again.
        raise StoreUnavailable("Could not start the phase after five tries.")

    def running_phase(self, incident_id: int) -> PhaseRun | None:
        with self._tx() as session:
            return session.scalars(
                select(PhaseRun).where(PhaseRun.incident_id == incident_id, PhaseRun.status == RunStatus.RUNNING)
            ).first()

    def update_run(self, run_id: int, **fields: Any) -> None:
        with self._tx() as session:
            session.execute(update(PhaseRun).where(PhaseRun.id == run_id).values(**fields))

    def heartbeat(self, run_ids: list[int]) -> None:
        if not run_ids:
            return
        with self._tx() as session:
            session.execute(
                update(PhaseRun)
                .where(PhaseRun.id.in_(run_ids), PhaseRun.status == RunStatus.RUNNING)
                .values(heartbeat_at=utcnow())
            )

    def complete_phase(
        self,
        run_id: int,
        status: str,
        summary: str,
        steps: str,
        decide: Callable[[Incident], dict[str, Any]],
        check: CheckResult | None = None,
    ) -> Incident:
        """End a run and move its incident in one transaction, so neither is left half-recorded.

        `decide(incident)` gives the incident's new fields from its state as it is inside the transaction."""
        with self._tx() as session:
            run = session.get(PhaseRun, run_id)
            if run is None:
                raise KeyError(run_id)
            now = utcnow()
            run.status = status
            run.result = summary if status == RunStatus.SUCCEEDED else None
            run.error = None if status == RunStatus.SUCCEEDED else summary
            run.steps = steps
            run.finished_at = now
            run.duration_ms = int((now - run.started_at).total_seconds() * 1000)
            incident = session.get(Incident, run.incident_id)
            if incident is None:
                raise KeyError(run.incident_id)
            if check is not None:
                _apply_result(incident, check)
            _update_incident(session, incident, decide(incident))
            return incident

    def stranded(self, during_states: frozenset[State]) -> list[Incident]:
        """Open incidents in a during-phase state (rebuilding, restarting) with no phase running."""
        with self._tx() as session:
            running = select(PhaseRun.incident_id).where(PhaseRun.status == RunStatus.RUNNING)
            return list(
                session.scalars(
                    select(Incident).where(
                        Incident.open_key.is_not(None),
                        Incident.state.in_(during_states),
                        Incident.id.not_in(running),
                        Incident.updated_at < utcnow() - timedelta(seconds=60),
                    )
                )
            )

    def claim_interrupted(self, stale_after: timedelta) -> list[PhaseRun]:
        """Mark running phases whose heartbeat stopped as interrupted, and return them (each once)."""
        cutoff = utcnow() - stale_after
        with self._tx() as session:
            stale = list(
                session.scalars(
                    select(PhaseRun).where(PhaseRun.status == RunStatus.RUNNING, PhaseRun.heartbeat_at < cutoff)
                )
            )
            claimed = []
            for run in stale:
                done = session.execute(
                    update(PhaseRun)
                    .where(PhaseRun.id == run.id, PhaseRun.status == RunStatus.RUNNING)
                    .values(status=RunStatus.INTERRUPTED, finished_at=utcnow(), error="the bot stopped while it ran")
                )
                if done.rowcount:  # type: ignore[attr-defined]
                    run.status = RunStatus.INTERRUPTED
                    claimed.append(run)
            return claimed


def _update_incident(session: Session, incident: Incident, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        setattr(incident, name, value)
    if fields.get("state") == State.RESOLVED:
        # Closed: a new break of the same image opens a new incident; pending approvals lapse with it.
        incident.open_key = None
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.incident_id == incident.id, ApprovalRequest.status == ApprovalStatus.PENDING)
            .values(status=ApprovalStatus.EXPIRED, answered_at=utcnow())
        )


def _apply_result(incident: Incident, result: CheckResult) -> None:
    incident.verdict = result.status
    if result.digest:
        incident.digest = result.digest
    if result.status != "error":
        incident.problems = json.dumps([p.to_json() for p in result.problems])
        incident.objects_checked = result.objects_checked
