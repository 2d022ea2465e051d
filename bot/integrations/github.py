"""GitHub Actions: dispatch a workflow (workflow_dispatch), follow the run, read the failing job's log.

Every call goes through githubkit, which is generated from GitHub's own OpenAPI description, so each answer
is read by GitHub's schema: an answer GitHub would not give is one line ("not GitHub's schema"), never a
guess. Refusals, timeouts and outages are one-line CIErrors too; the token is never in any of them.

- A dispatch asks for `return_run_details` (200 with the run's id); a 204 (a GitHub that does not return
  them) finds the run by listing the workflow's dispatched runs created since; an older GitHub Enterprise
  Server that refuses the option (400 naming it) is asked again without it.
- A job's log answers 302 to a signed URL: the redirect is never followed with the token (the client does
  not follow redirects); the URL is fetched by a plain client, only on GitHub's own hosts, and at most
  LOG_BYTES of it are kept. No other redirect is followed either (a 301 for a renamed repository is one line).
- githubkit asks in REST API version 2026-03-10; a GitHub that refuses it (an Enterprise Server that does not
  know it yet) is asked once more in 2022-11-28, and in that version from then on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

import httpx

from bot.integrations.ci import CIError, CIRun, CIStep, read_tail

if TYPE_CHECKING:
    from githubkit import GitHub
    from githubkit.response import Response

log = logging.getLogger(__name__)
T = TypeVar("T")
Call = Callable[[dict[str, str]], Awaitable["Response[T]"]]  # one githubkit call, given its version header
OLDEST_VERSION = "2022-11-28"  # the REST API version every supported GitHub (and Enterprise Server) speaks

# GitHub's step/run vocabulary mapped onto Woodpecker's, which the progress message speaks.
STATES = {
    "queued": "pending",
    "waiting": "pending",
    "pending": "pending",
    "requested": "pending",
    "in_progress": "running",
}
CONCLUSIONS = {
    "success": "success",
    "failure": "failure",
    "cancelled": "canceled",
    "timed_out": "error",
    "skipped": "skipped",
    "neutral": "success",
    "action_required": "blocked",
    "startup_failure": "error",
    "stale": "error",
}
TOKEN_NEEDS = "`actions: write` on the repository (fine-grained token) or the `repo` and `workflow` scopes (classic)"
LOG_HOST_SUFFIXES = (".github.com", ".githubusercontent.com", ".blob.core.windows.net")


class GitHubActions:
    """GitHub's Actions REST API through githubkit. Construct, use, then `await aclose()`."""

    def __init__(self, api_url: str, token: str, timeout: float = 15.0) -> None:
        from githubkit import GitHub
        from githubkit.versions import LATEST_VERSION

        self._api = api_url.rstrip("/")
        url = httpx.URL(self._api)
        self.where = f"GitHub ({url.host}{f':{url.port}' if url.port else ''})"  # never the URL's user info
        self._token = token
        self._timeout = timeout
        self._pool = _Pool()
        self._version = LATEST_VERSION  # githubkit's; OLDEST_VERSION once a GitHub (Enterprise Server) refuses it
        self._github: GitHub[Any] = GitHub(
            token,
            base_url=self._api + "/",
            user_agent="registry-bot",
            follow_redirects=False,  # the token never follows a redirect (a log's signed URL above all)
            timeout=timeout,
            http_cache=False,
            auto_retry=False,  # the rebuild phase decides how long to wait out an outage
            async_transport=self._pool,
        )

    async def aclose(self) -> None:
        await self._pool.close()

    # --- the three things the rebuild phase asks -----------------------------------------------------------

    async def dispatch(self, repo: str, workflow: str, ref: str, inputs: dict[str, str] | None = None) -> int:
        """Dispatch the workflow; the run's id (from the answer, or found by listing the runs it created)."""
        from githubkit_schemas.latest.models import WorkflowDispatchResponse

        owner, name = _split(repo)
        since = datetime.now(UTC) - timedelta(seconds=5)
        doing = f"dispatching {workflow} in {repo}"
        body: dict[str, Any] = {"ref": ref, "inputs": inputs or {}, "return_run_details": True}
        answer = await self._post_dispatch(owner, name, workflow, body, doing)
        if answer.status_code == 400 and "return_run_details" in _message(answer):
            body.pop("return_run_details")  # an older GitHub (Enterprise Server) that does not know the option
            answer = await self._post_dispatch(owner, name, workflow, body, doing)
        status = answer.status_code
        if status == 404:
            raise CIError(f"GitHub has no workflow {workflow} in {repo} (or the token cannot see it).")
        if status == 422:
            raise CIError(f"GitHub refused to dispatch {workflow} on {ref}: {_message(answer) or 'HTTP 422'}.")
        if status == 400:
            raise _refusal(self.where, status, _message(answer), doing)
        if status == 200:
            details = self._parsed(cast("Response[WorkflowDispatchResponse]", answer), doing)
            return int(details.workflow_run_id)
        if status != 204:
            raise CIError(f"GitHub answered HTTP {status} dispatching {workflow}.")
        return await self._find_run(owner, name, workflow, ref, since)

    async def run(self, repo: str, run_id: int) -> CIRun:
        owner, name = _split(repo)
        actions = self._github.rest.actions
        doing = f"reading run {run_id} of {repo}"
        answer = await self._send(
            doing, lambda headers: actions.async_get_workflow_run(owner, name, run_id, headers=headers), allow=(404,)
        )
        if answer.status_code == 404:
            raise CIError(f"GitHub has no run {run_id} in {repo} (or the token cannot see it).")
        data = self._parsed(answer, doing)
        doing = f"listing the jobs of run {run_id} of {repo}"
        jobs = await self._send(
            doing,
            lambda headers: actions.async_list_jobs_for_workflow_run(
                owner, name, run_id, per_page=100, headers=headers
            ),
            allow=(404,),
        )
        steps = []
        if jobs.status_code == 200:
            for job in self._parsed(jobs, doing).jobs:
                for step in job.steps or []:
                    steps.append(CIStep(step.name, _state(step.status, step.conclusion), job.name, job.id))
        finished = data.status == "completed"
        status = CONCLUSIONS.get(str(data.conclusion), "error") if finished else _state(data.status, None)
        return CIRun(data.run_number or run_id, status, data.html_url, finished, steps)

    async def log_tail(self, repo: str, job_id: int, lines: int = 30) -> list[str]:
        """The last lines of a job's log, reading at most LOG_BYTES of it into memory; [] when there is none."""
        owner, name = _split(repo)
        doing = f"reading the log of job {job_id} of {repo}"
        actions = self._github.rest.actions
        answer = (
            await self._send(
                doing,
                lambda headers: actions.async_download_job_logs_for_workflow_run(
                    owner, name, job_id, headers=headers, stream=True
                ),
                allow=(302, 404, 410),
            )
        ).raw_response
        try:
            if answer.status_code == 200:  # served by the API itself (no redirect), still read as a tail
                return await _tail_lines(answer, lines)
            location = answer.headers.get("Location", "")
        except httpx.HTTPError:
            return []  # cut off mid-log: there is nothing whole to show
        finally:
            await answer.aclose()
        if answer.status_code != 302 or not location:
            return []
        # The log lives behind a signed URL, fetched without our token, and only on GitHub's own hosts.
        target = answer.request.url.join(location)
        if not _is_log_host(str(target), self._api):
            log.warning(
                "%s put job %s's log on %s, not one of GitHub's hosts: not read", self.where, job_id, target.host
            )
            return []
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as plain, plain.stream("GET", target) as blob:
                return await _tail_lines(blob, lines) if blob.status_code == 200 else []
        except httpx.HTTPError:
            return []

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _post_dispatch(
        self, owner: str, name: str, workflow: str, body: dict[str, Any], doing: str
    ) -> Response[Any]:
        """POST .../dispatches. Sent as it is: githubkit's generated call would drop `return_run_details`,
        which GitHub's description of the request body does not list yet (its 200 answer it does)."""
        from githubkit_schemas.latest.models import WorkflowDispatchResponse

        url = f"/repos/{owner}/{name}/actions/workflows/{quote(workflow, safe='')}/dispatches"
        github = self._github
        return await self._send(
            doing,
            lambda headers: github.arequest(
                "POST", url, json=body, headers=headers, response_model=WorkflowDispatchResponse
            ),
            allow=(400, 404, 422),
        )

    async def _find_run(self, owner: str, name: str, workflow: str, ref: str, since: datetime) -> int:
        """The run a dispatch answered 204 to: it appears in listings a moment after the dispatch."""
        doing = f"looking for the run of {workflow} just dispatched"
        actions, created = self._github.rest.actions, f">={since:%Y-%m-%dT%H:%M:%SZ}"
        for _ in range(30):
            answer = await self._send(
                doing,
                lambda headers: actions.async_list_workflow_runs(
                    owner,
                    name,
                    quote(workflow, safe=""),
                    event="workflow_dispatch",
                    branch=ref,
                    created=created,
                    headers=headers,
                ),
                allow=(404,),
            )
            runs = self._parsed(answer, doing).workflow_runs if answer.status_code == 200 else []
            if runs:
                return int(runs[0].id)
            await asyncio.sleep(1)
        raise CIError(f"GitHub accepted the dispatch of {workflow} but no run appeared within 30 s.")

    async def _send(self, doing: str, call: Call[T], allow: tuple[int, ...] = ()) -> Response[T]:
        """One githubkit call, given its version header: the answer, or (a status in `allow`) the refusal; else
        one CIError. A GitHub (Enterprise Server) without githubkit's API version is asked in OLDEST_VERSION."""
        from githubkit.exception import RateLimitExceeded, RequestError, RequestFailed, RequestTimeout

        try:
            answer = await self._versioned(call)
        except RateLimitExceeded as exc:
            wait, status = int(exc.retry_after.total_seconds()), exc.response.status_code
            raise CIError(
                f"{self.where} says the token's rate limit is spent (HTTP {status}); it resets in {wait} s."
            ) from None
        except RequestFailed as exc:
            if exc.response.status_code in allow and not _refuses_version(exc.response):
                return cast("Response[T]", exc.response)
            raise _refusal(self.where, exc.response.status_code, _message(exc.response), doing) from None
        except RequestTimeout:
            raise CIError(f"{self.where} did not answer in time while {doing}.") from None
        except RequestError as exc:
            cause = type(exc.exc).__name__
            raise CIError(
                f"{self.where} is unreachable while {doing} ({cause}); check its URL and that it is up."
            ) from None
        except Exception as exc:  # e.g. a URL httpx cannot build a request for
            raise CIError(f"{self.where} could not be asked while {doing} ({type(exc).__name__}).") from None
        if answer.is_redirect and answer.status_code not in allow:  # GitHub's 301 for a moved repository
            await answer.raw_response.aclose()
            raise CIError(
                f"{self.where} answered HTTP {answer.status_code} (moved) while {doing}; the bot follows no redirect "
                "with its token: if the repository was renamed or transferred, update the image's `repo` setting."
            )
        return answer

    async def _versioned(self, call: Call[T]) -> Response[T]:
        """The call in the API version this GitHub speaks: githubkit's, else (asked once) OLDEST_VERSION."""
        from githubkit.exception import RequestFailed

        try:
            return await call({"X-GitHub-Api-Version": self._version})
        except RequestFailed as exc:
            if not _refuses_version(exc.response) or self._version == OLDEST_VERSION:
                raise
        log.info("%s does not support REST API version %s; asking in %s", self.where, self._version, OLDEST_VERSION)
        self._version = OLDEST_VERSION
        return await call({"X-GitHub-Api-Version": self._version})

    def _parsed(self, answer: Response[T], doing: str) -> T:
        """The answer read by GitHub's schema; one CIError when it does not fit (the details go to the log)."""
        from pydantic import ValidationError

        try:
            return answer.parsed_data
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)[:5]
            )
        except ValueError as exc:
            details = type(exc).__name__
        if self._token:
            details = details.replace(self._token, "[token]")
        log.warning("%s answered %s with something that is not GitHub's schema: %s", self.where, doing, details)
        raise CIError(
            f"{self.where} answered {doing} with something that is not GitHub's schema (HTTP {answer.status_code}); "
            "is GITHUB_API_URL GitHub's REST API?"
        )


class _Pool(httpx.AsyncBaseTransport):
    """One connection pool for every call. Outside `async with`, githubkit opens and closes an httpx client per
    request, and closing a client closes its transport: this one stays open until GitHubActions.aclose()."""

    def __init__(self) -> None:
        self._transport = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        return None  # a per-request client is done with it; the pool is not

    async def close(self) -> None:
        await self._transport.aclose()


def _split(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise CIError(f"The GitHub repository {repo!r} is not owner/name; fix the image's `repo` setting.")
    return quote(owner, safe=""), quote(name, safe="")


def _refusal(where: str, status: int, message: str, doing: str) -> CIError:
    """One line for an answer GitHub gives when it refuses, naming what to do."""
    if status == 401:
        return CIError(
            f"{where} refused the bot's token (HTTP 401) while {doing}; it may be revoked or expired: "
            "check GITHUB_TOKEN or its Vault secret."
        )
    if status == 403:
        return CIError(f"{where} refused {doing} (HTTP 403): the token needs {TOKEN_NEEDS}.")
    if status == 400 and "api version" in message.lower():
        return CIError(f"{where} supports neither REST API version the bot speaks (HTTP 400): {message}")
    if status >= 500:
        return CIError(f"{where} failed with HTTP {status} while {doing}; try again later.")
    return CIError(f"{where} answered HTTP {status} while {doing}{f': {message}' if message else ''}.")


def _refuses_version(answer: Response[Any]) -> bool:
    return answer.status_code == 400 and "api version" in _message(answer).lower()


def _message(answer: Response[Any]) -> str:
    """The `message` of one of GitHub's error bodies, on one line; "" when the body has none."""
    from githubkit_schemas.latest.models import BasicError
    from pydantic import ValidationError

    try:
        error = BasicError.model_validate_json(answer.raw_response.content)
    except (ValidationError, ValueError, httpx.StreamError):
        return ""
    return " ".join(str(error.message or "").split())[:200]


def _state(status: str | None, conclusion: str | None) -> str:
    if status == "completed":
        return CONCLUSIONS.get(str(conclusion), "error")
    return STATES.get(str(status), "pending")


async def _tail_lines(response: httpx.Response, lines: int) -> list[str]:
    tail, dropped = await read_tail(response)
    text = tail.decode("utf-8", "replace").splitlines()
    return (text[1:] if dropped else text)[-lines:]  # the first line of a cut tail is partial


def _is_log_host(location: str, api_url: str) -> bool:
    host = httpx.URL(location).host
    return host == httpx.URL(api_url).host or host.endswith(LOG_HOST_SUFFIXES)


class GitHubBuild:
    """CIBackend: a workflow_dispatch of one workflow on one ref."""

    def __init__(self, client: GitHubActions, repo: str, workflow: str, branch: str) -> None:
        self.client = client
        self.repo = repo
        self.workflow = workflow
        self.branch = branch
        self.description = f"GitHub Actions {repo} workflow {workflow} on {branch}"
        self._run_id = 0

    async def prepare(self) -> None:
        return None  # a dispatch both checks and starts: nothing to look up first

    async def start(self) -> CIRun:
        self._run_id = await self.client.dispatch(self.repo, self.workflow, self.branch)
        return await self.client.run(self.repo, self._run_id)

    async def poll(self, run: CIRun) -> CIRun:
        return await self.client.run(self.repo, self._run_id)

    async def log_tail(self, run: CIRun, step: CIStep) -> list[str]:
        if step.step_id is None:
            return []
        return await self.client.log_tail(self.repo, int(step.step_id))

    async def aclose(self) -> None:
        await self.client.aclose()
