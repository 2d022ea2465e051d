"""The database schema (SQLAlchemy 2). Alembic migrations in bot/migrations create it at start.

Two constraints carry the bot's safety across replicas, not code:
- `incidents.open_key` is unique and set only while an incident is open: one open incident per image:tag;
- a partial unique index allows one `running` phase run per incident: double clicks, Slack retries and
  two replicas receiving clicks cannot start a phase twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bot.incidents.lifecycle import ApprovalStatus, PruneStatus, RunStatus, State
from bot.refs import ImageRef


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite (which stores naive ones) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    registry_host: Mapped[str] = mapped_column("registry", String(255))
    image: Mapped[str] = mapped_column(String(400))  # owner/name:tag
    # registry/image while open, NULL once resolved: the unique key allows one open incident per image.
    open_key: Mapped[str | None] = mapped_column(String(700), unique=True)
    state: Mapped[str] = mapped_column(String(32), default=State.OPEN)
    digest: Mapped[str | None] = mapped_column(String(160))
    verdict: Mapped[str] = mapped_column(String(16), default="broken")
    problems: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of Problem.to_json()
    objects_checked: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(32))  # alert, scan, probe, command
    source_user: Mapped[str | None] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_count: Mapped[int] = mapped_column(Integer, default=1)
    channel: Mapped[str | None] = mapped_column(String(32))
    root_ts: Mapped[str | None] = mapped_column(String(32))
    status_note: Mapped[str] = mapped_column(Text, default="")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    fixed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consumers: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of workload descriptions
    clicked: Mapped[str] = mapped_column(Text, default="{}")  # phase -> the user whose click started it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def name(self) -> str:
        return self.image.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.image.rsplit(":", 1)[1]

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.name, self.tag)


class PhaseRun(Base):
    __tablename__ = "phase_runs"
    __table_args__ = (
        UniqueConstraint("incident_id", "phase", "attempt", name="uq_phase_attempt"),
        Index(
            "uq_one_running_phase",
            "incident_id",
            unique=True,
            sqlite_where=text(f"status = '{RunStatus.RUNNING}'"),
            postgresql_where=text(f"status = '{RunStatus.RUNNING}'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(16))  # diagnose, rebuild, restart, node, verify
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # a RunStatus
    target: Mapped[str | None] = mapped_column(String(255))  # the node, for node actions
    requested_by: Mapped[str | None] = mapped_column(String(64))
    approved_by: Mapped[str | None] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of {name, state, detail, at}
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(128))  # the replica running it
    progress_ts: Mapped[str | None] = mapped_column(String(32))  # the thread message it edits


class ApprovalRequest(Base):
    """A two-person-rule request: one approver asked, a different one must answer before it expires."""

    __tablename__ = "approval_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(16))
    target: Mapped[str | None] = mapped_column(String(255))
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=ApprovalStatus.PENDING)
    answered_by: Mapped[str | None] = mapped_column(String(64))
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_ts: Mapped[str | None] = mapped_column(String(32))


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user: Mapped[str | None] = mapped_column(String(64))
    incident_id: Mapped[int | None] = mapped_column(Integer, index=True)
    phase: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))  # request, approve, deny, refuse, start, step, finish, fail...
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class Delivery(Base):
    """A Slack delivery already handled (retries and replicas must not repeat its work)."""

    __tablename__ = "deliveries"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LeaderLock(Base):
    """Leader election by database when there is no Kubernetes Lease."""

    __tablename__ = "leader_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InfoAlert(Base):
    """One firing episode of an informational alert (by Alertmanager's fingerprint) and the message that
    shows it: a repeat notification edits that message, never posts again."""

    __tablename__ = "info_alerts"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    alertname: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str | None] = mapped_column(String(32))
    message_ts: Mapped[str | None] = mapped_column(String(32))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    repeats: Mapped[int] = mapped_column(Integer, default=0)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PrunePlan(Base):
    """A prune plan posted in Slack: its options (the plan itself is made again, fresh, when applied), who asked,
    the message with its Apply button, and the approval it waits for (the two-person rule)."""

    __tablename__ = "prune_plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    registry_host: Mapped[str] = mapped_column("registry", String(255))
    options: Mapped[str] = mapped_column(Text, default="{}")  # JSON of the Policy
    source: Mapped[str] = mapped_column(String(16))  # command or schedule
    requested_by: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    message_ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(24), default=PruneStatus.PENDING)
    apply_by: Mapped[str | None] = mapped_column(String(64))  # who clicked Apply
    approval_ts: Mapped[str | None] = mapped_column(String(32))  # the two-person request's message
    approved_by: Mapped[str | None] = mapped_column(String(64))
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
