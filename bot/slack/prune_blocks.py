"""Prune's messages in Slack: the plan with its Apply button, the two-person request, the answer, the result.
Outside text is escaped here, as in blocks.py, whose helpers these use."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.registry.model import short_digest
from bot.slack.blocks import Blocks, _text, _when, escape, mention, plain_button
from bot.slack.limits import CONTEXT_TEXT, clip, head_lines

PRUNE_APPLY, PRUNE_APPROVE, PRUNE_DENY = "registry_prune_apply", "registry_prune_approve", "registry_prune_deny"
PRUNE_SHOWN = 10  # deletions listed in the plan's message
PRUNE_USAGE = (
    "Usage: `/registry prune [registry] [keep=N] [older=DURATION]` (approvers only): plans; an Apply button deletes."
)


def prune_plan(plan_id: int, outcome: Any, source: str, user: str | None) -> tuple[str, Blocks]:
    """The plan: counts per repository, the first deletions, and an Apply button (when there is anything)."""
    plan = outcome.plan
    deletions = plan.deletions
    who = f" (asked by {mention(user)})" if user else (" (scheduled: PRUNE_SCHEDULE)" if source == "schedule" else "")
    head = (
        f"🧹 Prune plan #{plan_id} for {escape(outcome.registry)}: delete {len(deletions)} of "
        f"{len(deletions) + plan.kept_count} versions{who}"
    )
    policy = f"_{escape(clip(outcome.policy.describe(), 500))}, and everything a kept version needs._"
    blocks: Blocks = [{"type": "section", "text": _text(f"{head}\n{policy}")}]
    if counts := [f"• `{escape(repo)}`: delete {gone}, keep {kept}" for repo, gone, kept in plan.counts()]:
        blocks.append({"type": "section", "text": _text("*Per repository*\n" + head_lines(counts, 2800, "more"))})
    shown = [
        f"• `{escape(d.repository)}@{short_digest(d.digest)}` {escape(','.join(d.tags) or 'untagged')} — "
        f"{escape(clip(d.reason, 150))}"
        for d in deletions[:PRUNE_SHOWN]
    ]
    if shown:
        more = f"\n…and {len(deletions) - PRUNE_SHOWN} more" if len(deletions) > PRUNE_SHOWN else ""
        title_ = f"*The first {len(shown)} deletions*\n" if len(deletions) > PRUNE_SHOWN else "*Deletions*\n"
        blocks.append({"type": "section", "text": _text(title_ + head_lines(shown, 2700, "more") + more)})
    if notes := [f"⚠️ {escape(clip(note, 300))}" for note in plan.notes[:5]]:
        blocks.append({"type": "context", "elements": [_text("\n".join(notes), CONTEXT_TEXT)]})
    if deletions:
        note = "Nothing is deleted until an approver clicks Apply, which plans again and re-checks each version."
        blocks.append({"type": "context", "elements": [_text(note)]})
        blocks.append({"type": "actions", "block_id": f"prune-{plan_id}", "elements": [_apply_button(plan_id)]})
    else:
        blocks.append({"type": "context", "elements": [_text("Nothing to delete. ✅")]})
    return head, blocks


def _apply_button(plan_id: int) -> dict[str, Any]:
    element = plain_button(PRUNE_APPLY, "Apply", str(plan_id), style="danger")
    element["confirm"] = {
        "title": {"type": "plain_text", "text": "Apply this prune?"},
        "text": _text("This plans again, fresh, and deletes what the plan says through the registry's API."),
        "confirm": {"type": "plain_text", "text": "Delete them"},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    return element


def prune_clicked(message_blocks: list[dict[str, Any]], user: str) -> Blocks:
    """The plan's message once Apply was clicked: its button gives way to who clicked it."""
    kept = [b for b in message_blocks if b.get("type") != "actions"][:48]
    return [*kept, {"type": "context", "elements": [_text(f"✅ Apply by {mention(user)}")]}]


def prune_not_planned(registry: str, error: str, user: str | None) -> str:
    who = f" (asked by {mention(user)})" if user else ""
    return f"⚠️ Could not plan a prune of {escape(registry)}{who}: {escape(clip(error, 1500))}"


def prune_approval(plan_id: int, registry: str, requested_by: str, expires: datetime) -> tuple[str, Blocks]:
    text = (
        f"{mention(requested_by)} asks to apply *prune plan #{plan_id}* on {escape(registry)}. A different "
        f"approver must approve it (expires {_when(expires)})."
    )
    return text, [
        {"type": "section", "text": _text(text)},
        {
            "type": "actions",
            "block_id": f"prune-approval-{plan_id}",
            "elements": [
                plain_button(PRUNE_APPROVE, "Approve", str(plan_id), style="primary"),
                plain_button(PRUNE_DENY, "Deny", str(plan_id), style="danger"),
            ],
        },
    ]


def prune_answered(plan_id: int, requested_by: str | None, status: str, by: str | None) -> tuple[str, Blocks]:
    verb = {"applying": "✅ approved", "denied": "🚫 denied", "expired": "⌛ expired"}.get(status, escape(status))
    who = f" by {mention(by)}" if by and status != "expired" else ""
    text = f"{mention(requested_by)} asked to apply *prune plan #{plan_id}*: {verb}{who}."
    return text, [{"type": "section", "text": _text(text)}]


def prune_applied(plan_id: int, outcome: Any) -> tuple[str, Blocks]:
    planned = len(outcome.plan.deletions) if outcome.plan else 0
    verified = outcome.verified
    ok = outcome.exit_code == 0
    text = (
        f"{'✅' if ok else '❌'} Prune plan #{plan_id} on {escape(outcome.registry)}: deleted {len(outcome.deleted)} "
        f"of {planned} planned; kept tags {verified.intact} intact, {len(verified.broken)} broken, "
        f"{len(verified.errors)} not checked."
    )
    if outcome.error:
        text += f"\nStopped: {escape(clip(outcome.error, 1000))}"
    if verified.broken:
        text += "\nEach broken tag opens an incident."
    if outcome.deleted and outcome.plan is not None and outcome.plan.kind == "distribution":
        text += "\nTheir blobs stay on disk until the registry's garbage collection runs."
    lines = [
        f"• kept `{escape(s.repository)}@{short_digest(s.digest)}`: {escape(clip(s.reason, 200))}"
        for s in outcome.skipped
    ]
    if lines:
        text += "\n" + head_lines(lines[:10], 1200, "more")
    return text, [{"type": "section", "text": _text(text)}]
