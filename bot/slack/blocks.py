"""Block Kit messages: what the channel sees. Pure functions from incident data to (text, blocks).

Everything that came from outside (image names, problems, CI output, Kubernetes messages, alert text) is
plain text until it reaches these builders, which escape it; mentions and links are written only here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from bot.config import Settings
from bot.incidents import lifecycle
from bot.incidents.lifecycle import Phase, State, StepState
from bot.incidents.models import ApprovalRequest, Incident, PhaseRun
from bot.registry.model import ATTESTATION_ONLY, CheckResult, Problem, human_bytes, short_digest
from bot.registry.scan import ScanResult
from bot.runbook.base import Link, Step
from bot.slack.limits import BUTTON_TEXT, CONTEXT_TEXT, SECTION_TEXT, clip, head_lines, tail_lines

Blocks = list[dict[str, Any]]

STATE_LABEL = {
    State.OPEN: "🔴 Open",
    State.DIAGNOSED: "🔎 Diagnosed",
    State.REBUILDING: "🏗️ Rebuilding",
    State.REBUILT: "📦 Rebuilt",
    State.RESTARTING: "🔄 Restarting consumers",
    State.RESTARTED: "🔄 Consumers restarted",
    State.VERIFYING: "⏱️ Waiting for verification",
    State.STILL_BROKEN: "🔴 Still broken",
    State.FAILED: "❌ Failed",
    State.RESOLVED: "✅ Resolved",
}
PHASE_ICON = {Phase.DIAGNOSE: "🔎", Phase.REBUILD: "🏗️", Phase.RESTART: "🔄", Phase.NODE: "🧰", Phase.VERIFY: "⏱️"}
BUTTON_LABEL = {Phase.VERIFY: "Verify now"}  # where the button reads otherwise than the phase's title
CONFIRMS = {
    Phase.NODE: (
        "Drain the node?",
        "This cordons the node, evicts its pods (honoring PodDisruptionBudgets), restarts containerd through a "
        "privileged pod, and uncordons it. A second approver must approve.",
        "Request it",
    ),
    Phase.REBUILD: (
        "Rebuild this image?",
        "This deletes the broken version from the registry and starts a CI pipeline that rebuilds and pushes it.",
        "Delete and rebuild",
    ),
    Phase.RESTART: (
        "Restart the consumers?",
        "This rolls every workload that uses this image, as `kubectl rollout restart` does.",
        "Restart them",
    ),
}
STEP_ICON = {
    StepState.RUNNING: "⏳",
    StepState.DONE: "✅",
    StepState.FAILED: "❌",
    StepState.SKIPPED: "⏭️",
    StepState.INFO: "•",
    StepState.WARNING: "⚠️",
}
CHECK_NOW = "registry_check_now"
APPROVE, DENY = "registry_approve", "registry_deny"
MAX_PROBLEM_LINES = 6
NODE_BUTTONS = 5
STATUS_TEXT = 12_000  # /registry status: about 70 incidents, then a count
_USER_ID = re.compile(r"^[A-Z0-9]{1,40}$")
_SAFE_URL = re.compile(r"^https?://[^\s<>|]+$")


def escape(text: str) -> str:
    """Slack's three control characters: text from outside can neither mention, link nor format a date."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(user: str | None) -> str:
    if not user:
        return "the bot"
    return f"<@{user}>" if _USER_ID.match(user) else escape(user)


def link(url: str, text: str) -> str:
    return f"<{url}|{escape(text)}>" if _SAFE_URL.match(url) else escape(f"{text} ({url})")


def title(phase: Phase | str) -> str:
    phase = Phase(phase)
    return f"{PHASE_ICON[phase]} {lifecycle.spec(phase).title}"


def _text(text: str, limit: int = SECTION_TEXT) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, limit)}


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    stamp = int(moment.timestamp())
    return f"<!date^{stamp}^{{date_short_pretty}} {{time}}|{moment:%Y-%m-%d %H:%M UTC}>"


def problem_summary(problems: Sequence[Problem], objects_checked: int) -> str:
    if not problems:
        return "No problems found."
    bad = len({p.digest for p in problems})
    head = f"{bad} of {objects_checked} objects have problems"
    if all(p.pull_impact == "none" for p in problems):
        head += f" ({ATTESTATION_ONLY})"
    lines = [f"• `{escape(clip(p.summary(), 300))}`" for p in problems[:MAX_PROBLEM_LINES]]
    if len(problems) > MAX_PROBLEM_LINES:
        lines.append(f"• …and {len(problems) - MAX_PROBLEM_LINES} more")
    return head + ":\n" + "\n".join(lines)


def incident_problems(incident: Incident) -> list[Problem]:
    return [Problem.from_json(p) for p in json.loads(incident.problems or "[]")]


def source_text(incident: Incident) -> str:
    who = f" by {mention(incident.source_user)}" if incident.source_user else ""
    return {
        "alert": "Alertmanager: RegistryManifestIntegrityFailure",
        "scan": "the bot's scan",
        "probe": "the bot's periodic probe",
        "deep_scan": "the bot's deep scan (every layer hashed)",
        "command": f"`/registry check`{who}",
        "prune": "the check after a prune",
    }.get(incident.source, escape(incident.source)) + ("" if incident.source == "command" else who)


def incident_message(incident: Incident, running: PhaseRun | None = None) -> tuple[str, Blocks]:
    """The root message: edited in place for the incident's whole life."""
    state = State(incident.state)
    label = STATE_LABEL[state]
    head = f"{'✅' if state is State.RESOLVED else '🔴'} {incident.image} on {incident.registry_host}"
    fields = [
        _text(f"*Image*\n`{escape(incident.image)}`"),
        _text(f"*Registry*\n{escape(incident.registry_host)}"),
        _text(f"*Digest*\n`{short_digest(incident.digest)}`"),
        _text(f"*Verdict*\n{escape(incident.verdict)}"),
        _text(f"*From*\n{source_text(incident)}"),
        _text(f"*Seen*\nfirst {_when(incident.first_seen)}\nlast {_when(incident.last_seen)} ({incident.seen_count}×)"),
    ]
    blocks: Blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150], "emoji": True}},
        {"type": "section", "fields": fields},
        {"type": "section", "text": _text(problem_summary(incident_problems(incident), incident.objects_checked))},
    ]
    status = f"*Status:* {label}"
    if running is not None:
        by = f", started by {mention(running.requested_by)}" if running.requested_by else ""
        status += f" — {title(running.phase)} running{by}"
    elif incident.status_note:
        status += f" — {escape(incident.status_note)}"
    if state is State.FAILED and incident.failure_reason:
        status += f"\n{escape(clip(incident.failure_reason, 1000))}"
    blocks.append({"type": "context", "elements": [_text(status, CONTEXT_TEXT)]})
    clicked: dict[str, str] = {p: u for p, u in json.loads(incident.clicked or "{}").items() if p in set(Phase)}
    done = [_text(f"✅ {button_label(Phase(p))} by {mention(u)}") for p, u in clicked.items()]
    if done:
        blocks.append({"type": "context", "elements": done[:10]})
    buttons = [button(spec.phase, str(incident.id)) for spec in lifecycle.buttons(state) if spec.phase not in clicked]
    if buttons:
        blocks.append({"type": "actions", "block_id": f"incident-{incident.id}", "elements": buttons})
    return f"{escape(head)}: {label}", blocks


def button_label(phase: Phase) -> str:
    return BUTTON_LABEL.get(phase, lifecycle.spec(phase).title)


def button(phase: Phase, value: str, label: str | None = None) -> dict[str, Any]:
    element = plain_button(lifecycle.spec(phase).action_id, label or button_label(phase), value)
    if phase in CONFIRMS:
        heading, text, confirm = CONFIRMS[phase]
        element["confirm"] = {
            "title": {"type": "plain_text", "text": heading},
            "text": _text(text),
            "confirm": {"type": "plain_text", "text": confirm},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        element["style"] = "danger"
    return element


def plain_button(action_id: str, label: str, value: str, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label, "emoji": True},
        "value": value,
    }
    if style:
        element["style"] = style
    return element


def check_message(result: CheckResult, user: str | None) -> tuple[str, Blocks]:
    """A verdict for `/registry check` when the image is intact or could not be checked."""
    who = f" (asked by {mention(user)})" if user else ""
    text = escape(result.verdict()) + who
    return text, [{"type": "section", "text": _text(text)}]


def scan_summary(scans: Sequence[ScanResult], user: str | None) -> tuple[str, Blocks]:
    """A scan's summary, one section per registry. A deep scan's names no tags: each broken one gets its own
    incident message."""
    who = f" (asked by {mention(user)})" if user else ""
    each = max(SECTION_TEXT // max(len(scans), 1), 500) if len(scans) > 1 else SECTION_TEXT
    sections = [_scan_section(scan, who, min(each, SECTION_TEXT)) for scan in scans[:MAX_SCAN_SECTIONS]]
    return "\n".join(sections), [{"type": "section", "text": _text(text)} for text in sections]


MAX_SCAN_SECTIONS = 40  # of Slack's 50 blocks a message


def _scan_section(scan: ScanResult, who: str, room: int) -> str:
    summary = scan.summary()
    what = "Deep scan" if scan.deep else "Scan"
    if scan.error:
        return clip(f"⚠️ Could not {what.lower()} {escape(scan.registry)}: {escape(clip(scan.error, 1000))}{who}", room)
    broken = [r.reference for r in scan.broken]
    icon = "🔴" if summary["broken"] else "✅"
    hashed = f", {human_bytes(scan.bytes_verified)} hashed" if scan.deep else ""
    text = (
        f"{icon} {what} of {escape(scan.registry)}: {summary['tags']} tags in {summary['repositories']} "
        f"repositories, {summary['broken']} broken, {summary['errors']} not checked "
        f"({summary['elapsed_ms']} ms{hashed}){who}"
    )
    if broken and not scan.deep:
        text += "\n" + head_lines([f"• `{escape(ref)}`" for ref in broken[:20]], room - len(text) - 50)
        if len(broken) > 20:
            text += f"\n…and {len(broken) - 20} more"
    return text


def info_alert(
    alertname: str, instance: str, summary: str, count: int = 1, note: str = "", ended: bool = False
) -> tuple[str, Blocks]:
    """An informational alert's one message per episode; `count` alerts of it fired together."""
    meaning = {
        "RegistryCatalogInaccessible": "The probe cannot list the registry's catalog.",
        "RegistryIntegrityProbeStale": "The integrity probe has not reported for over an hour.",
    }.get(alertname, "")
    head = f"{count} {alertname} alerts" if count > 1 else alertname
    icon = "✅" if ended else "⚠️"
    text = escape(clip(f"{icon} {head} on {instance}. {meaning} {summary}".strip(), 2000))
    if note:
        text += f"\n_{escape(clip(note, 200))}_"
    blocks: Blocks = [{"type": "section", "text": _text(text)}]
    if not ended:
        blocks.append({"type": "actions", "elements": [plain_button(CHECK_NOW, "Check now", instance[:100])]})
    return text, blocks


def step_line(step: Step) -> str:
    text = escape(clip(step.text, 500))
    if step.link is not None:
        shown = escape(step.link.text)
        rendered = link(step.link.url, step.link.text)
        text = text.replace(shown, rendered, 1) if shown in text else f"{text} {rendered}"
    return f"{STEP_ICON[step.state]} {text}"


def progress_message(heading: str, steps: Sequence[Step], footer: str = "") -> tuple[str, Blocks]:
    """A phase run's thread message; `heading` and `footer` are already Slack text. When the steps outgrow
    one section, the oldest give way: the newest are what a person watching needs."""
    lines = [step_line(step) for step in steps] or ["starting…"]
    body = tail_lines(lines, SECTION_TEXT - len(heading) - 10, "earlier steps")
    text = f"{heading}\n{body}" + (f"\n{footer}" if footer else "")
    blocks: Blocks = [{"type": "section", "text": _text(f"*{heading}*\n{body}")}]
    if footer:
        blocks.append({"type": "context", "elements": [_text(footer)]})
    return text, blocks


def run_heading(run: PhaseRun) -> str:
    heading = title(run.phase) + (f" {escape(run.target)}" if run.target else "") + f" (attempt {run.attempt})"
    if run.requested_by:
        heading += f" — requested by {mention(run.requested_by)}"
        if run.approved_by and run.approved_by != run.requested_by:
            heading += f", approved by {mention(run.approved_by)}"
    return heading


def run_reply(
    run: PhaseRun, ok: bool, summary: str, details: Sequence[str], result_link: Link | None
) -> tuple[str, Blocks]:
    """A run's end in the thread: its summary, then its details (a failed build's log keeps its tail)."""
    reply = f"{'✅' if ok else '❌'} {title(run.phase)}: {escape(clip(summary, 2000))}"
    if result_link is not None and result_link.url not in summary:
        reply += f" ({link(result_link.url, result_link.text)})"
    blocks: Blocks = [{"type": "section", "text": _text(reply)}]
    if details:
        lines = [f"> {escape(clip(line, 300))}" for line in details]
        shown = tail_lines(lines, SECTION_TEXT - 20, "earlier lines")
        blocks.append({"type": "section", "text": _text(shown)})
        reply += "\n" + shown
    return reply, blocks


def run_again(incident: Incident, run: PhaseRun, reason: str) -> tuple[str, Blocks]:
    value = f"{incident.id}:{run.target}" if run.phase == Phase.NODE and run.target else str(incident.id)
    text = f"⚠️ {escape(clip(reason, 1000))} Nothing half-done is forgotten: check the steps above, then run it again."
    label = f"Run {title(run.phase)} again"
    return text, [
        {"type": "section", "text": _text(text)},
        {"type": "actions", "elements": [plain_button(lifecycle.spec(run.phase).action_id, label, value)]},
    ]


def approval_message(request: ApprovalRequest) -> tuple[str, Blocks]:
    text = (
        f"{mention(request.requested_by)} asks to run *{_what(request)}*. A different approver must approve it "
        f"(expires {_when(request.expires_at)})."
    )
    blocks: Blocks = [
        {"type": "section", "text": _text(text)},
        {
            "type": "actions",
            "block_id": f"approval-{request.id}",
            "elements": [
                plain_button(APPROVE, "Approve", str(request.id), style="primary"),
                plain_button(DENY, "Deny", str(request.id), style="danger"),
            ],
        },
    ]
    return text, blocks


def approval_answered(request: ApprovalRequest) -> tuple[str, Blocks]:
    verb = {"approved": "✅ approved", "denied": "🚫 denied", "expired": "⌛ expired"}.get(
        request.status, request.status
    )
    by = ""
    if request.answered_by and request.status != lifecycle.ApprovalStatus.EXPIRED:
        by = f" by {mention(request.answered_by)}"
    text = f"{mention(request.requested_by)} asked to run *{_what(request)}*: {verb}{by}."
    return text, [{"type": "section", "text": _text(text)}]


def _what(request: ApprovalRequest) -> str:
    return title(request.phase) + (f" on {escape(request.target)}" if request.target else "")


def approvers_text(settings: Settings) -> str:
    parts = [mention(u) for u in settings.approvers]
    if settings.approver_group:
        parts.append(f"members of @{escape(settings.approver_group.lstrip('@'))}")
    return ", ".join(parts) if parts else "no one (APPROVERS and APPROVER_GROUP are empty)"


def status_list(incidents: Sequence[Incident], permalink: Callable[[str, str], str]) -> str:
    """Open incidents, one line each, oldest first, cut with a count to stay readable (and under Slack's limit)."""
    if not incidents:
        return "No open incidents. ✅"
    head = f"*{len(incidents)} open incident{'s' if len(incidents) != 1 else ''}:*"
    lines = []
    for incident in incidents:
        where = (
            link(permalink(incident.channel or "", incident.root_ts), incident.image)
            if incident.root_ts
            else f"`{escape(incident.image)}`"
        )
        lines.append(f"• {where} — {STATE_LABEL[State(incident.state)]}, since {_when(incident.first_seen)}")
    return head + "\n" + head_lines(lines, STATUS_TEXT, "more: see the channel")


def node_offer(incident_id: int, nodes: Sequence[str]) -> tuple[str, Blocks]:
    """The thread message offering 'Drain <node> and restart containerd' (two approvers)."""
    shown = ", ".join(nodes[:NODE_BUTTONS]) + (f" and {len(nodes) - NODE_BUTTONS} more" if len(nodes) > 5 else "")
    text = escape(
        f"Pods of this image still cannot pull on {shown}: containerd may hold the broken digest. "
        "Draining the node and restarting containerd needs two approvers."
    )
    blocks: Blocks = [{"type": "section", "text": _text(text)}]
    # One actions block per node: Slack refuses two buttons with one action_id in a block.
    room = BUTTON_TEXT - len("Drain  and restart containerd")
    for index, node in enumerate(nodes[:NODE_BUTTONS]):
        label = f"Drain {clip(node, room)} and restart containerd"
        element = button(Phase.NODE, f"{incident_id}:{node}", label)
        blocks.append({"type": "actions", "block_id": f"node-{incident_id}-{index}", "elements": [element]})
    return text, blocks


USAGE = (
    "*registry-bot* — `/registry <command>`\n"
    "• `/registry check owner/name:tag` (or `@sha256:<digest>`): check one image, down to every blob\n"
    "• `/registry check --deep owner/name:tag`: the same, reading and hashing every layer\n"
    "• `/registry scan`: check every tag of every repository\n"
    "• `/registry status`: open incidents, with links\n"
    "• `/registry prune [registry] [keep=N] [older=DURATION]`: plan a retention that keeps what images need "
    "(approvers); an Apply button deletes it\n"
    "• `/registry help`: this text"
)
