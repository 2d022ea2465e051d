"""The incident store: every read and write of incidents, phase runs, approvals, audit and deliveries.

Methods are synchronous and short (one transaction each); async code calls them through
`asyncio.to_thread`. Works on SQLite (embedded, WAL) and PostgreSQL (several replicas).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bot.errors import UserFacingError
from bot.incidents.lifecycle import ApprovalStatus, RunStatus, State
from bot.incidents.models import (
    ApprovalRequest,
    AuditEvent,
    Delivery,
    Incident,
    LeaderLock,
    PhaseRun,
    utcnow,
)
from bot.registry.model import CheckResult

log = logging.getLogger(__name__)


class StoreUnavailable(UserFacingError):
    """The database cannot be reached or stays locked."""


@dataclass(frozen=True)
class AlreadyRunning:
    run: PhaseRun


@dataclass(frozen=True)
class ApprovalAnswer:
    accepted: bool
    request: ApprovalRequest | None
    reason: str = ""


def open_key(registry: str, image: str) -> str:
    return f"{registry}/{image}"


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; serialising our own writers avoids busy errors under load.
        self._sqlite_writer = threading.Lock() if self.engine.dialect.name == "sqlite" else None

    def migrate(self) -> None:
        from bot.migrations import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        lock = self._sqlite_writer
        if lock:
            lock.acquire()
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise StoreUnavailable(f"The bot's database is unavailable ({_short(exc)}); try again shortly.") from None
        finally:
            if lock:
                lock.release()

    def ping(self) -> bool:
        try:
            with self._tx() as session:
                session.execute(select(1))
            return True
        except StoreUnavailable:
            return False

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

    # --- approvals ------------------------------------------------------------------------------------

    def create_approval(
        self, incident_id: int, phase: str, requested_by: str, ttl: timedelta, target: str | None = None
    ) -> ApprovalRequest:
        now = utcnow()
        with self._tx() as session:
            request = ApprovalRequest(
                incident_id=incident_id,
                phase=phase,
                target=target,
                requested_by=requested_by,
                requested_at=now,
                expires_at=now + ttl,
                status=ApprovalStatus.PENDING,
            )
            session.add(request)
            session.flush()
            return request

    def get_approval(self, request_id: int) -> ApprovalRequest | None:
        with self._tx() as session:
            return session.get(ApprovalRequest, request_id)

    def set_approval_message(self, request_id: int, ts: str) -> None:
        with self._tx() as session:
            session.execute(update(ApprovalRequest).where(ApprovalRequest.id == request_id).values(message_ts=ts))

    def answer_approval(self, request_id: int, user: str, approve: bool) -> ApprovalAnswer:
        """Approve or deny a pending request. Only the first answer counts; the requester cannot answer."""
        now = utcnow()
        with self._tx() as session:
            request = session.get(ApprovalRequest, request_id)
            if request is None:
                return ApprovalAnswer(False, None, "that approval request does not exist")
            if request.status != ApprovalStatus.PENDING:
                return ApprovalAnswer(False, request, f"that request was already {request.status}")
            if request.expires_at <= now:
                request.status = ApprovalStatus.EXPIRED
                return ApprovalAnswer(False, request, "that request expired")
            if approve and request.requested_by == user:
                return ApprovalAnswer(False, request, "you requested it; a different approver must approve it")
            status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
            done = session.execute(
                update(ApprovalRequest)
                .where(ApprovalRequest.id == request_id, ApprovalRequest.status == ApprovalStatus.PENDING)
                .values(status=status, answered_by=user, answered_at=now)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                return ApprovalAnswer(False, request, "that request was already answered")
            request.status, request.answered_by, request.answered_at = status, user, now
            return ApprovalAnswer(True, request)

    def expire_approvals(self) -> list[ApprovalRequest]:
        now = utcnow()
        with self._tx() as session:
            expired = list(
                session.scalars(
                    select(ApprovalRequest).where(
                        ApprovalRequest.status == ApprovalStatus.PENDING, ApprovalRequest.expires_at <= now
                    )
                )
            )
            for request in expired:
                request.status = ApprovalStatus.EXPIRED
            return expired

    def pending_approvals(self, incident_id: int) -> list[ApprovalRequest]:
        with self._tx() as session:
            return list(
                session.scalars(
                    select(ApprovalRequest).where(
                        ApprovalRequest.incident_id == incident_id, ApprovalRequest.status == ApprovalStatus.PENDING
                    )
                )
            )

    # --- audit ------------------------------------------------------------------------------------------

    def audit(
        self,
        action: str,
        outcome: str,
        *,
        user: str | None = None,
        incident_id: int | None = None,
        phase: str | None = None,
        detail: str = "",
    ) -> AuditEvent:
        with self._tx() as session:
            entry = AuditEvent(
                at=utcnow(),
                user=user,
                incident_id=incident_id,
                phase=phase,
                action=action,
                outcome=outcome,
                detail=detail[:2000],
            )
            session.add(entry)
            session.flush()
            return entry

    def audit_events(self, since: datetime | None = None, incident_id: int | None = None) -> list[AuditEvent]:
        with self._tx() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if since is not None:
                query = query.where(AuditEvent.at >= since)
            if incident_id is not None:
                query = query.where(AuditEvent.incident_id == incident_id)
            return list(session.scalars(query))

    # --- deliveries and leadership ------------------------------------------------------------------

    def claim_delivery(self, key: str) -> bool:
        """True the first time a delivery key is seen, by any replica; False for a repeat."""
        try:
            with self._tx() as session:
                session.add(Delivery(key=key[:255], at=utcnow()))
            return True
        except IntegrityError:
            return False

    def forget_deliveries(self, older_than: timedelta) -> None:
        with self._tx() as session:
            session.execute(delete(Delivery).where(Delivery.at < utcnow() - older_than))

    def try_lead(self, name: str, holder: str, ttl: timedelta) -> bool:
        """Take or renew the named lock; True while `holder` holds it."""
        now = utcnow()
        try:
            with self._tx() as session:
                lock = session.get(LeaderLock, name, with_for_update=True)
                if lock is None:
                    session.add(LeaderLock(name=name, holder=holder, expires_at=now + ttl))
                    return True
                if lock.holder == holder or lock.expires_at <= now:
                    lock.holder = holder
                    lock.expires_at = now + ttl
                    return True
                return False
        except IntegrityError:
            return False

    def release_lead(self, name: str, holder: str) -> None:
        with self._tx() as session:
            session.execute(delete(LeaderLock).where(LeaderLock.name == name, LeaderLock.holder == holder))


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


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is safe from corruption and skips an fsync per commit; a power cut may lose
            # the last commits, a crash of the bot loses nothing.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
