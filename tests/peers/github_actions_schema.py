"""Hold the GitHub Actions stand-in's answers to GitHub's own schema (githubkit's models, generated from GitHub's
OpenAPI description): each JSON answer is read by the model GitHub documents for its route and status."""

from __future__ import annotations

import json
import re
from typing import Any

from githubkit_schemas.latest import models
from pydantic import TypeAdapter, ValidationError

from tests.peers.woodpecker import Answer

REPO = r"/repos/[^/]+/[^/]+/actions"
# (method, path, status) -> the model of the body; None: no body at all.
ROUTES: list[tuple[str, str, int, Any]] = [
    ("POST", rf"{REPO}/workflows/[^/]+/dispatches", 200, models.WorkflowDispatchResponse),
    ("POST", rf"{REPO}/workflows/[^/]+/dispatches", 204, None),
    ("GET", rf"{REPO}/workflows", 200, models.ReposOwnerRepoActionsWorkflowsGetResponse200),
    ("GET", rf"{REPO}/workflows/[^/]+", 200, models.Workflow),
    ("GET", rf"{REPO}/workflows/[^/]+/runs", 200, models.ReposOwnerRepoActionsWorkflowsWorkflowIdRunsGetResponse200),
    ("GET", rf"{REPO}/runs", 200, models.ReposOwnerRepoActionsRunsGetResponse200),
    ("GET", rf"{REPO}/runs/\d+", 200, models.WorkflowRun),
    ("GET", rf"{REPO}/runs/\d+/jobs", 200, models.ReposOwnerRepoActionsRunsRunIdJobsGetResponse200),
    ("POST", rf"{REPO}/runs/\d+/cancel", 202, models.EmptyObject),
    ("GET", rf"{REPO}/jobs/\d+", 200, models.Job),
    ("GET", r"/user", 200, models.PrivateUser | models.PublicUser),
]
NOT_API = re.compile(r"/_blob/|/[^/]+/[^/]+/actions/runs/")  # signed log downloads and web pages


def answer_errors(answer: Answer) -> list[str]:
    """What in one answer GitHub's schema does not allow; [] when it fits."""
    where = f"{answer.method} {answer.path} {answer.status}"
    if NOT_API.match(answer.path):
        return []
    if answer.status == 302:
        return [] if answer.headers.get("Location") else [f"{where}: a redirect without Location"]
    if answer.status >= 400:  # GitHub's errors are JSON; a proxy's 502 page in front of it is not GitHub's
        is_json = answer.headers.get("Content-Type", "").startswith("application/json")
        return _fits(where, answer.body, models.BasicError, error=True) if is_json else []
    for method, pattern, status, model in ROUTES:
        if method == answer.method and status == answer.status and re.fullmatch(pattern, answer.path):
            if model is None:
                return [f"{where}: a body where GitHub sends none"] if answer.body else []
            return _fits(where, answer.body, model)
    return [f"{where}: GitHub documents no such answer"]


def _fits(where: str, body: bytes, model: Any, *, error: bool = False) -> list[str]:
    try:
        data = json.loads(body)
        TypeAdapter(model).validate_python(data)
    except (ValueError, ValidationError) as exc:
        return [f"{where}: {' '.join(str(exc).split())[:400]}"]
    if error and not (isinstance(data, dict) and isinstance(data.get("message"), str)):
        return [f"{where}: an error without GitHub's message"]
    return []
