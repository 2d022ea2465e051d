"""GitHub Actions: dispatch a workflow (workflow_dispatch), follow the run, read the failing job's log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from bot.integrations.ci import CIError, CIRun, CIStep, request

SERVICE = "GitHub"
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


class GitHubActions:
    def __init__(self, api_url: str, token: str, timeout: float = 15.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            timeout=timeout,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def dispatch(self, repo: str, workflow: str, ref: str, inputs: dict[str, str] | None = None) -> int:
        """Dispatch the workflow; the run's id (from the answer, or found by listing the runs it created)."""
        path = f"/repos/{repo}/actions/workflows/{quote(workflow, safe='')}"
        since = datetime.now(UTC) - timedelta(seconds=5)
        body: dict[str, Any] = {"ref": ref, "inputs": inputs or {}, "return_run_details": True}
        response = await request(self._http, SERVICE, "POST", f"{path}/dispatches", json=body)
        if response.status_code == 400 and "return_run_details" in response.text:
            body.pop("return_run_details")  # an older GitHub (Enterprise Server) that does not know the option
            response = await request(self._http, SERVICE, "POST", f"{path}/dispatches", json=body)
        if response.status_code == 404:
            raise CIError(f"GitHub has no workflow {workflow} in {repo} (or the token cannot see it).")
        if response.status_code == 422:
            message = str(response.json().get("message", ""))[:200]
            raise CIError(f"GitHub refused to dispatch {workflow} on {ref}: {message}.")
        if response.status_code == 200:
            return int(response.json()["workflow_run_id"])
        if response.status_code != 204:
            raise CIError(f"GitHub answered HTTP {response.status_code} dispatching {workflow}.")
        for _ in range(30):  # the run appears in listings a moment after the dispatch
            listing = await request(
                self._http,
                SERVICE,
                "GET",
                f"{path}/runs",
                params={"event": "workflow_dispatch", "branch": ref, "created": f">={since:%Y-%m-%dT%H:%M:%SZ}"},
            )
            runs = listing.json().get("workflow_runs") or [] if listing.status_code == 200 else []
            if runs:
                return int(runs[0]["id"])
            await asyncio.sleep(1)
        raise CIError(f"GitHub accepted the dispatch of {workflow} but no run appeared within 30 s.")

    async def run(self, repo: str, run_id: int) -> CIRun:
        response = await request(self._http, SERVICE, "GET", f"/repos/{repo}/actions/runs/{run_id}")
        if response.status_code != 200:
            raise CIError(f"GitHub answered HTTP {response.status_code} for run {run_id}.")
        data = response.json()
        jobs = await request(self._http, SERVICE, "GET", f"/repos/{repo}/actions/runs/{run_id}/jobs")
        steps = []
        if jobs.status_code == 200:
            for job in jobs.json().get("jobs") or []:
                for step in job.get("steps") or []:
                    steps.append(
                        CIStep(str(step.get("name", "")), _state(step), str(job.get("name", "")), job.get("id"))
                    )
        finished = data.get("status") == "completed"
        status = CONCLUSIONS.get(str(data.get("conclusion")), "error") if finished else _state(data)
        return CIRun(int(data.get("run_number") or run_id), status, str(data.get("html_url", "")), finished, steps)

    async def log_tail(self, repo: str, job_id: int, lines: int = 30) -> list[str]:
        response = await request(self._http, SERVICE, "GET", f"/repos/{repo}/actions/jobs/{job_id}/logs")
        location = response.headers.get("Location", "")
        if response.status_code == 302 and location:
            # The log lives behind a signed URL, fetched without our token, and only on GitHub's own hosts.
            if not _is_log_host(location, str(self._http.base_url)):
                return []
            async with httpx.AsyncClient(timeout=15) as plain:
                try:
                    response = await plain.get(location)
                except httpx.HTTPError:
                    return []
        if response.status_code != 200:
            return []
        return response.text.splitlines()[-lines:]


def _state(item: dict[str, Any]) -> str:
    if item.get("status") == "completed":
        return CONCLUSIONS.get(str(item.get("conclusion")), "error")
    return STATES.get(str(item.get("status")), "pending")


LOG_HOST_SUFFIXES = (".github.com", ".githubusercontent.com", ".blob.core.windows.net")


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
