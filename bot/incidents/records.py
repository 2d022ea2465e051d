"""Approvals, the audit trail, Slack deliveries already handled, and the leader lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from bot.incidents.database import Database
from bot.incidents.lifecycle import ApprovalStatus
from bot.incidents.models import ApprovalRequest, AuditEvent, Delivery, LeaderLock, utcnow


@dataclass(frozen=True)
class ApprovalAnswer:
    accepted: bool
    request: ApprovalRequest | None
    reason: str = ""


class Records(Database):
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
