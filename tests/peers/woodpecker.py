"""A Woodpecker CI (v3.x API) stand-in whose pipelines push real images into the test's real registry.

Wire format follows woodpecker-ci/woodpecker server/model (Pipeline, Workflow, Step, LogEntry, Repo) and
server/api (status codes): `Authorization: Bearer <token>` (or `?access_token=`), repo routes answer a bad
or missing token with a bare 401 (gin `AbortWithStatus`, empty body), `/api/user` with 401 "User not
authorized"; a manual pipeline whose workflows all filter out answers 204 + `Pipeline-Filtered: true`.
JSON keys tagged `omitempty` in Go (`started`, `finished` of workflows/steps, `variables`) are left out
while empty, so a client must read them with defaults.

A manual pipeline moves pending -> running -> success|failure in a background thread; the image step pushes
a fresh image (new digest every run) through `ImagePusher` when it runs. `go_down`/`come_back` make the
server refuse connections (or answer 502 like an ingress in front of a dead pod) while pipelines keep going
(or freeze); `fault` makes chosen requests fail.

`CIStandIn` is the threaded-server plumbing shared with tests/peers/github_actions.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from tests.peers.forgejo import QuietHTTPServer
from tests.peers.registry import ImagePusher, PushedImage

# --- shared plumbing ------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    json: Any  # the parsed body, or None when absent / not JSON
    authorization: str | None
    headers: httpx.Headers  # case-insensitive


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    body: bytes | None
    headers: dict[str, str]
    times: int | None  # None: until clear_faults()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    json: Any

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


@dataclass
class Answer:
    """One answer as sent: tests hold a stand-in's answers to the protocol (tests/peers/woodpecker_protocol.py)."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status, json.dumps(data).encode(), {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    )


def text_response(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **(headers or {})})


BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class _TrackingServer(QuietHTTPServer):
    """Remembers open connections so going down can cut keep-alive connections too (a dead pod resets them)."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class CIStandIn:
    """A threaded HTTP server on 127.0.0.1 with a request log, injectable faults and an outage switch.

    Subclasses implement `_route(request) -> Response` and `_fault_body(status)`. Background work (pipelines,
    runs) sleeps through `_pause`, which honours `hold()` / `go_down(freeze=True)` and cancellation.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        self.answers: list[Answer] = []
        self._down: str | None = None  # None, "refuse" or "502"
        self._running = threading.Event()  # cleared while frozen
        self._running.set()
        self._stopping = threading.Event()
        self._server = _TrackingServer(("127.0.0.1", 0), self._handler())
        self.port: int = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CIStandIn:
        self._serve()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._running.set()
        if self._down != "refuse":
            self._stop_server()

    # --- test controls --------------------------------------------------------------------------

    def go_down(self, mode: str = "refuse", *, freeze: bool = False) -> None:
        """ "refuse": the port is closed and open connections are reset; "502": an ingress answers 502.

        With `freeze`, background work stops advancing until `come_back` (the agent lost with the server)."""
        if mode not in ("refuse", "502"):
            raise ValueError(f"mode must be 'refuse' or '502', not {mode!r}")
        if freeze:
            self._running.clear()
        with self._lock:
            previous, self._down = self._down, mode
        if mode == "refuse" and previous != "refuse":
            self._stop_server()

    def come_back(self) -> None:
        with self._lock:
            previous, self._down = self._down, None
        if previous == "refuse":
            self._server = _TrackingServer(("127.0.0.1", self.port), self._handler())
            self._serve()
        self._running.set()

    @property
    def is_down(self) -> bool:
        return self._down is not None

    def hold(self) -> None:
        """Stop background work from advancing (a stuck agent) while the API keeps answering."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def fault(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int | None = 1,
        *,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` matching requests (None: all until clear_faults) with `status` instead.

        `method` may be "*"; `path_regex` is searched in the path (no query). The default body is what the
        real server sends for that status."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, data, dict(headers or {}), times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        with self._lock:
            return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    # --- for subclasses ---------------------------------------------------------------------------

    def _route(self, request: Request) -> Response:
        raise NotImplementedError

    def _fault_body(self, status: int) -> Response:
        raise NotImplementedError

    def _pause(self, seconds: float, cancelled: threading.Event | None = None) -> bool:
        """Sleep `seconds` of running time (frozen time does not count). False once cancelled or stopping."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stopping.is_set() or (cancelled is not None and cancelled.is_set()):
                return False
            if not self._running.is_set():
                frozen_at = time.monotonic()
                self._running.wait(0.05)
                deadline += time.monotonic() - frozen_at
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(remaining, 0.02))

    def _start_worker(self, target: Any, *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    # --- the server -----------------------------------------------------------------------------

    def _serve(self) -> None:
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True)
        self._thread.start()

    def _stop_server(self) -> None:
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in (method, "*") and fault.path.search(path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _answer(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    request.query,
                    request.json,
                    request.headers.get("Authorization"),
                    httpx.Headers(request.headers),
                )
            )
            down = self._down
        if down == "502":
            return Response(502, BAD_GATEWAY_HTML.encode(), {"Content-Type": "text/html"})
        fault = self._take_fault(request.method, request.path)
        if fault:
            response = self._fault_body(fault.status) if fault.body is None else Response(fault.status, fault.body)
            response.headers.update(fault.headers)
            return response
        return self._route(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    data = json.loads(body) if body else None
                except ValueError:
                    data = None
                request_headers = httpx.Headers(list(self.headers.items()))  # case-insensitive like Message
                request = Request(self.command, unquote(parts.path), parse_qs(parts.query), request_headers, body, data)
                try:
                    response = stand_in._answer(request)
                except Exception as error:  # a bug in the stand-in: show it to the test rather than hang
                    traceback.print_exc()
                    response = text_response(500, f"stand-in error: {error!r}")
                self.send_response(response.status)
                headers = dict(response.headers)
                headers.setdefault("Content-Length", str(len(response.body)))
                with stand_in._lock:
                    stand_in.answers.append(
                        Answer(request.method, request.path, response.status, headers, response.body)
                    )
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD" and response.body:
                    self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        return Handler


def fake_sha(*parts: object) -> str:
    return hashlib.sha1("/".join(str(p) for p in parts).encode()).hexdigest()


# --- Woodpecker -----------------------------------------------------------------------------------------

# Woodpecker's StatusValue strings.
CREATED, PENDING, RUNNING, SUCCESS, FAILURE = "created", "pending", "running", "success", "failure"
KILLED, CANCELED, SKIPPED, ERROR, BLOCKED, DECLINED = "killed", "canceled", "skipped", "error", "blocked", "declined"
FINISHED_STATES = frozenset({SUCCESS, FAILURE, KILLED, CANCELED, SKIPPED, ERROR, DECLINED})

DEFAULT_FAIL_LOG = (
    '#8 ERROR: failed to solve: process "/bin/sh -c make build" did not complete successfully: exit code: 2'
)


@dataclass
class WoodpeckerRepo:
    id: int
    owner: str
    name: str
    manual_workflow: bool
    image: tuple[str, str] | None
    steps: tuple[str, ...]
    image_step: str | None
    fail_step: str | None
    step_seconds: float
    pending_seconds: float
    fail_log: tuple[str, ...]
    branches: tuple[str, ...]
    workflow_name: str
    push_options: dict[str, Any]
    next_number: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class WoodpeckerStep:
    id: int
    uuid: str
    pipeline_id: int
    pid: int
    ppid: int
    name: str
    type: str
    state: str = PENDING
    exit_code: int = 0
    started: int = 0
    finished: int = 0
    error: str = ""
    logs: list[dict[str, Any]] = field(default_factory=list)
    started_monotonic: float = 0.0

    def log(self, next_log_id: int, text: str) -> None:
        offset = int(time.monotonic() - self.started_monotonic) if self.started_monotonic else 0
        self.logs.append(
            {
                "id": next_log_id,
                "step_id": self.id,
                "time": offset,
                "line": len(self.logs),
                "data": base64.b64encode(text.encode()).decode(),
                "type": 0,  # LogEntryStdout
            }
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "uuid": self.uuid,
            "pipeline_id": self.pipeline_id,
            "pid": self.pid,
            "ppid": self.ppid,
            "name": self.name,
            "state": self.state,
            "exit_code": self.exit_code,
            "type": self.type,
        }
        if self.error:
            data["error"] = self.error
        if self.started:
            data["started"] = self.started
        if self.finished:
            data["finished"] = self.finished
        return data


@dataclass
class WoodpeckerPipeline:
    id: int
    number: int
    repo: WoodpeckerRepo
    branch: str
    variables: dict[str, str]
    commit: str
    workflow_id: int
    steps: list[WoodpeckerStep]
    status: str = PENDING
    workflow_state: str = PENDING
    created: int = 0
    updated: int = 0
    started: int = 0
    finished: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    pushed: PushedImage | None = None

    def to_json(self, forge_url: str) -> dict[str, Any]:
        workflow: dict[str, Any] = {
            "id": self.workflow_id,
            "pipeline_id": self.id,
            "pid": 1,
            "name": self.repo.workflow_name,
            "state": self.workflow_state,
            "agent_id": 1 if self.started else 0,
            "platform": "linux/amd64" if self.started else "",
            "children": [step.to_json() for step in self.steps],
        }
        if self.started:
            workflow["started"] = self.started
        if self.finished:
            workflow["finished"] = self.finished
        if not workflow["agent_id"]:
            del workflow["agent_id"], workflow["platform"]
        data: dict[str, Any] = {
            "id": self.id,
            "number": self.number,
            "author": "registry-bot",
            "parent": 0,
            "event": "manual",
            "status": self.status,
            "errors": None,
            "created": self.created,
            "updated": self.updated,
            "started": self.started,
            "finished": self.finished,
            "deploy_to": "",
            "deploy_task": "",
            "commit": self.commit,
            "branch": self.branch,
            "ref": f"refs/heads/{self.branch}",
            "refspec": "",
            "title": "",
            "message": f"MANUAL PIPELINE @ {self.branch}",
            "timestamp": self.created,
            "sender": "registry-bot",
            "author_avatar": "",
            "author_email": "registry-bot@example.invalid",
            "forge_url": f"{forge_url}/{self.repo.full_name}/commit/{self.commit}",
            "reviewed_by": "",
            "reviewed": 0,
            "workflows": [workflow],
        }
        if self.variables:
            data["variables"] = dict(self.variables)
        return data


class WoodpeckerStandIn(CIStandIn):
    """Woodpecker's REST API on 127.0.0.1. Use as a context manager.

    Routes: GET /api/user, GET /version, GET /api/repos/lookup/{owner}/{name}, GET /api/repos/{id},
    GET|POST /api/repos/{id}/pipelines, GET /api/repos/{id}/pipelines/{number|latest},
    POST /api/repos/{id}/pipelines/{number}/cancel, GET /api/repos/{id}/logs/{number}/{step_id};
    the web UI link <url>/repos/{id}/pipeline/{number} answers a small HTML page.
    """

    VERSION = "3.14.0"

    def __init__(
        self,
        token: str = "wp-token",
        registry_url: str | None = None,
        *,
        registry_auth: tuple[str, str] | None = None,
        forge_url: str = "https://forgejo.example.invalid",
    ) -> None:
        super().__init__()
        self.token = token
        self.registry_url = registry_url
        self.registry_auth = registry_auth
        self.forge_url = forge_url
        self._repos: dict[int, WoodpeckerRepo] = {}
        self._pipelines: dict[int, list[WoodpeckerPipeline]] = {}
        self._ids = {"repo": 0, "pipeline": 100, "workflow": 1000, "step": 5000, "log": 90000}
        self.pushed: list[PushedImage] = []

    def __enter__(self) -> WoodpeckerStandIn:
        super().__enter__()
        return self

    # --- test controls --------------------------------------------------------------------------

    def add_repo(
        self,
        owner: str,
        name: str,
        *,
        repo_id: int | None = None,
        manual_workflow: bool = True,
        image: tuple[str, str] | None = None,
        steps: Sequence[str] = ("clone", "build-and-push"),
        image_step: str | None = None,
        fail_step: str | None = None,
        step_seconds: float = 0.2,
        pending_seconds: float | None = None,
        fail_log: str = DEFAULT_FAIL_LOG,
        branches: Sequence[str] = ("main",),
        workflow_name: str = "build",
        push_options: Mapping[str, Any] | None = None,
    ) -> int:
        """Register a repository; returns its id.

        `image` (name, tag) is pushed to `registry_url` by `image_step` (default: the last step) when it runs;
        `push_options` go to `ImagePusher.push_image` (e.g. platforms, docker). `fail_step` ends with exit code
        1 and `fail_log`'s lines in its log; later steps are skipped. `manual_workflow=False`: no workflow runs
        on the manual event, so POST answers 204 + Pipeline-Filtered. A pipeline stays pending for
        `pending_seconds` (default `step_seconds`) before an agent picks it up. Unknown branches answer 500,
        as Woodpecker does when the forge cannot resolve the branch head."""
        steps = tuple(steps)
        if fail_step is not None and fail_step not in steps:
            raise ValueError(f"fail_step {fail_step!r} is not one of the steps {steps}")
        image_step = image_step or steps[-1]
        if image_step not in steps:
            raise ValueError(f"image_step {image_step!r} is not one of the steps {steps}")
        if image is not None and self.registry_url is None:
            raise ValueError("an image to push needs WoodpeckerStandIn(registry_url=...)")
        with self._lock:
            if repo_id is None:
                repo_id = max([self._ids["repo"], *self._repos]) + 1
            if repo_id in self._repos:
                raise ValueError(f"repo id {repo_id} is taken")
            self._ids["repo"] = max(self._ids["repo"], repo_id)
            self._repos[repo_id] = WoodpeckerRepo(
                id=repo_id,
                owner=owner,
                name=name,
                manual_workflow=manual_workflow,
                image=image,
                steps=steps,
                image_step=image_step if image else None,
                fail_step=fail_step,
                step_seconds=step_seconds,
                pending_seconds=step_seconds if pending_seconds is None else pending_seconds,
                fail_log=tuple(fail_log.splitlines()),
                branches=tuple(branches),
                workflow_name=workflow_name,
                push_options=dict(push_options or {}),
            )
            self._pipelines[repo_id] = []
        return repo_id

    def pipelines(self, repo_id: int) -> list[dict[str, Any]]:
        """The repository's pipelines as the API shows them, oldest first."""
        with self._lock:
            return [p.to_json(self.forge_url) for p in self._pipelines.get(repo_id, [])]

    def pipeline_url(self, repo_id: int, number: int) -> str:
        return f"{self.url}/repos/{repo_id}/pipeline/{number}"

    def finish_unfinished(self, state: str = ERROR) -> None:
        """End every unfinished pipeline with `state` (e.g. the server came back and lost its agents)."""
        with self._lock:
            for pipelines in self._pipelines.values():
                for pipeline in pipelines:
                    if pipeline.status not in FINISHED_STATES:
                        pipeline.cancelled.set()
                        self._end(pipeline, state, step_state=state)

    # --- the API --------------------------------------------------------------------------------

    def _fault_body(self, status: int) -> Response:
        if status in (400, 401, 403, 404):
            return Response(status)  # the repo routes' session middleware aborts with a bare status
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        return text_response(status, phrase)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return secrets.compare_digest(value.strip(), self.token)
        supplied = request.arg("access_token")
        return bool(supplied) and secrets.compare_digest(supplied, self.token)

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/version" and method == "GET":
            return json_response(
                200, {"source": "https://github.com/woodpecker-ci/woodpecker", "version": self.VERSION}
            )
        match = re.fullmatch(r"/repos/(\d+)/pipeline/(\d+)", path)
        if match and method == "GET":
            title = f"Pipeline #{match[2]} - Woodpecker"
            return Response(200, f"<html><title>{title}</title></html>".encode(), {"Content-Type": "text/html"})
        if not path.startswith("/api/"):
            return Response(404, b"404 page not found", {"Content-Type": "text/plain"})
        authorized = self._authorized(request)
        if path == "/api/user" and method == "GET":
            if not authorized:
                return text_response(401, "User not authorized")
            return json_response(
                200, {"id": 1, "forge_id": 1, "login": "registry-bot", "email": "", "avatar_url": "", "admin": False}
            )
        match = re.fullmatch(r"/api/repos/lookup/(.+)", path)
        if match and method == "GET":
            repo = self._repo_by_name(match[1].strip("/"))
            return self._repo_route(repo, authorized, lambda r: json_response(200, self._repo_json(r)))
        match = re.fullmatch(r"/api/repos/(\d+)(/.*)?", path)
        if match:
            with self._lock:
                repo = self._repos.get(int(match[1]))
            rest = match[2] or ""
            return self._repo_route(repo, authorized, lambda r: self._repo_api(request, r, rest))
        return Response(404, b"404 page not found", {"Content-Type": "text/plain"})

    def _repo_route(
        self, repo: WoodpeckerRepo | None, authorized: bool, then: Callable[[WoodpeckerRepo], Response]
    ) -> Response:
        # Repositories here are private: session.SetRepo/MustPull abort with a bare status, no body.
        if not authorized:
            return Response(401)
        if repo is None:
            return Response(404)
        return then(repo)

    def _repo_by_name(self, full_name: str) -> WoodpeckerRepo | None:
        with self._lock:
            return next((r for r in self._repos.values() if r.full_name.lower() == full_name.lower()), None)

    def _repo_json(self, repo: WoodpeckerRepo) -> dict[str, Any]:
        return {
            "id": repo.id,
            "forge_id": 1,
            "forge_remote_id": str(repo.id + 7000),
            "org_id": 1,
            "owner": repo.owner,
            "name": repo.name,
            "full_name": repo.full_name,
            "avatar_url": "",
            "forge_url": f"{self.forge_url}/{repo.full_name}",
            "clone_url": f"{self.forge_url}/{repo.full_name}.git",
            "clone_url_ssh": "",
            "default_branch": repo.branches[0] if repo.branches else "main",
            "scm": "git",
            "pr_enabled": True,
            "timeout": 60,
            "visibility": "private",
            "private": True,
            "trusted": {"network": False, "volumes": False, "security": False},
            "require_approval": "forks",
            "active": True,
            "allow_pr": True,
            "allow_deploy": False,
            "config_file": "",
            "cancel_previous_pipeline_events": [],
            "netrc_trusted": [],
        }

    def _repo_api(self, request: Request, repo: WoodpeckerRepo, rest: str) -> Response:
        method = request.method
        if rest in ("", "/") and method == "GET":
            return json_response(200, self._repo_json(repo))
        if rest == "/pipelines" and method == "POST":
            return self._create_pipeline(request, repo)
        if rest == "/pipelines" and method == "GET":
            with self._lock:
                listed = [p.to_json(self.forge_url) for p in reversed(self._pipelines[repo.id])]
            for item in listed:
                item.pop("workflows", None)  # the list endpoint does not load workflows
            return json_response(200, listed)
        match = re.fullmatch(r"/pipelines/(\w+)", rest)
        if match and method == "GET":
            found = self._find_pipeline(repo, match[1], request.arg("branch"))
            if isinstance(found, Response):
                return found
            with self._lock:
                return json_response(200, found.to_json(self.forge_url))
        match = re.fullmatch(r"/pipelines/(\w+)/cancel", rest)
        if match and method == "POST":
            found = self._find_pipeline(repo, match[1], "")
            return found if isinstance(found, Response) else self._cancel(found)
        match = re.fullmatch(r"/logs/(\w+)/(\w+)", rest)
        if match and method == "GET":
            pipeline = self._find_pipeline(repo, match[1], "")
            if isinstance(pipeline, Response):
                return pipeline
            if not match[2].isdigit():
                return Response(400)
            with self._lock:
                step = next((s for s in pipeline.steps if s.id == int(match[2])), None)
                if step is None:
                    known = any(s.id == int(match[2]) for p in self._pipelines[repo.id] for s in p.steps)
                    # StepLoad finds any step by id; one of another pipeline is refused with 400.
                    return Response(400) if known else Response(404)
                return json_response(200, list(step.logs))
        return Response(404, b"404 page not found", {"Content-Type": "text/plain"})

    def _find_pipeline(self, repo: WoodpeckerRepo, number: str, branch: str) -> WoodpeckerPipeline | Response:
        """The pipeline by number or "latest" (of `branch`, default the repo's default branch); else 400/404."""
        with self._lock:
            pipelines = self._pipelines[repo.id]
            if number == "latest":
                wanted = branch or (repo.branches[0] if repo.branches else "main")
                matching = [p for p in pipelines if p.branch == wanted]
                return matching[-1] if matching else Response(404)
            if not number.isdigit():
                return Response(400)
            found = next((p for p in pipelines if p.number == int(number)), None)
            return found or Response(404)

    def _create_pipeline(self, request: Request, repo: WoodpeckerRepo) -> Response:
        options = request.json
        if not isinstance(options, dict):
            return Response(400)
        branch = str(options.get("branch") or "")
        variables = options.get("variables") or {}
        if not isinstance(variables, dict):
            return Response(400)
        if branch not in repo.branches:
            return Response(500)  # BranchHead failed: gin AbortWithError, no body
        if not repo.manual_workflow:
            return Response(204, headers={"Pipeline-Filtered": "true"})
        now = int(time.time())
        with self._lock:
            self._ids["pipeline"] += 1
            self._ids["workflow"] += 1
            pipeline_id = self._ids["pipeline"]
            steps = []
            for pid, step_name in enumerate(repo.steps, start=2):
                self._ids["step"] += 1
                steps.append(
                    WoodpeckerStep(
                        id=self._ids["step"],
                        uuid=fake_sha(pipeline_id, step_name)[:8] + "-" + fake_sha(step_name)[:4],
                        pipeline_id=pipeline_id,
                        pid=pid,
                        ppid=1,
                        name=step_name,
                        type="clone" if step_name == "clone" else "commands",
                    )
                )
            pipeline = WoodpeckerPipeline(
                id=pipeline_id,
                number=repo.next_number,
                repo=repo,
                branch=branch,
                variables={str(k): str(v) for k, v in variables.items()},
                commit=fake_sha(repo.full_name, branch),
                workflow_id=self._ids["workflow"],
                steps=steps,
                created=now,
                updated=now,
            )
            repo.next_number += 1
            self._pipelines[repo.id].append(pipeline)
            snapshot = pipeline.to_json(self.forge_url)
        self._start_worker(self._run, pipeline)
        return json_response(200, snapshot)

    def _cancel(self, pipeline: WoodpeckerPipeline) -> Response:
        with self._lock:
            if pipeline.status not in (PENDING, RUNNING, BLOCKED, CREATED):
                return text_response(400, "Cannot cancel a non-running or non-pending or non-blocked pipeline")
            pipeline.cancelled.set()
            self._end(pipeline, KILLED, step_state=KILLED)
        return Response(204)

    # --- the simulated agent --------------------------------------------------------------------

    def _next_log_id(self) -> int:
        self._ids["log"] += 1
        return self._ids["log"]

    def _end(self, pipeline: WoodpeckerPipeline, state: str, *, step_state: str) -> None:
        """Finish a pipeline (lock held): running steps get `step_state`, pending ones canceled/skipped."""
        now = int(time.time())
        for step in pipeline.steps:
            if step.state == RUNNING:
                step.state, step.finished = step_state, now
                step.exit_code = step.exit_code or (137 if step_state == KILLED else 1)
            elif step.state == PENDING:
                step.state = CANCELED if state in (KILLED, ERROR) else SKIPPED
        pipeline.status = pipeline.workflow_state = state
        pipeline.finished = pipeline.updated = now
        pipeline.started = pipeline.started or now

    def _run(self, pipeline: WoodpeckerPipeline) -> None:
        repo = pipeline.repo
        if not self._pause(repo.pending_seconds, pipeline.cancelled):
            return
        with self._lock:
            if pipeline.cancelled.is_set():
                return
            pipeline.status = pipeline.workflow_state = RUNNING
            pipeline.started = pipeline.updated = int(time.time())
        for step in pipeline.steps:
            with self._lock:
                if pipeline.cancelled.is_set():
                    return
                step.state, step.started, step.started_monotonic = RUNNING, int(time.time()), time.monotonic()
                pipeline.updated = step.started
                step.log(self._next_log_id(), f"+ {self._command(repo, step.name)}")
            if not self._pause(repo.step_seconds, pipeline.cancelled):
                return
            failed_lines = self._work(pipeline, step)
            with self._lock:
                if pipeline.cancelled.is_set():
                    return
                for line in failed_lines or []:
                    step.log(self._next_log_id(), line)
                step.finished = pipeline.updated = int(time.time())
                if failed_lines is None:
                    step.state, step.exit_code = SUCCESS, 0
                    continue
                step.state, step.exit_code = FAILURE, 1
                self._end(pipeline, FAILURE, step_state=FAILURE)
                return
        with self._lock:
            if not pipeline.cancelled.is_set():
                self._end(pipeline, SUCCESS, step_state=SUCCESS)

    def _command(self, repo: WoodpeckerRepo, step_name: str) -> str:
        if step_name == "clone":
            return f"git fetch --no-tags --depth=1 origin +refs/heads/*: # {repo.full_name}"
        if step_name == repo.image_step and repo.image:
            return f"docker buildx build --push -t {self._image_ref(repo)} ."
        return f"make {step_name}"

    def _image_ref(self, repo: WoodpeckerRepo) -> str:
        assert repo.image and self.registry_url
        host = self.registry_url.split("://", 1)[-1]
        return f"{host}/{repo.image[0]}:{repo.image[1]}"

    def _work(self, pipeline: WoodpeckerPipeline, step: WoodpeckerStep) -> list[str] | None:
        """Do the step's real work; None on success, else the log lines of the failure."""
        repo = pipeline.repo
        if step.name == repo.fail_step:
            return list(repo.fail_log)
        if step.name != repo.image_step or not repo.image:
            with self._lock:
                step.log(self._next_log_id(), f"{step.name}: done")
            return None
        assert self.registry_url is not None
        pusher = ImagePusher(self.registry_url, auth=self.registry_auth)
        try:
            options = {"salt": f"woodpecker-{pipeline.id}-{time.time_ns()}", **repo.push_options}
            pushed = pusher.push_image(repo.image[0], repo.image[1], **options)
        except Exception as error:  # the registry refused or is down: the step fails, as buildx would
            return [f"ERROR: failed to push {self._image_ref(repo)}: {error}"]
        finally:
            pusher.close()
        with self._lock:
            pipeline.pushed = pushed
            self.pushed.append(pushed)
            step.log(self._next_log_id(), f"pushing manifest for {self._image_ref(repo)}@{pushed.digest}")
        return None
