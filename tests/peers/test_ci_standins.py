"""Self-tests for the CI stand-ins (Woodpecker, GitHub Actions), driven with plain httpx like the bot's client."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from githubkit_schemas.latest.models import WorkflowDispatchResponse

from tests.peers.github_actions import API_VERSIONS, GitHubActionsStandIn
from tests.peers.github_actions_schema import answer_errors
from tests.peers.registry import OCI_INDEX, Registry
from tests.peers.woodpecker import Answer, WoodpeckerStandIn
from tests.peers.woodpecker_protocol import protocol_errors

T = TypeVar("T")

GH_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def manifest_digest(registry: Registry, name: str, tag: str) -> str | None:
    response = httpx.get(f"{registry.url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_INDEX})
    return response.headers["Docker-Content-Digest"] if response.status_code == 200 else None


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


# --- Woodpecker -----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def woodpecker_holds_to_the_protocol(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a Woodpecker stand-in answered in a test fits shared/reference/protocols.md."""
    started: list[WoodpeckerStandIn] = []
    original = WoodpeckerStandIn.__init__

    def init(self: WoodpeckerStandIn, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(WoodpeckerStandIn, "__init__", init)
    yield
    for stand_in in started:
        assert protocol_errors(stand_in) == []


def wp_client(wp: WoodpeckerStandIn, token: str = "wp-token") -> httpx.Client:
    return httpx.Client(base_url=wp.url, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def wait_pipeline(client: httpx.Client, repo_id: int, number: int, states: set[str]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pipeline: dict[str, Any] = client.get(f"/api/repos/{repo_id}/pipelines/{number}").json()
        return pipeline if pipeline["status"] in states else None

    return wait_for(probe, what=f"pipeline {number} in {states}")


def test_woodpecker_lookup() -> None:
    with WoodpeckerStandIn() as wp, wp_client(wp) as client:
        repo_id = wp.add_repo("viktor", "app", repo_id=42)
        found = client.get("/api/repos/lookup/viktor/app")
        assert found.status_code == 200
        assert found.json()["id"] == 42 and found.json()["full_name"] == "viktor/app"
        missing = client.get("/api/repos/lookup/viktor/nope")
        assert missing.status_code == 404 and missing.content == b""
        assert client.get(f"/api/repos/{repo_id}").json()["default_branch"] == "main"
        assert client.get("/api/user").json()["login"] == "registry-bot"
        assert wp.pipeline_url(42, 7) == f"{wp.url}/repos/42/pipeline/7"
        assert httpx.get(wp.pipeline_url(42, 7)).status_code == 200


def test_woodpecker_manual_pipeline_pushes_a_real_image(registry: Registry) -> None:
    with WoodpeckerStandIn(registry_url=registry.url) as wp, wp_client(wp) as client:
        repo_id = wp.add_repo("viktor", "app", image=("viktor/app", "latest"), step_seconds=0.1)
        created = client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main", "variables": {"WHY": "fix"}})
        assert created.status_code == 200
        pipeline = created.json()
        assert pipeline["number"] == 1 and pipeline["status"] == "pending" and pipeline["event"] == "manual"
        assert pipeline["variables"] == {"WHY": "fix"}
        children = pipeline["workflows"][0]["children"]
        assert [(s["name"], s["state"], s["type"]) for s in children] == [
            ("clone", "pending", "clone"),
            ("build-and-push", "pending", "commands"),
        ]
        assert "started" not in children[0]  # Go omitempty

        seen = {wait_pipeline(client, repo_id, 1, {"running"})["status"]}
        done = wait_pipeline(client, repo_id, 1, {"success", "failure"})
        seen.add(done["status"])
        assert seen == {"running", "success"}
        assert done["started"] > 0 and done["finished"] >= done["started"]
        workflow = done["workflows"][0]
        assert workflow["state"] == "success"
        assert all(s["state"] == "success" and s["exit_code"] == 0 for s in workflow["children"])
        assert client.get(f"/api/repos/{repo_id}/pipelines/latest").json()["number"] == 1

        first_digest = manifest_digest(registry, "viktor/app", "latest")
        assert first_digest == wp.pushed[0].digest
        build_step = workflow["children"][1]
        log_text = [
            base64.b64decode(e["data"]).decode()
            for e in client.get(f"/api/repos/{repo_id}/logs/1/{build_step['id']}").json()
        ]
        assert any(first_digest in line for line in log_text)

        # A second build pushes a fresh image: the tag moves to a new digest.
        assert client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"}).json()["number"] == 2
        wait_pipeline(client, repo_id, 2, {"success"})
        assert manifest_digest(registry, "viktor/app", "latest") not in (None, first_digest)

        posted = wp.requests_to("POST", r"/pipelines$")[0]
        assert posted.json == {"branch": "main", "variables": {"WHY": "fix"}}
        assert posted.authorization == "Bearer wp-token"
        assert [p["number"] for p in wp.pipelines(repo_id)] == [1, 2]


def test_woodpecker_filtered_pipeline() -> None:
    with WoodpeckerStandIn() as wp, wp_client(wp) as client:
        repo_id = wp.add_repo("viktor", "docs", manual_workflow=False)
        response = client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main", "variables": {}})
        assert response.status_code == 204 and response.headers["Pipeline-Filtered"] == "true"
        assert wp.pipelines(repo_id) == []
        assert client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "nope"}).status_code == 500


def test_woodpecker_failing_step_has_log_lines() -> None:
    with WoodpeckerStandIn() as wp, wp_client(wp) as client:
        repo_id = wp.add_repo(
            "viktor",
            "app",
            steps=("clone", "build", "push"),
            fail_step="build",
            step_seconds=0.05,
            fail_log="npm ERR! missing script: build\nmake: *** [build] Error 1",
        )
        client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"})
        done = wait_pipeline(client, repo_id, 1, {"success", "failure"})
        assert done["status"] == "failure" and done["workflows"][0]["state"] == "failure"
        clone, build, push = done["workflows"][0]["children"]
        assert (clone["state"], build["state"], build["exit_code"], push["state"]) == (
            "success",
            "failure",
            1,
            "skipped",
        )
        entries = client.get(f"/api/repos/{repo_id}/logs/1/{build['id']}").json()
        assert {"id", "step_id", "time", "line", "data", "type"} <= set(entries[0])
        lines = [base64.b64decode(e["data"]).decode() for e in entries]
        assert "npm ERR! missing script: build" in lines and "make: *** [build] Error 1" in lines
        assert [e["line"] for e in entries] == list(range(len(entries)))
        assert client.get(f"/api/repos/{repo_id}/logs/1/{push['id']}").json() == []
        assert client.get(f"/api/repos/{repo_id}/logs/1/999999").status_code == 404


def test_woodpecker_bad_token() -> None:
    with WoodpeckerStandIn() as wp, wp_client(wp, token="wrong") as client:
        repo_id = wp.add_repo("viktor", "app")
        lookup = client.get("/api/repos/lookup/viktor/app")
        assert lookup.status_code == 401 and lookup.content == b""
        assert client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"}).status_code == 401
        user = client.get("/api/user")
        assert user.status_code == 401 and user.text == "User not authorized"
        assert httpx.get(f"{wp.url}/api/repos/lookup/viktor/app").status_code == 401
        assert httpx.get(f"{wp.url}/api/repos/lookup/viktor/app?access_token=wp-token").status_code == 200
        assert wp.pipelines(repo_id) == []


def test_woodpecker_going_down_mid_pipeline(registry: Registry) -> None:
    with WoodpeckerStandIn(registry_url=registry.url) as wp:
        repo_id = wp.add_repo("viktor", "down", image=("viktor/down", "v1"), step_seconds=0.3)
        with wp_client(wp) as client:
            client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"})
            wait_pipeline(client, repo_id, 1, {"running"})
            wp.go_down()
            with pytest.raises(httpx.ConnectError):
                client.get(f"/api/repos/{repo_id}/pipelines/1")  # even over the kept-alive connection
            wp.come_back()
            assert wait_pipeline(client, repo_id, 1, {"success", "failure"})["status"] == "success"
            assert manifest_digest(registry, "viktor/down", "v1") == wp.pushed[-1].digest

            # An ingress in front of a dead pod answers 502; with freeze the agent makes no progress meanwhile.
            client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"})
            wait_pipeline(client, repo_id, 2, {"running"})
            wp.go_down("502", freeze=True)
            response = client.get(f"/api/repos/{repo_id}/pipelines/2")
            assert response.status_code == 502 and "Bad Gateway" in response.text
            time.sleep(1.0)
            assert wp.pipelines(repo_id)[1]["status"] == "running"
            wp.come_back()
            wp.finish_unfinished("error")  # the server lost its agent: the pipeline ends in error
            assert client.get(f"/api/repos/{repo_id}/pipelines/2").json()["status"] == "error"


def test_woodpecker_cancel_and_faults() -> None:
    with WoodpeckerStandIn() as wp, wp_client(wp) as client:
        repo_id = wp.add_repo("viktor", "app", steps=("clone", "build", "push"), step_seconds=1.0)
        client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"})
        wait_pipeline(client, repo_id, 1, {"running"})
        assert client.post(f"/api/repos/{repo_id}/pipelines/1/cancel").status_code == 204
        killed = client.get(f"/api/repos/{repo_id}/pipelines/1").json()
        assert killed["status"] == "killed"
        assert [s["state"] for s in killed["workflows"][0]["children"]] == ["killed", "canceled", "canceled"]
        assert client.post(f"/api/repos/{repo_id}/pipelines/1/cancel").status_code == 400

        wp.fault("GET", r"/pipelines/\d+$", 500, times=2)
        assert [client.get(f"/api/repos/{repo_id}/pipelines/1").status_code for _ in range(3)] == [500, 500, 200]
        assert client.get(f"/api/repos/{repo_id}/pipelines/9").status_code == 404


def test_woodpecker_injected_refusals_look_like_woodpeckers() -> None:
    with WoodpeckerStandIn() as wp, wp_client(wp) as client:
        repo_id = wp.add_repo("viktor", "app")
        for status in (401, 404):
            wp.fault("GET", r"/lookup/", status)
            answer = client.get("/api/repos/lookup/viktor/app")
            assert (answer.status_code, answer.content) == (status, b"")  # session middleware: a bare status
        assert client.post(f"/api/repos/{repo_id}/pipelines", json={"branch": "main"}).status_code == 200


def test_the_woodpecker_protocol_check_catches_what_woodpecker_would_not_answer() -> None:
    from tests.peers.woodpecker import Answer
    from tests.peers.woodpecker_protocol import answer_errors

    pipeline = {"id": 1, "number": 1, "status": "success", "branch": "main", "workflows": []}
    good = Answer("GET", "/api/repos/1/pipelines/1", 200, {}, json.dumps(pipeline).encode())
    assert answer_errors(good) == []
    for method, path, status, headers, body in [
        ("GET", "/api/repos/1/pipelines/1", 200, {}, json.dumps({**pipeline, "status": "done"})),
        ("GET", "/api/repos/1/pipelines/1", 200, {}, json.dumps({**pipeline, "workflows": None})),
        ("GET", "/api/repos/1/pipelines/1", 200, {}, json.dumps({**pipeline, "workflows": [{"id": 1, "name": "w",
            "state": "success", "children": [{"id": 2, "name": "s", "state": "ok", "exit_code": 0}]}]})),
        ("POST", "/api/repos/1/pipelines", 204, {}, ""),
        ("POST", "/api/repos/1/pipelines", 201, {}, json.dumps(pipeline)),
        ("GET", "/api/repos/lookup/viktor/app", 401, {}, "Unauthorized"),
        ("GET", "/api/repos/lookup/viktor/app", 200, {}, json.dumps({"id": "42"})),
        ("GET", "/api/repos/1/logs/1/2", 200, {}, json.dumps([{"id": 1, "step_id": 2, "time": 0, "line": 0,
            "data": "not base64!", "type": 0}])),
    ]:  # fmt: skip
        assert answer_errors(Answer(method, path, status, headers, body.encode())), (method, path, status, body)


# --- GitHub Actions -------------------------------------------------------------------------------------


def gh_client(gh: GitHubActionsStandIn, auth: str = "Bearer gh-token") -> httpx.Client:
    return httpx.Client(base_url=gh.url, headers={**GH_HEADERS, "Authorization": auth}, timeout=5)


def wait_run(client: httpx.Client, repo: str, run_id: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/repos/{repo}/actions/runs/{run_id}").json()
        return run if run["status"] == "completed" else None

    return wait_for(probe, what=f"run {run_id} completed")


def test_github_dispatch_runs_to_success_and_pushes_an_image(registry: Registry) -> None:
    with GitHubActionsStandIn(registry_url=registry.url) as gh, gh_client(gh) as client:
        workflow_id = gh.add_workflow("viktor", "app", "build.yml", image=("viktor/gh-app", "latest"), appear_delay=0.2)
        dispatched = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "inputs": {"why": "x"}}
        )
        assert dispatched.status_code == 204 and dispatched.content == b""
        assert dispatched.headers.get("X-GitHub-Api-Version-Selected") is None  # no body, no JSON headers

        params = {"event": "workflow_dispatch", "branch": "main"}
        listing = client.get("/repos/viktor/app/actions/workflows/build.yml/runs", params=params).json()
        assert listing == {"total_count": 0, "workflow_runs": []}  # GitHub lists a dispatched run after a lag
        runs = wait_for(
            lambda: client.get(f"/repos/viktor/app/actions/workflows/{workflow_id}/runs", params=params).json()[
                "workflow_runs"
            ],
            what="the run to be listed",
        )
        run = runs[0]
        assert run["status"] in ("queued", "in_progress") and run["conclusion"] is None
        assert run["html_url"] == f"{gh.url}/viktor/app/actions/runs/{run['id']}"
        assert httpx.get(run["html_url"]).status_code == 200

        done = wait_run(client, "viktor/app", run["id"])
        assert (done["status"], done["conclusion"], done["head_branch"]) == ("completed", "success", "main")
        jobs = client.get(f"/repos/viktor/app/actions/runs/{run['id']}/jobs").json()
        assert jobs["total_count"] == 1
        job = jobs["jobs"][0]
        assert (job["status"], job["conclusion"]) == ("completed", "success")
        assert [(s["number"], s["name"], s["conclusion"]) for s in job["steps"]] == [
            (1, "Set up job", "success"),
            (2, "Checkout", "success"),
            (3, "Build and push", "success"),
            (4, "Complete job", "success"),
        ]
        assert manifest_digest(registry, "viktor/gh-app", "latest") == gh.pushed[0].digest

        details = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "return_run_details": True}
        )
        assert details.status_code == 200
        body = details.json()
        assert set(body) == {"workflow_run_id", "run_url", "html_url"}
        assert client.get(body["run_url"]).json()["id"] == body["workflow_run_id"]
        dispatch = gh.requests_to("POST", "/dispatches$")[0]
        assert dispatch.json == {"ref": "main", "inputs": {"why": "x"}}
        assert dispatch.headers["X-GitHub-Api-Version"] == "2022-11-28"


def test_github_failure_conclusion_and_job_logs_redirect() -> None:
    with GitHubActionsStandIn() as gh, gh_client(gh, auth="token gh-token") as client:
        gh.add_workflow("viktor", "app", fail_step="Build and push", seconds=0.3, fail_log="ERROR: no space left")
        details = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "return_run_details": True}
        ).json()
        done = wait_run(client, "viktor/app", details["workflow_run_id"])
        assert done["conclusion"] == "failure"
        job = client.get(f"/repos/viktor/app/actions/runs/{done['id']}/jobs").json()["jobs"][0]
        assert job["conclusion"] == "failure"
        assert {s["name"]: s["conclusion"] for s in job["steps"]} == {
            "Set up job": "success",
            "Checkout": "success",
            "Build and push": "failure",
            "Complete job": "success",
        }

        redirect = client.get(f"/repos/viktor/app/actions/jobs/{job['id']}/logs")
        assert redirect.status_code == 302
        location = redirect.headers["Location"]
        logs = httpx.get(location)  # a signed URL: no Authorization
        assert logs.status_code == 200 and logs.headers["Content-Type"].startswith("text/plain")
        assert "ERROR: no space left" in logs.text
        assert "##[error]Process completed with exit code 1." in logs.text
        assert httpx.get(location.replace("sig=", "sig=0")).status_code == 403
        followed = client.get(f"/repos/viktor/app/actions/jobs/{job['id']}/logs", follow_redirects=True)
        assert followed.text == logs.text

        assert client.post(f"/repos/viktor/app/actions/runs/{done['id']}/cancel").status_code == 409


def test_github_errors() -> None:
    with GitHubActionsStandIn() as gh, gh_client(gh) as client:
        gh.add_workflow("viktor", "app", inputs=["why"])
        unknown = client.post("/repos/viktor/app/actions/workflows/nope.yml/dispatches", json={"ref": "main"})
        assert unknown.status_code == 404
        assert unknown.json()["message"] == "Not Found" and unknown.json()["documentation_url"].startswith("https://")
        bad_ref = client.post("/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "nope"})
        assert bad_ref.status_code == 422 and bad_ref.json()["message"] == "No ref found for: nope"
        extra = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "inputs": {"x": "1"}}
        )
        assert extra.status_code == 422 and "Unexpected inputs" in extra.json()["message"]
        assert client.get("/repos/viktor/app/actions/runs/1").status_code == 404
        assert client.get("/repos/viktor/other/actions/workflows").status_code == 404

        with gh_client(gh, auth="Bearer wrong") as bad:
            response = bad.post("/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main"})
            assert response.status_code == 401 and response.json()["message"] == "Bad credentials"
        anonymous = httpx.get(f"{gh.url}/repos/viktor/app/actions/workflows", headers=GH_HEADERS)
        assert anonymous.status_code == 404  # a private repository is invisible without a token
        old_version = client.get("/repos/viktor/app/actions/workflows", headers={"X-GitHub-Api-Version": "2020-01-01"})
        assert old_version.status_code == 400
        assert gh.runs() == []


def test_github_cancel_and_outage() -> None:
    with GitHubActionsStandIn() as gh, gh_client(gh) as client:
        gh.add_workflow("viktor", "app", seconds=3.0)
        details = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "return_run_details": True}
        ).json()
        run_id = details["workflow_run_id"]
        gh.go_down()
        with pytest.raises(httpx.ConnectError):
            client.get(f"/repos/viktor/app/actions/runs/{run_id}")
        gh.come_back()
        assert client.post(f"/repos/viktor/app/actions/runs/{run_id}/cancel").status_code == 202
        cancelled = client.get(f"/repos/viktor/app/actions/runs/{run_id}").json()
        assert (cancelled["status"], cancelled["conclusion"]) == ("completed", "cancelled")
        gh.fault("GET", r"/actions/runs/\d+$", 503)
        failed = client.get(f"/repos/viktor/app/actions/runs/{run_id}")
        assert failed.status_code == 503 and failed.json()["status"] == "503"
        assert client.get(f"/repos/viktor/app/actions/runs/{run_id}").status_code == 200


def test_github_answers_parse_with_a_githubkit_client(registry: Registry) -> None:
    """Every route, asked by githubkit itself (GitHub's OpenAPI description): each answer parses as GitHub's."""
    from githubkit import GitHub
    from githubkit.versions import LATEST_VERSION

    with GitHubActionsStandIn(registry_url=registry.url) as gh:
        gh.add_workflow("viktor", "app", image=("viktor/kit", "v1"), seconds=0.3)
        gh.add_workflow("viktor", "app", "slow.yml", seconds=5.0)
        github = GitHub("gh-token", base_url=gh.url + "/", follow_redirects=False, http_cache=False, auto_retry=False)
        actions = github.rest.actions
        assert [w.path for w in actions.list_repo_workflows("viktor", "app").parsed_data.workflows] == [
            ".github/workflows/build.yml",
            ".github/workflows/slow.yml",
        ]
        assert actions.get_workflow("viktor", "app", "build.yml").parsed_data.state == "active"
        assert actions.create_workflow_dispatch("viktor", "app", "build.yml", ref="main").status_code == 204
        run_id = wait_for(
            lambda: actions.list_workflow_runs("viktor", "app", "build.yml").parsed_data.workflow_runs,
            what="the run to be listed",
        )[0].id
        run = wait_for(
            lambda: (r := actions.get_workflow_run("viktor", "app", run_id).parsed_data).status == "completed" and r,
            what="the run to complete",
        )
        assert (run.conclusion, run.head_branch, run.repository.full_name) == ("success", "main", "viktor/app")
        assert run.actor and run.actor.login == "registry-bot"
        (job,) = actions.list_jobs_for_workflow_run("viktor", "app", run_id).parsed_data.jobs
        assert [step.conclusion for step in job.steps or []] == ["success"] * 4
        assert actions.get_job_for_workflow_run("viktor", "app", job.id).parsed_data.runner_name
        logs = actions.download_job_logs_for_workflow_run("viktor", "app", job.id)
        assert (
            logs.status_code == 302 and "pushing manifest for viktor/kit:v1" in httpx.get(logs.headers["Location"]).text
        )
        listed = actions.list_workflow_runs_for_repo("viktor", "app", status="completed").parsed_data
        assert [r.id for r in listed.workflow_runs] == [run_id]

        slow = actions.get_workflow("viktor", "app", "slow.yml").parsed_data.id
        # return_run_details is not in the request body githubkit's description knows: sent as a plain request.
        details = github.request(
            "POST",
            f"/repos/viktor/app/actions/workflows/{slow}/dispatches",
            json={"ref": "main", "return_run_details": True},
            headers={"X-GitHub-Api-Version": LATEST_VERSION},
            response_model=WorkflowDispatchResponse,
        ).parsed_data
        assert actions.cancel_workflow_run("viktor", "app", details.workflow_run_id).status_code == 202
        assert github.rest.users.get_authenticated().parsed_data.login == "registry-bot"
        assert {r.headers["X-GitHub-Api-Version"] for r in gh.requests if r.path.startswith("/repos/")} == {
            LATEST_VERSION
        }


def test_github_api_versions_are_githubs() -> None:
    with GitHubActionsStandIn() as gh, gh_client(gh) as client:
        gh.add_workflow("viktor", "app")
        for version in API_VERSIONS:  # the versions GitHub documents as supported, the same as the GHCR stand-in's
            answer = client.get("/repos/viktor/app/actions/workflows", headers={"X-GitHub-Api-Version": version})
            assert answer.status_code == 200 and answer.headers["X-GitHub-Api-Version-Selected"] == version
        refused = client.get("/repos/viktor/app/actions/workflows", headers={"X-GitHub-Api-Version": "2021-01-01"})
        assert refused.status_code == 400
        assert refused.json()["message"] == "API version 2021-01-01 is not supported."
    with GitHubActionsStandIn(api_versions=("2022-11-28",)) as ghes, gh_client(ghes) as client:
        ghes.add_workflow("viktor", "app")
        newer = client.get("/repos/viktor/app/actions/workflows", headers={"X-GitHub-Api-Version": "2026-03-10"})
        assert newer.status_code == 400 and newer.json()["status"] == "400"


def test_a_github_stand_in_answering_off_schema_fails_its_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stand-in holds its own answers to GitHub's schema (explicit fault bodies aside) and fails at exit."""
    render = GitHubActionsStandIn._job_json

    def without_labels(self: GitHubActionsStandIn, run: Any) -> dict[str, Any]:
        return {k: v for k, v in render(self, run).items() if k != "labels"}

    monkeypatch.setattr(GitHubActionsStandIn, "_job_json", without_labels)
    off_schema = r"off GitHub's schema: GET /repos/viktor/app/actions/runs/\d+/jobs 200"
    with pytest.raises(AssertionError, match=off_schema), GitHubActionsStandIn() as gh, gh_client(gh) as client:
        gh.add_workflow("viktor", "app")
        run_id = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "return_run_details": True}
        ).json()["workflow_run_id"]
        assert client.get(f"/repos/viktor/app/actions/runs/{run_id}/jobs").status_code == 200
    with GitHubActionsStandIn() as gh, gh_client(gh) as client:  # a fault's own body is the test's business
        gh.fault("GET", "/workflows$", 200, body=b"[]", headers={"Content-Type": "application/json"})
        gh.add_workflow("viktor", "app")
        assert client.get("/repos/viktor/app/actions/workflows").json() == []
    assert gh.schema_errors == []


def test_the_github_schema_check_catches_what_github_would_not_answer() -> None:
    with GitHubActionsStandIn() as gh, gh_client(gh) as client:
        gh.add_workflow("viktor", "app", seconds=0.2)
        run_id = client.post(
            "/repos/viktor/app/actions/workflows/build.yml/dispatches", json={"ref": "main", "return_run_details": True}
        ).json()["workflow_run_id"]
        run = wait_run(client, "viktor/app", run_id)
        job = client.get(f"/repos/viktor/app/actions/runs/{run_id}/jobs").json()["jobs"][0]
    path = f"/repos/viktor/app/actions/runs/{run_id}"
    assert answer_errors(Answer("GET", path, 200, {}, json.dumps(run).encode())) == []
    partial_actor = {**run, "actor": {"login": "registry-bot", "id": 1, "type": "User"}}
    for method, where, status, body in [
        ("GET", path, 200, {k: v for k, v in run.items() if k != "head_sha"}),
        ("GET", path, 200, partial_actor),
        ("GET", path, 200, {**run, "created_at": "yesterday"}),
        ("GET", f"{path}/jobs", 200, {"total_count": 1, "jobs": [{**job, "status": "done"}]}),
        ("GET", f"{path}/jobs", 200, {"total_count": 1, "jobs": [{k: v for k, v in job.items() if k != "labels"}]}),
        ("POST", "/repos/viktor/app/actions/workflows/build.yml/dispatches", 200, {"workflow_run_id": run_id}),
        ("POST", "/repos/viktor/app/actions/workflows/build.yml/dispatches", 201, {}),
        ("GET", path, 404, ["Not Found"]),
    ]:
        assert answer_errors(
            Answer(method, where, status, {"Content-Type": "application/json"}, json.dumps(body).encode())
        )
