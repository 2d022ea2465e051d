"""The GHCR stand-in speaks GHCR's wire protocol and GitHub's packages API, and its answers parse with
GitHub's own schema (githubkit's models, generated from GitHub's OpenAPI description)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from githubkit_schemas.latest.models import Package, PackageVersion
from pydantic import TypeAdapter

from tests.peers.ghcr import ChallengeAuth, GhcrStandIn, GhcrUser
from tests.peers.registry import ImagePusher, Registry

PAT = "ghcr-pat-s3cret"


@pytest.fixture(scope="module")
def ghcr() -> Iterator[GhcrStandIn]:
    with Registry() as backing, GhcrStandIn(backing, default_per_page=2, max_per_page=2) as stand_in:
        pusher = ImagePusher(stand_in.url, auth=ChallengeAuth("viktorbarzin", PAT))  # type: ignore[arg-type]
        stand_in.pushed = {  # type: ignore[attr-defined]
            "app": pusher.push_image("viktorbarzin/app", "latest"),
            "cli": pusher.push_single("viktorbarzin/tools/cli", "v1"),
            "cli2": pusher.push_single("viktorbarzin/tools/cli", "v2"),
            "web": pusher.push_single("viktorbarzin/web", "1.0"),
        }
        pusher.close()
        yield stand_in


def api(ghcr: GhcrStandIn, token: str = PAT) -> httpx.Client:
    return httpx.Client(base_url=ghcr.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_v2_challenges_then_a_per_repository_token_opens_one_repository(ghcr):
    plain = httpx.get(f"{ghcr.url}/v2/")
    assert plain.status_code == 401
    assert plain.headers["WWW-Authenticate"] == f'Bearer realm="{ghcr.url}/token",service="{ghcr.host}"'
    challenge = httpx.get(f"{ghcr.url}/v2/viktorbarzin/app/tags/list").headers["WWW-Authenticate"]
    assert challenge.endswith(',scope="repository:viktorbarzin/app:pull"')
    token = httpx.get(
        f"{ghcr.url}/token",
        params={"service": ghcr.host, "scope": "repository:viktorbarzin/app:pull"},
        auth=("reader", "ghcr-read-s3cret"),
    ).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{ghcr.url}/v2/viktorbarzin/app/tags/list", headers=bearer).json()["tags"] == ["latest"]
    assert httpx.get(f"{ghcr.url}/v2/viktorbarzin/web/tags/list", headers=bearer).status_code == 401
    assert httpx.get(f"{ghcr.url}/v2/_catalog", headers=bearer).json()["errors"][0]["code"] == "UNSUPPORTED"
    assert httpx.get(f"{ghcr.url}/token", auth=("reader", "wrong")).status_code == 401


def test_packages_are_listed_with_link_pagination_and_parse_as_githubs(ghcr):
    names, url, pages = [], f"{ghcr.api_url}/users/viktorbarzin/packages?package_type=container", 0
    with api(ghcr) as client:
        while url:
            answer = client.get(url)
            assert answer.status_code == 200
            names += [p.name for p in TypeAdapter(list[Package]).validate_python(answer.json())]
            url = answer.links.get("next", {}).get("url")
            pages += 1
        assert client.get("/orgs/viktorbarzin/packages?package_type=container").status_code == 404
        assert client.get("/users/viktorbarzin/packages").status_code == 422
    assert names == ["app", "tools/cli", "web"] and pages == 2


def test_versions_are_what_the_registry_holds_index_children_untagged(ghcr):
    app = ghcr.pushed["app"]
    with api(ghcr) as client:
        versions, url = [], "/users/viktorbarzin/packages/container/app/versions"
        while url:
            answer = client.get(url)
            versions += TypeAdapter(list[PackageVersion]).validate_python(answer.json())
            url = answer.links.get("next", {}).get("url")
        tags = {v.name: v.metadata.container.tags for v in versions}
        assert tags == {app.digest: ["latest"], **{child: [] for child in app.children.values()}}
        nested = client.get("/users/viktorbarzin/packages/container/tools%2Fcli/versions").json()
        assert sorted(tag for v in nested for tag in v["metadata"]["container"]["tags"]) == ["v1", "v2"]
        assert client.get("/users/viktorbarzin/packages/container/tools/cli/versions").status_code == 404


def test_delete_needs_delete_packages_and_removes_the_manifest_from_the_registry(ghcr):
    web = ghcr.pushed["web"]
    version = ghcr.version_id("viktorbarzin/web", web.digest)
    path = f"/users/viktorbarzin/packages/container/web/versions/{version}"
    with api(ghcr, "ghcr-read-s3cret") as reader:
        refused = reader.delete(path)
    assert refused.status_code == 403 and "delete:packages" in refused.json()["message"]
    assert ghcr.registry.repo_dir("viktorbarzin/web").exists()
    with api(ghcr) as client:
        assert client.delete(path).status_code == 204
        assert client.get("/users/viktorbarzin/packages/container/web/versions").json() == []
        assert client.delete(path).status_code == 404
    assert httpx.head(f"{ghcr.registry.url}/v2/viktorbarzin/web/manifests/{web.digest}").status_code == 404


def test_the_api_refuses_what_github_refuses(ghcr):
    assert httpx.get(f"{ghcr.api_url}/users/viktorbarzin/packages?package_type=container").status_code == 401
    with api(ghcr, "nope") as client:
        assert client.get("/users/viktorbarzin/packages?package_type=container").json()["message"] == "Bad credentials"
    with api(ghcr) as client:
        answer = client.get("/users/viktorbarzin/packages", headers={"X-GitHub-Api-Version": "2020-01-01"})
        assert answer.status_code == 400


def test_scopes_gate_the_token_endpoint():
    with (
        Registry() as backing,
        GhcrStandIn(backing, users={"ro": GhcrUser("ro-pat", {"read:packages"})}) as ghcr,
    ):
        pusher = ImagePusher(ghcr.url, auth=ChallengeAuth("ro", "ro-pat"))  # type: ignore[arg-type]
        with pytest.raises(httpx.HTTPStatusError):
            pusher.push_single("viktorbarzin/x", "1")
        pusher.close()
