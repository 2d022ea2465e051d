"""Prune in the channel: a plan is posted (asked for by an approver with `/registry prune`, or by the leader's
PRUNE_SCHEDULE) and waits for an approver's Apply, under the same rules as Rebuild (a second, different
approver under TWO_PERSON_RULE). Nothing is ever applied on its own. The apply plans again, fresh, reports
its progress in the plan's thread, audits every deletion, and opens an incident for any kept tag it finds
broken, as any other signal does."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Protocol

from bot import metrics
from bot.config import Settings
from bot.engine.intake import Intake
from bot.engine.ports import Audit, RunProgress
from bot.incidents.approvals import Guard
from bot.incidents.lifecycle import Phase, PruneStatus, StepState
from bot.incidents.models import PrunePlan
from bot.incidents.store import Store
from bot.prune import Hooks, Outcome, Policy, run_prune
from bot.prune.model import Deleted, Skipped
from bot.registry.registries import RegistryConfig, for_host, registry_list
from bot.secrets import SecretResolver

log = logging.getLogger(__name__)
COMMAND, SCHEDULE = "command", "schedule"


class PruneNotifier(Protocol):
    async def prune_plan(self, record: PrunePlan, outcome: Outcome) -> str | None:
        """Post the plan (counts per repository, the first deletions, an Apply button); its message ts."""
        ...

    async def prune_not_planned(self, channel: str, user: str | None, registry: str, error: str) -> None: ...
    async def prune_approval(self, record: PrunePlan) -> str | None:
        """Ask a second approver in the plan's thread; the request's message ts."""
        ...

    async def prune_answered(self, record: PrunePlan) -> None: ...
    def prune_progress(self, record: PrunePlan) -> RunProgress: ...
    async def prune_applied(self, record: PrunePlan, outcome: Outcome) -> None: ...


class PruneFlow:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        notifier: PruneNotifier,
        intake: Intake,
        secrets: SecretResolver,
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.intake = intake
        self.secrets = secrets
        self.guard = Guard(settings)
        self.audit = Audit(store)

    # --- the plan ----------------------------------------------------------------------------------------

    async def post_plan(
        self, entry: RegistryConfig, policy: Policy, user: str | None, channel: str, source: str = COMMAND
    ) -> PrunePlan | None:
        outcome = await run_prune(
            self.settings, self.secrets, entry, policy, apply=False, observer=metrics.observe_registry
        )
        if outcome.plan is None:
            await self.audit("prune_plan", "error", user=user, detail=f"{entry.host}: {outcome.error}")
            await self.notifier.prune_not_planned(channel, user, entry.host, outcome.error or "")
            return None
        planned = [decision.digest for decision in outcome.plan.deletions]  # what the approvers will see
        options = json.dumps({**policy.to_json(), "repository": policy.repository, "digests": planned})
        ttl = timedelta(seconds=self.settings.approval_ttl)
        record = await asyncio.to_thread(self.store.create_prune_plan, entry.host, options, source, user, channel, ttl)
        count = len(outcome.plan.deletions)
        await self.audit(
            "prune_plan", "planned", user=user, detail=f"plan #{record.id} on {entry.host}: {count} to delete"
        )
        ts = await self.notifier.prune_plan(record, outcome)
        if ts is not None:
            await asyncio.to_thread(self.store.set_prune_message, record.id, message_ts=ts)
            record.message_ts = ts
        return record

    async def scheduled(self) -> None:
        """PRUNE_SCHEDULE: a plan for every registry, posted to wait for an approver; never applied here."""
        policy = Policy.parse(None, None, self.settings.prune_older_than or None)
        for entry in registry_list(self.settings):
            await self.post_plan(entry, policy, None, self.settings.slack_channel, SCHEDULE)

    # --- Apply and its approval -----------------------------------------------------------------------

    async def ask(self, plan_id: int, user: str) -> str | None:
        """An approver (authorized already) clicked Apply: apply now, or ask a second approver. A reason
        when nothing happened."""
        two_people = self.guard.needs_two_people(Phase.REBUILD)  # the same rules as Rebuild
        answer = await asyncio.to_thread(self.store.ask_prune, plan_id, user, two_people)
        record = answer.plan
        if not answer.changed or record is None:
            await self.audit("refuse", "refused", user=user, detail=f"prune plan #{plan_id}: {answer.reason}")
            return answer.reason
        if two_people:
            await self.audit("request", "pending", user=user, detail=f"apply prune plan #{plan_id}")
            ts = await self.notifier.prune_approval(record)
            if ts is not None:
                await asyncio.to_thread(self.store.set_prune_message, plan_id, approval_ts=ts)
            return None
        await self.audit("request", "accepted", user=user, detail=f"apply prune plan #{plan_id}")
        await self.apply(record)
        return None

    async def answer(self, plan_id: int, user: str, approve: bool) -> str | None:
        answer = await asyncio.to_thread(self.store.answer_prune, plan_id, user, approve)
        record = answer.plan
        if not answer.changed or record is None:
            await self.audit("refuse", "refused", user=user, detail=f"prune plan #{plan_id}: {answer.reason}")
            if record is not None and record.status == PruneStatus.EXPIRED:
                await self.notifier.prune_answered(record)
            return answer.reason
        await self.audit(
            "approve" if approve else "deny",
            record.status,
            user=user,
            detail=f"apply prune plan #{plan_id} by {record.apply_by}",
        )
        await self.notifier.prune_answered(record)
        if approve:
            await self.apply(record)
        return None

    # --- the apply ----------------------------------------------------------------------------------------

    async def apply(self, record: PrunePlan) -> Outcome | None:
        entry = for_host(self.settings, record.registry_host)
        options = json.loads(record.options or "{}")
        policy = Policy(
            keep=int(options.get("keep", 10)),
            keep_tags=str(options.get("keep_tags") or Policy().keep_tags),
            older_than=options.get("older_than"),
            repository=options.get("repository"),
        )
        progress = self.notifier.prune_progress(record)
        user = record.approved_by
        if entry is None:
            await progress.step(
                "plan", f"{record.registry_host} is no longer one of the bot's registries", StepState.FAILED
            )
            await asyncio.to_thread(self.store.finish_prune, record.id, PruneStatus.FAILED)
            return None
        await self.audit("start", "started", user=user, detail=f"prune plan #{record.id} on {entry.host}")
        await progress.step("plan", "Planning again, fresh…")
        deleted_count = 0

        async def said(text: str) -> None:
            await progress.step("plan", text, StepState.DONE)

        async def deleted(item: Deleted) -> None:
            nonlocal deleted_count
            deleted_count += 1
            what = f"{entry.host} {item.repository}@{item.digest} tags {','.join(item.tags) or '-'}"
            await self.audit("prune_delete", item.outcome, user=user, detail=f"plan #{record.id}: {what}")
            await progress.step("delete", f"{deleted_count} deleted, the last {item.repository}@{item.digest[:19]}")

        async def skipped(item: Skipped) -> None:
            await self.audit("prune_skip", "kept", user=user, detail=f"{item.repository}@{item.digest}: {item.reason}")
            await progress.step(
                f"skip-{item.digest}", f"Kept {item.repository}@{item.digest[:19]}: {item.reason}", StepState.INFO
            )

        approved = options.get("digests")
        hooks = Hooks(
            progress=said,
            deleted=deleted,
            skipped=skipped,
            approved=frozenset(str(d) for d in approved) if isinstance(approved, list) else None,
        )
        try:
            outcome = await run_prune(
                self.settings, self.secrets, entry, policy, apply=True, hooks=hooks, observer=metrics.observe_registry
            )
        except Exception:  # a defect: the plan must still end (not hold its registry) and say so
            log.exception("prune plan #%s stopped", record.id)
            stopped = "an internal error stopped it (see the log)"
            outcome = Outcome(None, entry.host, policy, applied=True, error=stopped)
        verified = outcome.verified
        state = StepState.DONE if outcome.exit_code == 0 else StepState.FAILED
        await progress.step(
            "check",
            f"Kept tags: {verified.intact} intact, {len(verified.broken)} broken, {len(verified.errors)} not checked",
            state,
        )
        await progress.flush()
        status = PruneStatus.APPLIED if outcome.exit_code == 0 else PruneStatus.FAILED
        await asyncio.to_thread(self.store.finish_prune, record.id, status)
        await self.audit("finish", status, user=user, detail=f"prune plan #{record.id}: {len(outcome.deleted)} deleted")
        await self.notifier.prune_applied(record, outcome)
        for result in verified.broken:
            await self.intake.report_broken(result, "prune", user)
        return outcome
