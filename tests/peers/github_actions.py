"""A GitHub Actions REST API stand-in whose workflow runs push real images into the test's real registry.

The API base is `url` (like https://api.github.com); web links (`html_url`) point at the same server.
Auth: `Authorization: Bearer <token>` or `token <token>`; a wrong token answers 401 "Bad credentials" on
every route, no token 404 on repository routes (the repositories are private). `X-GitHub-Api-Version` may be
any version GitHub supports (API_VERSIONS, shared with the GHCR stand-in: 2022-11-28, the default, and
2026-03-10, which githubkit sends), anything else answers 400. Errors have GitHub's shape
`{"message", "documentation_url", "status"}`. Every JSON answer is complete as GitHub's schema describes it
(full users and repositories in runs, every required field of runs and jobs), so githubkit's models read it.

A dispatch makes a run that goes queued -> in_progress -> completed (conclusion success / failure /
cancelled) in a background thread, with one job whose steps advance in turn; the image step pushes a fresh
image through `ImagePusher`. Job logs answer 302 to a signed download URL serving text/plain, like GitHub's
blob storage links. Outages and faults come from `CIStandIn` (tests/peers/woodpecker.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from tests.peers.ghcr import API_VERSIONS  # the versions GitHub's REST API accepts: one list for both stand-ins
from tests.peers.github_actions_schema import answer_errors
from tests.peers.registry import ImagePusher, PushedImage
from tests.peers.woodpecker import Answer, CIStandIn, Fault, Request, Response, fake_sha, json_response

DOCS = "https://docs.github.com/rest"
DOC_DISPATCH = f"{DOCS}/actions/workflows#create-a-workflow-dispatch-event"
DOC_WORKFLOW = f"{DOCS}/actions/workflows#get-a-workflow"
DOC_RUNS = f"{DOCS}/actions/workflow-runs#list-workflow-runs-for-a-workflow"
DOC_RUN = f"{DOCS}/actions/workflow-runs#get-a-workflow-run"
DOC_CANCEL = f"{DOCS}/actions/workflow-runs#cancel-a-workflow-run"
DOC_JOBS = f"{DOCS}/actions/workflow-jobs#list-jobs-for-a-workflow-run"
DOC_JOB = f"{DOCS}/actions/workflow-jobs#get-a-job-for-a-workflow-run"
DOC_JOB_LOGS = f"{DOCS}/actions/workflow-jobs#download-job-logs-for-a-workflow-run"
BOT_LOGIN, BOT_USER_ID = "registry-bot", 190000001

DEFAULT_STEPS = ("Set up job", "Checkout", "Build and push", "Complete job")
DEFAULT_FAIL_LOG = (
    '#8 ERROR: failed to solve: process "/bin/sh -c make build" did not complete successfully: exit code: 2'
)

QUEUED, IN_PROGRESS, COMPLETED = "queued", "in_progress", "completed"


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def github_error(status: int, message: str, documentation_url: str = DOCS) -> Response:
    return json_response(status, {"message": message, "documentation_url": documentation_url, "status": str(status)})


@dataclass
class GitHubWorkflow:
    id: int
    owner: str
    repo: str
    file: str
    name: str
    image: tuple[str, str] | None
    steps: tuple[str, ...]
    image_step: str | None
    fail_step: str | None
    fail_log: tuple[str, ...]
    seconds: float
    branches: dict[str, str]  # branch -> head sha
    inputs: frozenset[str] | None  # None: any inputs accepted
    dispatchable: bool
    appear_delay: float
    job_name: str
    push_options: dict[str, Any]
    created: float = field(default_factory=time.time)
    next_run_number: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def path(self) -> str:
        return f".github/workflows/{self.file}"


@dataclass
class GitHubStep:
    name: str
    number: int
    status: str = QUEUED
    conclusion: str | None = None
    started_at: float | None = None
    completed_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "conclusion": self.conclusion,
            "number": self.number,
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
        }


@dataclass
class GitHubRun:
    id: int
    job_id: int
    workflow: GitHubWorkflow
    run_number: int
    branch: str
    head_sha: str
    inputs: dict[str, Any]
    steps: list[GitHubStep]
    created_at: float
    visible_from: float  # monotonic; listings leave the run out before (GitHub's dispatch-to-listing lag)
    status: str = QUEUED
    conclusion: str | None = None
    updated_at: float = 0.0
    run_started_at: float | None = None
    completed_at: float | None = None
    log_lines: list[str] = field(default_factory=list)
    log_secret: str = field(default_factory=lambda: secrets.token_hex(8))
    cancelled: threading.Event = field(default_factory=threading.Event)
    pushed: PushedImage | None = None

    def log(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
        self.log_lines.extend(f"{stamp} {line}" for line in text.splitlines())


class GitHubActionsStandIn(CIStandIn):
    """GitHub's Actions REST API on 127.0.0.1. Use as a context manager.

    Routes (owner/repo paths): GET actions/workflows, GET actions/workflows/{id|file},
    POST actions/workflows/{id|file}/dispatches, GET actions/workflows/{id|file}/runs, GET actions/runs,
    GET actions/runs/{run_id}, GET actions/runs/{run_id}/jobs, POST actions/runs/{run_id}/cancel,
    GET actions/jobs/{job_id}, GET actions/jobs/{job_id}/logs (302); plus GET /user.
    """

    def __init__(
        self,
        token: str = "gh-token",
        registry_url: str | None = None,
        *,
        registry_auth: tuple[str, str] | None = None,
        run_details_supported: bool = True,
        api_versions: Sequence[str] = API_VERSIONS,
    ) -> None:
        super().__init__()
        self.token = token
        self.registry_url = registry_url
        self.registry_auth = registry_auth
        self.run_details_supported = run_details_supported  # False: an older GHES refusing return_run_details
        self.api_versions = tuple(api_versions)  # ("2022-11-28",): a GitHub Enterprise Server without 2026-03-10
        self._workflows: list[GitHubWorkflow] = []
        self._runs: list[GitHubRun] = []
        self._ids = {"workflow": 161330, "run": 9100000000, "job": 25200000000}
        self._rate_remaining = 5000
        self._created = time.time()
        self.schema_errors: list[str] = []  # every answer is held to GitHub's schema (faults with a body aside)
        self._faulted = threading.local()
        self.pushed: list[PushedImage] = []

    def __enter__(self) -> GitHubActionsStandIn:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.schema_errors and exc[0] is None:  # a stand-in answering what GitHub would not fails its test
            listed = "; ".join(self.schema_errors[:5])
            raise AssertionError(f"the GitHub Actions stand-in answered off GitHub's schema: {listed}")

    # --- test controls --------------------------------------------------------------------------

    def add_workflow(
        self,
        owner: str,
        repo: str,
        workflow_file: str = "build.yml",
        *,
        image: tuple[str, str] | None = None,
        fail_step: str | None = None,
        seconds: float = 0.5,
        steps: Sequence[str] = DEFAULT_STEPS,
        image_step: str | None = None,
        fail_log: str = DEFAULT_FAIL_LOG,
        branches: Sequence[str] = ("main",),
        inputs: Sequence[str] | None = None,
        dispatchable: bool = True,
        appear_delay: float = 0.0,
        name: str | None = None,
        job_name: str = "build",
        push_options: Mapping[str, Any] | None = None,
    ) -> int:
        """Register a workflow file; returns its numeric id (either can address it in the API).

        A run spends a fifth of `seconds` queued and the rest on its steps. `image` (name, tag) is pushed to
        `registry_url` by `image_step` (default "Build and push", else the second-to-last step). `fail_step`
        ends the run with conclusion failure, `fail_log` in the job log, and the later steps skipped
        ("Complete job" still runs). `inputs`: the declared workflow_dispatch inputs (others answer 422);
        `appear_delay`: seconds before a dispatched run shows in run listings."""
        steps = tuple(steps)
        if fail_step is not None and fail_step not in steps:
            raise ValueError(f"fail_step {fail_step!r} is not one of the steps {steps}")
        if image_step is None:
            image_step = "Build and push" if "Build and push" in steps else steps[max(len(steps) - 2, 0)]
        if image_step not in steps:
            raise ValueError(f"image_step {image_step!r} is not one of the steps {steps}")
        if image is not None and self.registry_url is None:
            raise ValueError("an image to push needs GitHubActionsStandIn(registry_url=...)")
        with self._lock:
            self._ids["workflow"] += 1
            workflow = GitHubWorkflow(
                id=self._ids["workflow"],
                owner=owner,
                repo=repo,
                file=workflow_file,
                name=name or workflow_file.rsplit(".", 1)[0],
                image=image,
                steps=steps,
                image_step=image_step if image else None,
                fail_step=fail_step,
                fail_log=tuple(fail_log.splitlines()),
                seconds=seconds,
                branches={branch: fake_sha(owner, repo, branch) for branch in branches},
                inputs=frozenset(inputs) if inputs is not None else None,
                dispatchable=dispatchable,
                appear_delay=appear_delay,
                job_name=job_name,
                push_options=dict(push_options or {}),
            )
            self._workflows.append(workflow)
        return workflow.id

    def runs(self, owner: str | None = None, repo: str | None = None) -> list[dict[str, Any]]:
        """Every run (listed or not yet), oldest first, as GET .../actions/runs/{id} shows it."""
        with self._lock:
            return [
                self._run_json(run)
                for run in self._runs
                if (owner is None or run.workflow.owner == owner) and (repo is None or run.workflow.repo == repo)
            ]

    def exhaust_rate_limit(self) -> None:
        """Spend the token's hourly requests: the API then answers 403 with X-RateLimit-Remaining: 0."""
        with self._lock:
            self._rate_remaining = 0

    def run_html_url(self, owner: str, repo: str, run_id: int) -> str:
        return f"{self.url}/{owner}/{repo}/actions/runs/{run_id}"

    # --- the API --------------------------------------------------------------------------------

    def _fault_body(self, status: int) -> Response:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return github_error(status, phrase)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        fault = super()._take_fault(method, path)
        self._faulted.explicit = fault is not None and fault.body is not None  # off-schema on purpose, perhaps
        return fault

    def _answer(self, request: Request) -> Response:
        self._faulted.explicit = False
        response = self._answer_with_headers(request)
        if not self._faulted.explicit:
            answer = Answer(request.method, request.path, response.status, response.headers, response.body)
            errors = answer_errors(answer)
            if errors:
                with self._lock:
                    self.schema_errors.extend(errors)
        return response

    def _answer_with_headers(self, request: Request) -> Response:
        response = super()._answer(request)
        if response.headers.get("Content-Type", "").startswith("application/json"):
            with self._lock:
                self._rate_remaining = max(self._rate_remaining - 1, 0)
                remaining = self._rate_remaining
            response.headers.update(
                {
                    "X-GitHub-Api-Version-Selected": request.headers.get("X-GitHub-Api-Version") or API_VERSIONS[0],
                    "X-GitHub-Media-Type": "github.v3; format=json",
                    "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
                    "X-RateLimit-Limit": "5000",
                    "X-RateLimit-Remaining": str(remaining),
                    "X-RateLimit-Used": str(5000 - remaining),
                    "X-RateLimit-Reset": str(int(time.time()) + 3600),
                    "X-RateLimit-Resource": "core",
                }
            )
        return response

    def _token_state(self, request: Request) -> str:
        """'none', 'good' or 'bad'."""
        header = request.headers.get("Authorization")
        if not header:
            return "none"
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("bearer", "token") and secrets.compare_digest(value.strip(), self.token):
            return "good"
        return "bad"

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        match = re.fullmatch(r"/_blob/job-logs/(\d+)\.txt", path)
        if match and method == "GET":
            return self._download_logs(int(match[1]), request.arg("sig"))
        match = re.fullmatch(r"/([^/]+)/([^/]+)/actions/runs/(\d+)(?:/job/\d+)?", path)
        if match and method == "GET":
            page = f"<html><title>Run {match[3]} · {match[1]}/{match[2]}</title></html>"
            return Response(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})
        token = self._token_state(request)
        if token == "bad":
            return github_error(401, "Bad credentials")
        version = request.headers.get("X-GitHub-Api-Version")
        if version is not None and version not in self.api_versions:
            return github_error(
                400, f"API version {version} is not supported.", f"{DOCS}/about-the-rest-api/api-versions"
            )
        with self._lock:
            spent = self._rate_remaining <= 0
        if spent and token == "good":
            message = f"API rate limit exceeded for user ID {BOT_USER_ID}."
            return github_error(403, message, f"{DOCS}/overview/rate-limits-for-the-rest-api")
        if path == "/user" and method == "GET":
            if token == "none":
                return github_error(401, "Requires authentication", f"{DOCS}/users/users#get-the-authenticated-user")
            return json_response(200, self._authenticated_user_json())
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)/actions(/.*)", path)
        if not match:
            return github_error(404, "Not Found")
        owner, repo, rest = match[1], match[2], match[3]
        with self._lock:
            known_repo = any(w.owner == owner and w.repo == repo for w in self._workflows)
        if token == "none" or not known_repo:
            return github_error(404, "Not Found", _doc_for(rest))
        return self._actions(request, owner, repo, rest)

    def _actions(self, request: Request, owner: str, repo: str, rest: str) -> Response:
        method = request.method
        not_found = github_error(404, "Not Found", _doc_for(rest))
        if rest == "/workflows" and method == "GET":
            with self._lock:
                listed = [self._workflow_json(w) for w in self._workflows if (w.owner, w.repo) == (owner, repo)]
            return json_response(200, {"total_count": len(listed), "workflows": listed})
        if rest == "/runs" and method == "GET":
            return self._list_runs(request, owner, repo, None)
        match = re.fullmatch(r"/workflows/([^/]+)(/dispatches|/runs)?", rest)
        if match and (match[2], method) in ((None, "GET"), ("/dispatches", "POST"), ("/runs", "GET")):
            workflow = self._workflow(owner, repo, match[1])
            if workflow is None:
                return not_found
            if match[2] == "/dispatches":
                return self._dispatch(request, workflow)
            if match[2] == "/runs":
                return self._list_runs(request, owner, repo, workflow)
            return json_response(200, self._workflow_json(workflow))
        match = re.fullmatch(r"/runs/(\d+)(/jobs|/cancel)?", rest)
        if match and (match[2], method) in ((None, "GET"), ("/jobs", "GET"), ("/cancel", "POST")):
            run = self._run(owner, repo, run_id=int(match[1]))
            if run is None:
                return not_found
            if match[2] == "/cancel":
                return self._cancel(run)
            if match[2] == "/jobs":
                return json_response(200, {"total_count": 1, "jobs": [self._locked(self._job_json, run)]})
            return json_response(200, self._locked(self._run_json, run))
        match = re.fullmatch(r"/jobs/(\d+)(/logs)?", rest)
        if match and method == "GET":
            run = self._run(owner, repo, job_id=int(match[1]))
            if run is None:
                return not_found
            if not match[2]:
                return json_response(200, self._locked(self._job_json, run))
            signature = self._signature(run)
            location = f"{self.url}/_blob/job-logs/{run.job_id}.txt?sv=2025-01-05&se=60s&sig={signature}"
            return Response(302, headers={"Location": location, "Content-Type": "text/html;charset=utf-8"})
        return not_found

    def _locked(self, render: Callable[[GitHubRun], dict[str, Any]], run: GitHubRun) -> dict[str, Any]:
        with self._lock:
            return render(run)

    def _workflow(self, owner: str, repo: str, ident: str) -> GitHubWorkflow | None:
        with self._lock:
            for workflow in self._workflows:
                if (workflow.owner, workflow.repo) != (owner, repo):
                    continue
                if ident == str(workflow.id) or ident in (workflow.file, workflow.path):
                    return workflow
        return None

    def _run(self, owner: str, repo: str, *, run_id: int = 0, job_id: int = 0) -> GitHubRun | None:
        with self._lock:
            for run in self._runs:
                same_repo = (run.workflow.owner, run.workflow.repo) == (owner, repo)
                if same_repo and run_id in (0, run.id) and job_id in (0, run.job_id):
                    return run
        return None

    def _dispatch(self, request: Request, workflow: GitHubWorkflow) -> Response:
        body = request.json
        if not isinstance(body, dict):
            return github_error(400, "Problems parsing JSON", DOC_DISPATCH)
        if "return_run_details" in body and not self.run_details_supported:
            return github_error(400, 'Invalid request.\n\n"return_run_details" is not a permitted key.', DOC_DISPATCH)
        ref = body.get("ref")
        if not isinstance(ref, str) or not ref:
            return github_error(422, 'Invalid request.\n\n"ref" wasn\'t supplied.', DOC_DISPATCH)
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            return github_error(422, "Invalid request.\n\nFor 'properties/inputs', it is not an object.", DOC_DISPATCH)
        if not workflow.dispatchable:
            return github_error(422, "Workflow does not have 'workflow_dispatch' trigger", DOC_DISPATCH)
        branch = ref.removeprefix("refs/heads/")
        if branch not in workflow.branches:
            return github_error(422, f"No ref found for: {ref}", DOC_DISPATCH)
        if workflow.inputs is not None:
            unexpected = sorted(set(inputs) - workflow.inputs)
            if unexpected:
                listed = ", ".join(f'"{name}"' for name in unexpected)
                return github_error(422, f"Unexpected inputs provided: [{listed}]", DOC_DISPATCH)
        now = time.time()
        with self._lock:
            self._ids["run"] += 1
            self._ids["job"] += 1
            run = GitHubRun(
                id=self._ids["run"],
                job_id=self._ids["job"],
                workflow=workflow,
                run_number=workflow.next_run_number,
                branch=branch,
                head_sha=workflow.branches[branch],
                inputs=dict(inputs),
                steps=[GitHubStep(name, number) for number, name in enumerate(workflow.steps, start=1)],
                created_at=now,
                updated_at=now,
                visible_from=time.monotonic() + workflow.appear_delay,
            )
            workflow.next_run_number += 1
            self._runs.append(run)
        self._start_worker(self._execute, run)
        if body.get("return_run_details") is True:
            run_url = f"{self.url}/repos/{workflow.full_name}/actions/runs/{run.id}"
            return json_response(
                200,
                {
                    "workflow_run_id": run.id,
                    "run_url": run_url,
                    "html_url": self.run_html_url(workflow.owner, workflow.repo, run.id),
                },
            )
        return Response(204)

    def _list_runs(self, request: Request, owner: str, repo: str, workflow: GitHubWorkflow | None) -> Response:
        try:
            per_page = min(max(int(request.arg("per_page", "30")), 1), 100)
            page = max(int(request.arg("page", "1")), 1)
        except ValueError:
            return github_error(422, "Invalid request.", DOC_RUNS)
        branch, event, status = request.arg("branch"), request.arg("event"), request.arg("status")
        head_sha, created = request.arg("head_sha"), request.arg("created")
        now = time.monotonic()
        with self._lock:
            selected = [
                run
                for run in reversed(self._runs)
                if (run.workflow.owner, run.workflow.repo) == (owner, repo)
                and (workflow is None or run.workflow is workflow)
                and now >= run.visible_from
                and (not branch or run.branch == branch)
                and (not event or event == "workflow_dispatch")
                and (not status or status in (run.status, run.conclusion))
                and (not head_sha or run.head_sha == head_sha)
                and (not created or _created_matches(run.created_at, created))
            ]
            chunk = [self._run_json(run) for run in selected[(page - 1) * per_page : page * per_page]]
        return json_response(200, {"total_count": len(selected), "workflow_runs": chunk})

    def _cancel(self, run: GitHubRun) -> Response:
        with self._lock:
            if run.status == COMPLETED:
                return github_error(409, "Cannot cancel a workflow run that is completed.", DOC_CANCEL)
            run.cancelled.set()
            self._finish(run, "cancelled")
        return json_response(202, {})

    def _signature(self, run: GitHubRun) -> str:
        return hmac.new(run.log_secret.encode(), str(run.job_id).encode(), hashlib.sha256).hexdigest()[:32]

    def _download_logs(self, job_id: int, signature: str) -> Response:
        with self._lock:
            run = next((r for r in self._runs if r.job_id == job_id), None)
            if run is None or not hmac.compare_digest(signature, self._signature(run)):
                error = (
                    '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
                    "<Message>Server failed to authenticate the request.</Message></Error>"
                )
                return Response(403, error.encode(), {"Content-Type": "application/xml"})
            text = "\n".join(run.log_lines) + ("\n" if run.log_lines else "")
        return Response(200, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})

    # --- JSON shapes ----------------------------------------------------------------------------

    def _workflow_json(self, workflow: GitHubWorkflow) -> dict[str, Any]:
        base = f"{self.url}/repos/{workflow.full_name}/actions/workflows/{workflow.id}"
        return {
            "id": workflow.id,
            "node_id": f"W_kwDO{workflow.id}",
            "name": workflow.name,
            "path": workflow.path,
            "state": "active",
            "created_at": iso(workflow.created),
            "updated_at": iso(workflow.created),
            "url": base,
            "html_url": f"{self.url}/{workflow.full_name}/blob/main/{workflow.path}",
            "badge_url": f"{self.url}/{workflow.full_name}/workflows/{workflow.name}/badge.svg",
        }

    def _user_json(self, login: str, kind: str = "User") -> dict[str, Any]:
        """A simple-user (or organization) object, every field GitHub's schema requires, as GitHub fills them."""
        api = f"{self.url}/users/{login}"
        user_id = BOT_USER_ID if login == BOT_LOGIN else int(fake_sha("user", login)[:7], 16)
        return {
            "login": login,
            "id": user_id,
            "node_id": f"{'O' if kind == 'Organization' else 'U'}_kgDO{user_id}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.url}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": kind,
            "user_view_type": "public",
            "site_admin": False,
        }

    def _authenticated_user_json(self) -> dict[str, Any]:
        """GET /user for a token without the `user` scope: the public profile (GitHub's public-user)."""
        created = iso(self._created)
        return {
            **self._user_json(BOT_LOGIN),
            "name": "registry-bot",
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": 0,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": created,
            "updated_at": created,
        }

    def _repository_json(self, workflow: GitHubWorkflow) -> dict[str, Any]:
        """A minimal-repository object as a workflow run carries it (`repository`, `head_repository`)."""
        api = f"{self.url}/repos/{workflow.full_name}"
        repo_id = int(fake_sha(workflow.full_name)[:6], 16)
        return {
            "id": repo_id,
            "node_id": f"R_kgDO{repo_id}",
            "name": workflow.repo,
            "full_name": workflow.full_name,
            "private": True,
            "owner": self._user_json(workflow.owner, "Organization"),
            "html_url": f"{self.url}/{workflow.full_name}",
            "description": None,
            "fork": False,
            "url": api,
            "forks_url": f"{api}/forks",
            "keys_url": f"{api}/keys{{/key_id}}",
            "collaborators_url": f"{api}/collaborators{{/collaborator}}",
            "teams_url": f"{api}/teams",
            "hooks_url": f"{api}/hooks",
            "issue_events_url": f"{api}/issues/events{{/number}}",
            "events_url": f"{api}/events",
            "assignees_url": f"{api}/assignees{{/user}}",
            "branches_url": f"{api}/branches{{/branch}}",
            "tags_url": f"{api}/tags",
            "blobs_url": f"{api}/git/blobs{{/sha}}",
            "git_tags_url": f"{api}/git/tags{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}",
            "trees_url": f"{api}/git/trees{{/sha}}",
            "statuses_url": f"{api}/statuses/{{sha}}",
            "languages_url": f"{api}/languages",
            "stargazers_url": f"{api}/stargazers",
            "contributors_url": f"{api}/contributors",
            "subscribers_url": f"{api}/subscribers",
            "subscription_url": f"{api}/subscription",
            "commits_url": f"{api}/commits{{/sha}}",
            "git_commits_url": f"{api}/git/commits{{/sha}}",
            "comments_url": f"{api}/comments{{/number}}",
            "issue_comment_url": f"{api}/issues/comments{{/number}}",
            "contents_url": f"{api}/contents/{{+path}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "merges_url": f"{api}/merges",
            "archive_url": f"{api}/{{archive_format}}{{/ref}}",
            "downloads_url": f"{api}/downloads",
            "issues_url": f"{api}/issues{{/number}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "milestones_url": f"{api}/milestones{{/number}}",
            "notifications_url": f"{api}/notifications{{?since,all,participating}}",
            "labels_url": f"{api}/labels{{/name}}",
            "releases_url": f"{api}/releases{{/id}}",
            "deployments_url": f"{api}/deployments",
        }

    def _run_json(self, run: GitHubRun) -> dict[str, Any]:
        workflow = run.workflow
        api = f"{self.url}/repos/{workflow.full_name}"
        actor = self._user_json(BOT_LOGIN)
        return {
            "id": run.id,
            "name": workflow.name,
            "node_id": f"WFR_kwLO{run.id}",
            "head_branch": run.branch,
            "head_sha": run.head_sha,
            "path": workflow.path,
            "display_title": workflow.name,
            "run_number": run.run_number,
            "event": "workflow_dispatch",
            "status": run.status,
            "conclusion": run.conclusion,
            "workflow_id": workflow.id,
            "check_suite_id": run.id + 1,
            "check_suite_node_id": f"CS_kwDO{run.id + 1}",
            "url": f"{api}/actions/runs/{run.id}",
            "html_url": self.run_html_url(workflow.owner, workflow.repo, run.id),
            "pull_requests": [],
            "created_at": iso(run.created_at),
            "updated_at": iso(run.updated_at),
            "actor": actor,
            "run_attempt": 1,
            "referenced_workflows": [],
            "run_started_at": iso(run.run_started_at or run.created_at),
            "triggering_actor": actor,
            "jobs_url": f"{api}/actions/runs/{run.id}/jobs",
            "logs_url": f"{api}/actions/runs/{run.id}/logs",
            "check_suite_url": f"{api}/check-suites/{run.id + 1}",
            "artifacts_url": f"{api}/actions/runs/{run.id}/artifacts",
            "cancel_url": f"{api}/actions/runs/{run.id}/cancel",
            "rerun_url": f"{api}/actions/runs/{run.id}/rerun",
            "previous_attempt_url": None,
            "workflow_url": f"{api}/actions/workflows/{workflow.id}",
            "head_commit": {
                "id": run.head_sha,
                "tree_id": fake_sha("tree", run.head_sha),
                "message": "Rebuild",
                "timestamp": iso(workflow.created),
                "author": {"name": "registry-bot", "email": "registry-bot@example.invalid"},
                "committer": {"name": "registry-bot", "email": "registry-bot@example.invalid"},
            },
            "repository": self._repository_json(workflow),
            "head_repository": self._repository_json(workflow),
        }

    def _job_json(self, run: GitHubRun) -> dict[str, Any]:
        workflow = run.workflow
        api = f"{self.url}/repos/{workflow.full_name}"
        started = run.status != QUEUED
        return {
            "id": run.job_id,
            "run_id": run.id,
            "workflow_name": workflow.name,
            "head_branch": run.branch,
            "run_url": f"{api}/actions/runs/{run.id}",
            "run_attempt": 1,
            "node_id": f"CR_kwDO{run.job_id}",
            "head_sha": run.head_sha,
            "url": f"{api}/actions/jobs/{run.job_id}",
            "html_url": f"{self.run_html_url(workflow.owner, workflow.repo, run.id)}/job/{run.job_id}",
            "status": run.status,
            "conclusion": run.conclusion,
            "created_at": iso(run.created_at),
            "started_at": iso(run.run_started_at or run.created_at),
            "completed_at": iso(run.completed_at),
            "name": workflow.job_name,
            "steps": [step.to_json() for step in run.steps],
            "check_run_url": f"{api}/check-runs/{run.job_id}",
            "labels": ["ubuntu-latest"],
            "runner_id": 7 if started else None,
            "runner_name": "GitHub Actions 7" if started else None,
            "runner_group_id": 2 if started else None,
            "runner_group_name": "GitHub Actions" if started else None,
        }

    # --- the simulated runner -------------------------------------------------------------------

    def _finish(self, run: GitHubRun, conclusion: str) -> None:
        """Complete a run (lock held): unfinished steps end cancelled (if running) or skipped."""
        now = time.time()
        for step in run.steps:
            if step.status == IN_PROGRESS:
                step.status, step.conclusion, step.completed_at = COMPLETED, conclusion, now
            elif step.status == QUEUED:
                step.status, step.conclusion = COMPLETED, "skipped"
        run.status, run.conclusion = COMPLETED, conclusion
        run.completed_at = run.updated_at = now
        if conclusion == "cancelled":
            run.log("##[error]The operation was canceled.")

    def _execute(self, run: GitHubRun) -> None:
        workflow = run.workflow
        if not self._pause(workflow.seconds * 0.2, run.cancelled):
            return
        with self._lock:
            if run.cancelled.is_set():
                return
            run.status, run.run_started_at = IN_PROGRESS, time.time()
            run.updated_at = run.run_started_at
        step_seconds = workflow.seconds * 0.8 / max(len(run.steps), 1)
        failed = False
        for step in run.steps:
            with self._lock:
                if run.cancelled.is_set():
                    return
                if failed and step.name != "Complete job":
                    step.status, step.conclusion = COMPLETED, "skipped"
                    continue
                step.status, step.started_at = IN_PROGRESS, time.time()
                run.log(f"##[group]Run {self._command(workflow, step.name)}")
            if not self._pause(step_seconds, run.cancelled):
                return
            error_lines = None if failed else self._work(run, step.name)
            with self._lock:
                if run.cancelled.is_set():
                    return
                for line in error_lines or []:
                    run.log(line)
                run.log("##[endgroup]")
                step.status, step.completed_at = COMPLETED, time.time()
                step.conclusion = "failure" if error_lines else "success"
                run.updated_at = step.completed_at
                if error_lines:
                    run.log("##[error]Process completed with exit code 1.")
                    failed = True
        with self._lock:
            if not run.cancelled.is_set():
                self._finish(run, "failure" if failed else "success")

    def _command(self, workflow: GitHubWorkflow, step_name: str) -> str:
        if step_name == "Checkout":
            return "actions/checkout@v4"
        if step_name == workflow.image_step and workflow.image and self.registry_url:
            host = self.registry_url.split("://", 1)[-1]
            return f"docker buildx build --push -t {host}/{workflow.image[0]}:{workflow.image[1]} ."
        return step_name

    def _work(self, run: GitHubRun, step_name: str) -> list[str] | None:
        """Do the step's real work; None on success, else the log lines of the failure."""
        workflow = run.workflow
        if step_name == workflow.fail_step:
            return list(workflow.fail_log)
        if step_name != workflow.image_step or not workflow.image:
            return None
        assert self.registry_url is not None
        pusher = ImagePusher(self.registry_url, auth=self.registry_auth)
        try:
            options = {"salt": f"actions-{run.id}-{time.time_ns()}", **workflow.push_options}
            pushed = pusher.push_image(workflow.image[0], workflow.image[1], **options)
        except Exception as error:  # the registry refused or is down: the step fails, as buildx would
            return [f"ERROR: failed to push {workflow.image[0]}:{workflow.image[1]}: {error}"]
        finally:
            pusher.close()
        with self._lock:
            run.pushed = pushed
            self.pushed.append(pushed)
            run.log(f"pushing manifest for {workflow.image[0]}:{workflow.image[1]}@{pushed.digest}")
        return None


def _created_matches(created_at: float, query: str) -> bool:
    """GitHub's `created` filter: `>=2026-01-01T00:00:00Z`, `<...`, `a..b` or a plain date/day."""
    for operator in (">=", "<=", ">", "<"):
        if query.startswith(operator):
            bound = parse_iso(query[len(operator) :])
            return {
                ">=": created_at >= bound,
                "<=": created_at <= bound,
                ">": created_at > bound,
                "<": created_at < bound,
            }[operator]
    if ".." in query:
        start, end = query.split("..", 1)
        return (start == "*" or created_at >= parse_iso(start)) and (end == "*" or created_at <= parse_iso(end))
    day = datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%d")
    return query.startswith(day)


def _doc_for(rest: str) -> str:
    """The documentation_url GitHub puts in errors of the endpoint at repos/{owner}/{repo}/actions<rest>."""
    for pattern, url in (
        (r"/workflows/[^/]+/dispatches", DOC_DISPATCH),
        (r"/workflows/[^/]+/runs|/runs", DOC_RUNS),
        (r"/workflows/[^/]+", DOC_WORKFLOW),
        (r"/runs/\d+/jobs", DOC_JOBS),
        (r"/runs/\d+/cancel", DOC_CANCEL),
        (r"/runs/\d+", DOC_RUN),
        (r"/jobs/\d+/logs", DOC_JOB_LOGS),
        (r"/jobs/\d+", DOC_JOB),
    ):
        if re.fullmatch(pattern, rest):
            return url
    return DOCS
