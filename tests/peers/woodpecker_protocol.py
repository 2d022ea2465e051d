"""Woodpecker has no published client, so its stand-in is held to the protocol facts the bot relies on
(shared/reference/protocols.md, "Woodpecker"): the routes, their status codes, and the fields of what they
answer. `protocol_errors(stand_in)` reads every answer a WoodpeckerStandIn sent and says what breaks them.

- `Authorization: Bearer <token>`; a refused token is 401.
- GET /api/repos/lookup/{owner}/{name} -> 200 {id, ...}.
- POST /api/repos/{id}/pipelines {"branch", "variables"} -> 200 Pipeline, or 204 + `Pipeline-Filtered: true`.
- GET /api/repos/{id}/pipelines/{number|latest} -> {id, number, status, ..., workflows: [{name, state,
  children: [{name, state, exit_code, ...}]}]}.
- States: skipped pending running success failure killed error blocked declined, + created (3.0), canceled (3.14).
- POST .../pipelines/{n}/cancel; GET /api/repos/{id}/logs/{n}/{step_id} -> log entries.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from tests.peers.woodpecker import Answer, WoodpeckerStandIn

STATES = frozenset(
    {"skipped", "pending", "running", "success", "failure", "killed", "error", "blocked", "declined", "created",
     "canceled"}
)  # fmt: skip
# route -> (regex on the path, method, the status codes Woodpecker answers there besides 5xx)
ROUTES: dict[str, tuple[str, str, frozenset[int]]] = {
    "lookup": (r"/api/repos/lookup/[^/]+/[^/]+", "GET", frozenset({200, 401, 404})),
    "create": (r"/api/repos/\d+/pipelines", "POST", frozenset({200, 204, 400, 401, 404})),
    "pipeline": (r"/api/repos/\d+/pipelines/(\d+|latest)", "GET", frozenset({200, 400, 401, 404})),
    "cancel": (r"/api/repos/\d+/pipelines/\d+/cancel", "POST", frozenset({204, 400, 401, 404})),
    "logs": (r"/api/repos/\d+/logs/\w+/\w+", "GET", frozenset({200, 400, 401, 404})),
}


def _int(doc: dict[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key)
    return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: {key} is {value!r}"]


def _str(doc: dict[str, Any], key: str, where: str) -> list[str]:
    return [] if isinstance(doc.get(key), str) else [f"{where}: {key} is {doc.get(key)!r}"]


def _state(doc: dict[str, Any], key: str, where: str) -> list[str]:
    return [] if doc.get(key) in STATES else [f"{where}: {key} {doc.get(key)!r} is not a Woodpecker state"]


def pipeline_errors(doc: Any, where: str = "pipeline") -> list[str]:
    if not isinstance(doc, dict):
        return [f"{where} is not an object"]
    errors = _int(doc, "id", where) + _int(doc, "number", where) + _state(doc, "status", where)
    errors += _str(doc, "branch", where)
    workflows = doc.get("workflows")
    if not isinstance(workflows, list):
        return [*errors, f"{where}: workflows is {workflows!r}"]
    for i, workflow in enumerate(workflows):
        at = f"{where}.workflows[{i}]"
        if not isinstance(workflow, dict):
            errors.append(f"{at} is not an object")
            continue
        errors += _int(workflow, "id", at) + _str(workflow, "name", at) + _state(workflow, "state", at)
        children = workflow.get("children")
        if not isinstance(children, list):
            errors.append(f"{at}: children is {children!r}")
            continue
        for j, step in enumerate(children):
            step_at = f"{at}.children[{j}]"
            if not isinstance(step, dict):
                errors.append(f"{step_at} is not an object")
                continue
            errors += _int(step, "id", step_at) + _str(step, "name", step_at) + _state(step, "state", step_at)
            errors += _int(step, "exit_code", step_at)
    return errors


def _log_errors(doc: Any, where: str) -> list[str]:
    if not isinstance(doc, list):
        return [f"{where}: not a list of log entries"]
    errors = []
    for i, entry in enumerate(doc):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{at} is not an object")
            continue
        for key in ("id", "step_id", "time", "line", "type"):
            errors += _int(entry, key, at)
        try:
            base64.b64decode(str(entry.get("data", "")), validate=True)
        except binascii.Error:
            errors.append(f"{at}: data is not base64")
    return errors


def answer_errors(answer: Answer) -> list[str]:
    where = f"{answer.method} {answer.path} -> {answer.status}"
    route = next(
        (name for name, (pattern, method, _) in ROUTES.items()
         if method == answer.method and re.fullmatch(pattern, answer.path)),
        None,
    )  # fmt: skip
    if route is None or answer.status >= 500:
        return []  # not a route the bot uses, or a failing server/ingress (the bot's fault handling is tested)
    if answer.status not in ROUTES[route][2]:
        return [f"{where}: Woodpecker does not answer {answer.status} here"]
    if answer.status == 401 and answer.body:
        return [f"{where}: a refused token gets a bare 401"]
    if answer.status == 204:
        errors = [f"{where}: a 204 has no body"] if answer.body else []
        if route == "create" and answer.headers.get("Pipeline-Filtered") != "true":
            errors.append(f"{where}: a filtered pipeline is 204 with Pipeline-Filtered: true")
        return errors
    if answer.status != 200:
        return []
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return [f"{where}: not JSON"]
    if route == "lookup":
        return _int(doc, "id", where) if isinstance(doc, dict) else [f"{where}: not an object"]
    if route in ("create", "pipeline"):
        return pipeline_errors(doc, where)
    if route == "logs":
        return _log_errors(doc, where)
    return []


def protocol_errors(stand_in: WoodpeckerStandIn) -> list[str]:
    """What in every answer the stand-in sent breaks the protocol facts above ([] when nothing does)."""
    with stand_in._lock:
        answers = list(stand_in.answers)
    return sorted({error for answer in answers for error in answer_errors(answer)})
