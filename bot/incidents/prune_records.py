"""Prune plans posted in Slack and their approvals: every change of status is one conditional UPDATE, so a
double click, a Slack retry or another replica never applies a plan twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update

from bot.incidents.database import Database
from bot.incidents.lifecycle import PruneStatus
from bot.incidents.models import PrunePlan, utcnow

# An apply older than this no longer holds its registry: its replica died mid-apply (no apply runs this long).
APPLY_HOLDS = timedelta(hours=6)


@dataclass(frozen=True)
class PruneAnswer:
    """What a click on a plan did: `status` is the plan's status after it; `reason` says why nothing changed."""

    changed: bool
    plan: PrunePlan | None
    reason: str = ""


class PruneRecords(Database):
    def create_prune_plan(
        self, registry: str, options: str, source: str, requested_by: str | None, channel: str, ttl: timedelta
    ) -> PrunePlan:
        now = utcnow()
        with self._tx() as session:
            plan = PrunePlan(
                registry_host=registry,
                options=options,
                source=source,
                requested_by=requested_by,
                channel=channel,
                created_at=now,
                expires_at=now + ttl,
                status=PruneStatus.PENDING,
            )
            session.add(plan)
            session.flush()
            return plan

    def get_prune_plan(self, plan_id: int) -> PrunePlan | None:
        with self._tx() as session:
            return session.get(PrunePlan, plan_id)

    def set_prune_message(self, plan_id: int, *, message_ts: str | None = None, approval_ts: str | None = None) -> None:
        values = {k: v for k, v in (("message_ts", message_ts), ("approval_ts", approval_ts)) if v is not None}
        with self._tx() as session:
            session.execute(update(PrunePlan).where(PrunePlan.id == plan_id).values(**values))

    def ask_prune(self, plan_id: int, user: str, two_people: bool) -> PruneAnswer:
        """An approver clicked Apply: the plan applies now, or (two_people) waits for a second approver."""
        after = PruneStatus.AWAITING_APPROVAL if two_people else PruneStatus.APPLYING
        values: dict[str, object] = {"status": after, "apply_by": user}
        if not two_people:
            values |= {"approved_by": user, "answered_at": utcnow()}
        return self._move(plan_id, PruneStatus.PENDING, values, user, two_people)

    def answer_prune(self, plan_id: int, user: str, approve: bool) -> PruneAnswer:
        """A second approver answered: approve (never the one who clicked Apply) or deny."""
        after = PruneStatus.APPLYING if approve else PruneStatus.DENIED
        values: dict[str, object] = {"status": after, "approved_by": user, "answered_at": utcnow()}
        return self._move(plan_id, PruneStatus.AWAITING_APPROVAL, values, user, approve)

    def finish_prune(self, plan_id: int, status: PruneStatus) -> None:
        with self._tx() as session:
            session.execute(update(PrunePlan).where(PrunePlan.id == plan_id).values(status=status))

    def _move(
        self, plan_id: int, before: PruneStatus, values: dict[str, object], user: str, check: bool
    ) -> PruneAnswer:
        now = utcnow()
        with self._tx() as session:
            plan = session.get(PrunePlan, plan_id)
            if plan is None:
                return PruneAnswer(False, None, "that prune plan does not exist")
            if plan.status != before:
                return PruneAnswer(False, plan, f"that plan is {plan.status.replace('_', ' ')} already")
            if plan.expires_at <= now:
                plan.status = PruneStatus.EXPIRED
                return PruneAnswer(False, plan, "that plan expired; run `/registry prune` again")
            if before == PruneStatus.AWAITING_APPROVAL and check and plan.apply_by == user:
                return PruneAnswer(False, plan, "you asked to apply it; a different approver must approve it")
            if values["status"] == PruneStatus.APPLYING:
                busy = session.scalars(
                    select(PrunePlan.id).where(
                        PrunePlan.registry_host == plan.registry_host,
                        PrunePlan.status == PruneStatus.APPLYING,
                        PrunePlan.answered_at > now - APPLY_HOLDS,
                        PrunePlan.id != plan_id,
                    )
                ).first()
                if busy is not None:  # two applies on one registry would each plan around the other's deletions
                    busy_now = f"prune plan #{busy} is being applied on {plan.registry_host}"
                    return PruneAnswer(False, plan, f"{busy_now}; ask for a new plan once it is done")
            done = session.execute(
                update(PrunePlan).where(PrunePlan.id == plan_id, PrunePlan.status == before).values(**values)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                return PruneAnswer(False, plan, "that plan was answered already")
            for key, value in values.items():
                setattr(plan, key, value)
            return PruneAnswer(True, plan)
