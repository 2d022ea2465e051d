"""Woodpecker CI's API (v1 and later): look a repository up, start a manual pipeline, follow it, read logs.

Auth is `Authorization: Bearer <token>`; repositories are addressed by numeric id.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx

from bot.integrations.ci import CIError, CIRun, CIStep, request

FINISHED = {"success", "failure", "killed", "error", "skipped", "blocked", "declined", "canceled"}
SERVICE = "Woodpecker"


class Woodpecker:
    def __init__(self, url: str, token: str, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def lookup(self, owner: str, name: str) -> int:
        response = await request(
            self._http, SERVICE, "GET", f"/api/repos/lookup/{quote(owner, safe='')}/{quote(name, safe='')}"
        )
        if response.status_code == 404:
            raise CIError(f"Woodpecker has no repository {owner}/{name}; map the image to its CI repository.")
        if response.status_code != 200:
            raise CIError(f"Woodpecker answered HTTP {response.status_code} looking up {owner}/{name}.")
        return int(response.json()["id"])

    async def start(self, repo_id: int, branch: str) -> CIRun | None:
        """Start a manual pipeline. None when no workflow runs on manual events (204, Pipeline-Filtered)."""
        response = await request(
            self._http, SERVICE, "POST", f"/api/repos/{repo_id}/pipelines", json={"branch": branch, "variables": {}}
        )
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise CIError(f"Woodpecker refused to start a pipeline on {branch} (HTTP {response.status_code}).")
        return self._run(repo_id, response.json())

    async def pipeline(self, repo_id: int, number: int) -> CIRun:
        response = await request(self._http, SERVICE, "GET", f"/api/repos/{repo_id}/pipelines/{number}")
        if response.status_code != 200:
            raise CIError(f"Woodpecker answered HTTP {response.status_code} for pipeline #{number}.")
        return self._run(repo_id, response.json())

    async def log_tail(self, repo_id: int, number: int, step_id: int, lines: int = 30) -> list[str]:
        response = await request(self._http, SERVICE, "GET", f"/api/repos/{repo_id}/logs/{number}/{step_id}")
        if response.status_code != 200:
            return []
        text = []
        for entry in response.json() or []:
            data = entry.get("data") or ""
            try:
                text.append(base64.b64decode(data).decode("utf-8", "replace").rstrip("\n"))
            except ValueError:
                text.append(str(data))
        return text[-lines:]

    def pipeline_url(self, repo_id: int, number: int) -> str:
        return f"{self.url}/repos/{repo_id}/pipeline/{number}"

    def _run(self, repo_id: int, data: dict[str, Any]) -> CIRun:
        number = int(data["number"])
        status = str(data.get("status", ""))
        steps = [
            CIStep(
                str(child.get("name", "")), str(child.get("state", "")), str(workflow.get("name", "")), child.get("id")
            )
            for workflow in data.get("workflows") or []
            for child in workflow.get("children") or []
        ]
        return CIRun(number, status, self.pipeline_url(repo_id, number), status in FINISHED, steps)


class WoodpeckerBuild:
    """CIBackend: a manual pipeline of one repository on one branch."""

    def __init__(self, client: Woodpecker, repo: str, branch: str) -> None:
        self.client = client
        self.owner, _, self.name = repo.partition("/")
        self.branch = branch
        self.description = f"Woodpecker {repo} on {branch}"
        self._repo_id: int | None = None

    async def prepare(self) -> None:
        self._repo_id = await self.client.lookup(self.owner, self.name)

    async def _id(self) -> int:
        if self._repo_id is None:
            await self.prepare()
        assert self._repo_id is not None
        return self._repo_id

    async def start(self) -> CIRun:
        run = await self.client.start(await self._id(), self.branch)
        if run is None:
            raise CIError(
                "Woodpecker filtered the pipeline out: this repository has no workflow for manual runs; "
                "add `event: manual` to a workflow's `when:`."
            )
        return run

    async def poll(self, run: CIRun) -> CIRun:
        return await self.client.pipeline(await self._id(), run.number)

    async def log_tail(self, run: CIRun, step: CIStep) -> list[str]:
        if step.step_id is None:
            return []
        return await self.client.log_tail(await self._id(), run.number, int(step.step_id))

    async def aclose(self) -> None:
        await self.client.aclose()
