"""Block Kit messages: what the channel sees. Pure functions from incident data to (text, blocks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bot.incidents.models import ApprovalRequest, Incident
from bot.registry.model import CheckResult, Problem, short_digest
from bot.text import escape

Blocks = list[dict[str, Any]]

ACTIONS = {
    "registry_diagnose": "Diagnose",
    "registry_rebuild": "Rebuild",
    "registry_restart": "Restart consumers",
    "registry_verify_now": "Verify now",
}
# Which buttons apply in which state: a button that no longer applies disappears.
BUTTONS_BY_STATE: dict[str, tuple[str, ...]] = {
    "open": ("registry_diagnose", "registry_rebuild", "registry_restart"),
    "diagnosed": ("registry_diagnose", "registry_rebuild", "registry_restart"),
    "rebuilding": ("registry_diagnose",),
    "rebuilt": ("registry_restart", "registry_verify_now", "registry_rebuild"),
    "restarting": ("registry_diagnose",),
    "restarted": ("registry_verify_now", "registry_restart", "registry_rebuild"),
    "verifying": ("registry_verify_now", "registry_restart", "registry_rebuild"),
    "still_broken": ("registry_diagnose", "registry_rebuild", "registry_restart", "registry_verify_now"),
    "failed": ("registry_diagnose", "registry_rebuild", "registry_restart", "registry_verify_now"),
    "resolved": (),
}
STATE_LABEL = {
    "open": "🔴 Open",
    "diagnosed": "🔎 Diagnosed",
    "rebuilding": "🏗️ Rebuilding",
    "rebuilt": "📦 Rebuilt",
    "restarting": "🔄 Restarting consumers",
    "restarted": "🔄 Consumers restarted",
    "verifying": "⏱️ Waiting for verification",
    "still_broken": "🔴 Still broken",
    "failed": "❌ Failed",
    "resolved": "✅ Resolved",
}
CONFIRMS = {
    "registry_node": (
        "Drain the node?",
        "This cordons the node, evicts its pods (honoring PodDisruptionBudgets), restarts containerd through a "
        "privileged pod, and uncordons it. A second approver must approve.",
        "Request it",
    ),
    "registry_rebuild": (
        "Rebuild this image?",
        "This deletes the broken version from the registry and starts a CI pipeline that rebuilds and pushes it.",
        "Delete and rebuild",
    ),
    "registry_restart": (
        "Restart the consumers?",
        "This rolls every workload that uses this image, as `kubectl rollout restart` does.",
        "Restart them",
    ),
}
MAX_PROBLEM_LINES = 6


def _text(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text[:2990]}


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
    lines = [f"• `{escape(p.summary())}`" for p in problems[:MAX_PROBLEM_LINES]]
    if len(problems) > MAX_PROBLEM_LINES:
        lines.append(f"• …and {len(problems) - MAX_PROBLEM_LINES} more")
    return head + ":\n" + "\n".join(lines)


def incident_problems(incident: Incident) -> list[Problem]:
    return [Problem.from_json(p) for p in json.loads(incident.problems or "[]")]


def source_text(incident: Incident) -> str:
    who = f" by <@{incident.source_user}>" if incident.source_user else ""
    return {
        "alert": "Alertmanager: RegistryManifestIntegrityFailure",
        "scan": "the bot's scan",
        "probe": "the bot's periodic probe",
        "command": f"`/registry check`{who}",
    }.get(incident.source, incident.source) + ("" if incident.source == "command" else who)


def incident_message(incident: Incident) -> tuple[str, Blocks]:
    """The root message: edited in place for the incident's whole life."""
    state = incident.state
    label = STATE_LABEL.get(state, state)
    title = f"{'✅' if state == 'resolved' else '🔴'} {incident.image} on {incident.registry_host}"
    problems = incident_problems(incident)
    fields = [
        _text(f"*Image*\n`{escape(incident.image)}`"),
        _text(f"*Registry*\n{escape(incident.registry_host)}"),
        _text(f"*Digest*\n`{short_digest(incident.digest)}`"),
        _text(f"*Verdict*\n{incident.verdict}"),
        _text(f"*From*\n{source_text(incident)}"),
        _text(f"*Seen*\nfirst {_when(incident.first_seen)}\nlast {_when(incident.last_seen)} ({incident.seen_count}×)"),
    ]
    blocks: Blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "fields": fields},
        {"type": "section", "text": _text(problem_summary(problems, incident.objects_checked))},
    ]
    status = f"*Status:* {label}"
    if incident.status_note:
        status += f" — {incident.status_note}"
    if state == "failed" and incident.failure_reason:
        status += f"\n{escape(incident.failure_reason)}"
    blocks.append({"type": "context", "elements": [_text(status)]})
    clicked: dict[str, str] = json.loads(incident.clicked or "{}")
    buttons = []
    for action_id in BUTTONS_BY_STATE.get(state, ()):
        if action_id in clicked:
            continue
        buttons.append(button(action_id, ACTIONS[action_id], str(incident.id)))
    done = [_text(label_) for label_ in clicked.values()]
    if done:
        blocks.append({"type": "context", "elements": done[:10]})
    if buttons:
        blocks.append({"type": "actions", "block_id": f"incident-{incident.id}", "elements": buttons})
    text = f"{title}: {label}"
    return text, blocks


def button(action_id: str, label: str, value: str, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label, "emoji": True},
        "value": value,
    }
    if action_id in CONFIRMS:
        title, text, confirm = CONFIRMS[action_id]
        element["confirm"] = {
            "title": {"type": "plain_text", "text": title},
            "text": _text(text),
            "confirm": {"type": "plain_text", "text": confirm},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        element["style"] = "danger"
    if style:
        element["style"] = style
    return element


def check_message(result: CheckResult, user: str | None) -> tuple[str, Blocks]:
    """A verdict for `/registry check` when the image is intact or could not be checked."""
    who = f" (asked by <@{user}>)" if user else ""
    text = escape(result.verdict()) + who
    return text, [{"type": "section", "text": _text(text)}]


def scan_summary(summary: dict[str, Any], user: str | None, broken: Sequence[str]) -> tuple[str, Blocks]:
    who = f" (asked by <@{user}>)" if user else ""
    if summary.get("status") == "error":
        text = f"⚠️ Could not scan {summary.get('registry')}: {escape(str(summary.get('error', '')))}{who}"
    else:
        icon = "🔴" if broken else "✅"
        text = (
            f"{icon} Scan of {summary['registry']}: {summary['tags']} tags in {summary['repositories']} repositories, "
            f"{summary['broken']} broken, {summary['errors']} not checked ({summary['elapsed_ms']} ms){who}"
        )
        if broken:
            text += "\n" + "\n".join(f"• `{escape(ref)}`" for ref in broken[:20])
    return text, [{"type": "section", "text": _text(text)}]


def info_alert(alertname: str, instance: str, summary: str) -> tuple[str, Blocks]:
    meaning = {
        "RegistryCatalogInaccessible": "The probe cannot list the registry's catalog.",
        "RegistryIntegrityProbeStale": "The integrity probe has not reported for over an hour.",
    }.get(alertname, "")
    text = f"⚠️ {alertname} on {instance}. {meaning} {summary}".strip()
    blocks: Blocks = [
        {"type": "section", "text": _text(escape(text))},
        {"type": "actions", "elements": [button("registry_check_now", "Check now", instance[:100])]},
    ]
    return text, blocks


def progress_message(title: str, steps: Sequence[dict[str, Any]], footer: str = "") -> tuple[str, Blocks]:
    icons = {"running": "⏳", "done": "✅", "failed": "❌", "skipped": "⏭️", "info": "•", "warning": "⚠️"}
    lines = [f"{icons.get(step.get('state', 'info'), '•')} {step['text']}" for step in steps]
    body = "\n".join(lines) if lines else "starting…"
    text = f"{title}\n{body}" + (f"\n{footer}" if footer else "")
    blocks: Blocks = [{"type": "section", "text": _text(f"*{title}*\n{body}")}]
    if footer:
        blocks.append({"type": "context", "elements": [_text(footer)]})
    return text, blocks


def approval_message(request: ApprovalRequest, what: str) -> tuple[str, Blocks]:
    text = (
        f"<@{request.requested_by}> asks to run *{what}*. A different approver must approve it "
        f"(expires {_when(request.expires_at)})."
    )
    blocks: Blocks = [
        {"type": "section", "text": _text(text)},
        {
            "type": "actions",
            "block_id": f"approval-{request.id}",
            "elements": [
                button("registry_approve", "Approve", str(request.id), style="primary"),
                button("registry_deny", "Deny", str(request.id), style="danger"),
            ],
        },
    ]
    return text, blocks


def approval_answered(request: ApprovalRequest, what: str) -> tuple[str, Blocks]:
    verb = {"approved": "✅ approved", "denied": "🚫 denied", "expired": "⌛ expired"}.get(
        request.status, request.status
    )
    by = f" by <@{request.answered_by}>" if request.answered_by and request.status != "expired" else ""
    text = f"<@{request.requested_by}> asked to run *{what}*: {verb}{by}."
    return text, [{"type": "section", "text": _text(text)}]


def status_list(incidents: Sequence[Incident], link: Any) -> str:
    if not incidents:
        return "No open incidents. ✅"
    lines = [f"*{len(incidents)} open incident{'s' if len(incidents) != 1 else ''}:*"]
    for incident in incidents:
        where = (
            f"<{link(incident.channel, incident.root_ts)}|{escape(incident.image)}>"
            if incident.root_ts
            else (f"`{escape(incident.image)}`")
        )
        lines.append(
            f"• {where} — {STATE_LABEL.get(incident.state, incident.state)}, since {_when(incident.first_seen)}"
        )
    return "\n".join(lines)


def node_offer(incident_id: int, nodes: Sequence[str]) -> tuple[str, Blocks]:
    """The thread message offering 'Drain <node> and restart containerd' (two approvers)."""
    text = (
        f"Pods of this image still cannot pull on {', '.join(nodes)}: containerd may hold the broken digest. "
        "Draining the node and restarting containerd needs two approvers."
    )
    elements = [
        button("registry_node", f"Drain {node} and restart containerd", f"{incident_id}:{node}", style="danger")
        for node in nodes[:5]
    ]
    return text, [{"type": "section", "text": _text(text)}, {"type": "actions", "elements": elements}]


USAGE = (
    "*registry-bot* — `/registry <command>`\n"
    "• `/registry check owner/name:tag` (or `@sha256:<digest>`): check one image, down to every blob\n"
    "• `/registry scan`: check every tag of every repository\n"
    "• `/registry status`: open incidents, with links\n"
    "• `/registry help`: this text"
)
