"""The GitHub Actions backend (bot/integrations/github.py, on githubkit) against the GitHub Actions stand-in:
dispatch with and without run details, runs and jobs as CIRun/CIStep, the job log's signed URL (never with the
token, only on GitHub's hosts, a bounded tail), and every refusal, outage and off-schema answer as one line."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from githubkit.versions import LATEST_VERSION

from bot.integrations.ci import LOG_BYTES, CIError, CIRun
from bot.integrations.github import GitHubActions, GitHubBuild
from tests.peers.github_actions import GitHubActionsStandIn
from tests.peers.registry import Registry

TOKEN = "ghp_s3cret-token-never-shown"


@pytest.fixture
def gh() -> Iterator[GitHubActionsStandIn]:
    """A stand-in that holds its every answer to GitHub's schema (it fails the test at exit otherwise)."""
    with GitHubActionsStandIn(token=TOKEN) as stand_in:
        yield stand_in


async def follow(build: GitHubBuild, run: CIRun, seconds: float = 15.0) -> CIRun:
    deadline = time.monotonic() + seconds
    while not run.finished:
        assert time.monotonic() < deadline, "the run did not finish"
        await asyncio.sleep(0.05)
        run = await build.poll(run)
    return run


def one_line(error: CIError) -> str:
    text = str(error)
    assert "\n" not in text and TOKEN not in text and "Traceback" not in text, text
    return text


async def test_a_dispatch_returns_its_run_and_the_run_maps_onto_ci_steps(gh: GitHubActionsStandIn) -> None:
    with Registry() as registry:
        gh.registry_url = registry.url
        gh.add_workflow("viktor", "app", image=("viktor/app", "latest"), seconds=0.4, job_name="image")
        build = GitHubBuild(GitHubActions(gh.url, TOKEN), "viktor/app", "build.yml", "main")
        try:
            run = await build.start()
            assert not run.finished and run.status in ("pending", "running")
            done = await follow(build, run)
        finally:
            await build.aclose()
    (listed,) = gh.runs()
    assert (done.number, done.status, done.url) == (1, "success", listed["html_url"])
    assert [(s.name, s.state, s.workflow) for s in done.steps] == [
        ("Set up job", "success", "image"),
        ("Checkout", "success", "image"),
        ("Build and push", "success", "image"),
        ("Complete job", "success", "image"),
    ]
    (dispatch,) = gh.requests_to("POST", "/dispatches$")
    assert dispatch.json == {"ref": "main", "inputs": {}, "return_run_details": True}
    assert {r.headers["X-GitHub-Api-Version"] for r in gh.requests} == {LATEST_VERSION}
    assert {r.authorization for r in gh.requests} == {f"token {TOKEN}"}
    assert gh.requests_to("GET", r"/runs$") == []  # the run came with the dispatch: no listing
    (job_id,) = {s.step_id for s in done.steps}  # a step's id is its job's, whose log log_tail reads
    job = httpx.get(f"{gh.url}/repos/viktor/app/actions/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert job.json()["run_id"] == listed["id"]


async def test_an_older_ghes_is_asked_again_without_run_details_and_the_run_found_by_listing() -> None:
    with GitHubActionsStandIn(token=TOKEN, run_details_supported=False) as ghes:
        ghes.add_workflow("viktor", "app", seconds=0.3, appear_delay=1.2)
        client = GitHubActions(ghes.url, TOKEN)
        try:
            run_id = await client.dispatch("viktor/app", "build.yml", "main")
        finally:
            await client.aclose()
    assert run_id == ghes.runs()[0]["id"]
    first, second = ghes.requests_to("POST", "/dispatches$")
    assert "return_run_details" in first.json and "return_run_details" not in second.json
    listings = ghes.requests_to("GET", "/workflows/build.yml/runs$")
    assert len(listings) >= 2  # the run shows in listings a moment after the dispatch
    assert listings[0].query["event"] == ["workflow_dispatch"] and listings[0].query["branch"] == ["main"]
    assert listings[0].query["created"][0].startswith(">=")


async def test_a_failing_jobs_log_is_read_from_its_signed_url_without_the_token(gh: GitHubActionsStandIn) -> None:
    noise = "\n".join(f"step output line {n:06d} " + "x" * 80 for n in range(4000))  # ~400 kB > LOG_BYTES
    gh.add_workflow("viktor", "app", fail_step="Build and push", seconds=0.3, fail_log=f"{noise}\nERROR: disk full")
    build = GitHubBuild(GitHubActions(gh.url, TOKEN), "viktor/app", "build.yml", "main")
    try:
        done = await follow(build, await build.start())
        assert (done.status, done.finished) == ("failure", True)
        failing = next(s for s in done.steps if s.state == "failure")
        assert failing.name == "Build and push"
        lines = await build.log_tail(done, failing)
    finally:
        await build.aclose()
    assert len(lines) == 30 and lines[0].startswith("20")  # whole lines: the cut one at the tail's start dropped
    assert any(line.endswith("ERROR: disk full") for line in lines)
    assert any(line.endswith("##[error]Process completed with exit code 1.") for line in lines)
    assert len(noise.encode()) > LOG_BYTES
    (download,) = gh.requests_to("GET", "^/_blob/job-logs/")
    assert download.authorization is None  # the signed URL is fetched without the token
    (redirect,) = gh.requests_to("GET", r"/jobs/\d+/logs$")
    assert redirect.authorization == f"token {TOKEN}"


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"stolen")

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_log_redirect_off_githubs_hosts_is_not_followed(gh: GitHubActionsStandIn) -> None:
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recorder.seen = []
    try:
        gh.add_workflow("viktor", "app", fail_step="Checkout", seconds=0.2)
        build = GitHubBuild(GitHubActions(gh.url, TOKEN), "viktor/app", "build.yml", "main")
        try:
            done = await follow(build, await build.start())
            failing = next(s for s in done.steps if s.state == "failure")
            elsewhere = f"http://localhost:{server.server_port}/log.txt?sig=1"  # the same machine by another name
            gh.fault("GET", r"/logs$", 302, body=b"", headers={"Location": elsewhere})
            assert await build.log_tail(done, failing) == []
            gh.fault("GET", r"/logs$", 410, body=json.dumps({"message": "Gone", "status": "410"}).encode())
            assert await build.log_tail(done, failing) == []  # logs past retention: nothing to show
            served = "first\nsecond\n"  # a GitHub that serves the log itself rather than redirecting
            gh.fault("GET", r"/logs$", 200, body=served, headers={"Content-Type": "text/plain"})
            assert await build.log_tail(done, failing) == ["first", "second"]
        finally:
            await build.aclose()
    finally:
        server.shutdown()
        server.server_close()
    assert Recorder.seen == []


async def test_refusals_are_one_line_naming_what_to_do(gh: GitHubActionsStandIn) -> None:
    gh.add_workflow("viktor", "app", inputs=[])
    client = GitHubActions(gh.url, TOKEN)
    try:
        with pytest.raises(CIError) as missing:
            await client.dispatch("viktor/app", "nope.yml", "main")
        assert one_line(missing.value) == "GitHub has no workflow nope.yml in viktor/app (or the token cannot see it)."
        with pytest.raises(CIError) as bad_ref:
            await client.dispatch("viktor/app", "build.yml", "nope")
        assert one_line(bad_ref.value) == "GitHub refused to dispatch build.yml on nope: No ref found for: nope."
        with pytest.raises(CIError) as inputs:
            await client.dispatch("viktor/app", "build.yml", "main", {"why": "rebuild"})
        assert 'Unexpected inputs provided: ["why"]' in one_line(inputs.value)
        with pytest.raises(CIError) as no_run:
            await client.run("viktor/app", 12345)
        assert one_line(no_run.value) == "GitHub has no run 12345 in viktor/app (or the token cannot see it)."

        message = "Resource not accessible by personal access token"
        gh.fault("POST", "/dispatches$", 403, body=json.dumps({"message": message, "status": "403"}).encode())
        with pytest.raises(CIError) as forbidden:
            await client.dispatch("viktor/app", "build.yml", "main")
        text = one_line(forbidden.value)
        assert "HTTP 403" in text and "`actions: write`" in text and "`repo` and `workflow` scopes" in text

        gh.fault("GET", r"/runs/\d+$", 503)
        with pytest.raises(CIError) as unavailable:
            await client.run("viktor/app", 1)
        assert "failed with HTTP 503 while reading run 1 of viktor/app; try again later" in one_line(unavailable.value)

        secondary = json.dumps({"message": "You have exceeded a secondary rate limit.", "status": "403"}).encode()
        gh.fault("POST", "/dispatches$", 403, body=secondary, headers={"Retry-After": "60"})
        with pytest.raises(CIError) as slowed:
            await client.dispatch("viktor/app", "build.yml", "main")
        assert "rate limit is spent (HTTP 403); it resets in 60 s" in one_line(slowed.value)
        gh.exhaust_rate_limit()
        with pytest.raises(CIError) as spent:
            await client.run("viktor/app", 1)
        assert "rate limit is spent" in one_line(spent.value)
        moved = {"message": "Moved Permanently", "url": f"{gh.url}/repositories/1/actions/runs/1", "status": "301"}
        gh.fault("GET", r"/runs/\d+$", 301, body=json.dumps(moved).encode(), headers={"Location": moved["url"]})
        with pytest.raises(CIError) as renamed:
            await client.run("viktor/app", 1)
        assert "answered HTTP 301 (moved)" in one_line(renamed.value) and "`repo` setting" in str(renamed.value)
        with pytest.raises(CIError) as not_owner_name:
            await client.run("app", 1)
        assert "is not owner/name" in one_line(not_owner_name.value)
    finally:
        await client.aclose()
    assert gh.runs() == []

    wrong = GitHubActions(gh.url, "ghp_wrong-token")
    try:
        with pytest.raises(CIError) as refused:
            await wrong.dispatch("viktor/app", "build.yml", "main")
    finally:
        await wrong.aclose()
    text = one_line(refused.value)
    assert "refused the bot's token (HTTP 401)" in text and "ghp_wrong-token" not in text


async def test_an_enterprise_server_without_githubkits_api_version_is_asked_in_2022_11_28() -> None:
    """A GitHub Enterprise Server that knows neither 2026-03-10 nor return_run_details: the whole build works."""
    with GitHubActionsStandIn(token=TOKEN, api_versions=("2022-11-28",), run_details_supported=False) as ghes:
        ghes.add_workflow("viktor", "app", fail_step="Checkout", seconds=0.3, appear_delay=0.3)
        build = GitHubBuild(GitHubActions(ghes.url, TOKEN), "viktor/app", "build.yml", "main")
        try:
            done = await follow(build, await build.start())
            failing = next(s for s in done.steps if s.state == "failure")
            assert await build.log_tail(done, failing)
        finally:
            await build.aclose()
    assert done.status == "failure"
    versions = [r.headers.get("X-GitHub-Api-Version") for r in ghes.requests if r.path.startswith("/repos/")]
    assert versions[0] == LATEST_VERSION and set(versions[1:]) == {"2022-11-28"}  # asked once, then remembered
    assert [("return_run_details" in r.json) for r in ghes.requests_to("POST", "/dispatches$")] == [True, True, False]


async def test_a_github_refusing_every_api_version_the_bot_speaks_is_one_line() -> None:
    with GitHubActionsStandIn(token=TOKEN, api_versions=("2099-01-01",)) as future:
        future.add_workflow("viktor", "app")
        client = GitHubActions(future.url, TOKEN)
        try:
            with pytest.raises(CIError) as refused:
                await client.dispatch("viktor/app", "build.yml", "main")
            with pytest.raises(CIError) as reading:
                await client.run("viktor/app", 1)
        finally:
            await client.aclose()
    for error in (refused.value, reading.value):
        assert "supports neither REST API version the bot speaks (HTTP 400): API version" in one_line(error)
    assert future.runs() == []


async def test_an_answer_github_would_not_give_is_one_line_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with GitHubActionsStandIn(token=TOKEN) as gh:  # faults with their own bodies: off GitHub's schema on purpose
        gh.add_workflow("viktor", "app", seconds=0.2)
        await _off_schema_answers(gh, caplog)


async def _off_schema_answers(gh: GitHubActionsStandIn, caplog: pytest.LogCaptureFixture) -> None:
    client = GitHubActions(gh.url, TOKEN)
    try:
        run_id = await client.dispatch("viktor/app", "build.yml", "main")
        run = gh.runs()[0]
        partial = {k: v for k, v in run.items() if k != "head_sha"}
        partial["note"] = f"echoed {TOKEN}"
        gh.fault("GET", r"/runs/\d+$", 200, body=json.dumps(partial), headers={"Content-Type": "application/json"})
        with caplog.at_level(logging.WARNING), pytest.raises(CIError) as off_schema:
            await client.run("viktor/app", run_id)
        assert "answered reading run" in one_line(off_schema.value)
        assert "not GitHub's schema (HTTP 200)" in str(off_schema.value)
        assert "head_sha: Field required" in caplog.text and TOKEN not in caplog.text

        page = "<html><body>Sign in to continue</body></html>"  # a login proxy in front of the API
        gh.fault("GET", r"/runs/\d+$", 200, body=page, headers={"Content-Type": "text/html"})
        with pytest.raises(CIError) as html:
            await client.run("viktor/app", run_id)
        assert "not GitHub's schema" in one_line(html.value)

        details = json.dumps({"workflow_run_id": "soon"})
        gh.fault("POST", "/dispatches$", 200, body=details, headers={"Content-Type": "application/json"})
        with pytest.raises(CIError) as dispatch:
            await client.dispatch("viktor/app", "build.yml", "main")
        assert "answered dispatching build.yml in viktor/app with something that is not GitHub's schema" in one_line(
            dispatch.value
        )
    finally:
        await client.aclose()


async def test_an_outage_and_a_silent_server_are_one_line(gh: GitHubActionsStandIn) -> None:
    gh.add_workflow("viktor", "app")
    client = GitHubActions(gh.url, TOKEN)
    gh.go_down()
    try:
        with pytest.raises(CIError) as down:
            await client.run("viktor/app", 1)
    finally:
        gh.come_back()
        await client.aclose()
    assert "is unreachable while reading run 1 of viktor/app (ConnectError)" in one_line(down.value)

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never answers
    try:
        stuck = GitHubActions(f"http://127.0.0.1:{silent.getsockname()[1]}", TOKEN, timeout=0.5)
        try:
            with pytest.raises(CIError) as timeout:
                await stuck.dispatch("viktor/app", "build.yml", "main")
        finally:
            await stuck.aclose()
    finally:
        silent.close()
    assert one_line(timeout.value).endswith("did not answer in time while dispatching build.yml in viktor/app.")
