"""The registry client against Forgejo's auth (token flow, re-login) and a registry that misbehaves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from bot.config import Secret, Settings
from bot.refs import parse_reference
from bot.registry.client import RegistryClient
from bot.registry.integrity import IntegrityChecker
from tests.conftest import run_cli
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.registry import ImagePusher, Registry

PULL = {"REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "pull-token-s3cret"}


@pytest.fixture
def forgejo(registry: Registry) -> Iterator[ForgejoStandIn]:
    with ForgejoStandIn(registry) as stand_in:
        yield stand_in


def settings_for(forgejo: ForgejoStandIn, **extra: object) -> Settings:
    return Settings(
        registry_url=forgejo.url,
        registry_username="cluster-puller",
        registry_password=Secret("pull-token-s3cret"),
        **extra,  # type: ignore[arg-type]
    )


async def check(settings: Settings, ref: str):
    async with RegistryClient(settings, settings.registry_password.reveal()) as client:
        return await IntegrityChecker(client).check(parse_reference(ref, settings.all_registry_hosts))


def test_the_bearer_token_is_fetched_once_and_reused(forgejo, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    assert result.status == "intact"
    assert forgejo.tokens_issued == 1
    schemes = {scheme for method, path, scheme in forgejo.requests if path.startswith("/v2/") and path != "/v2/token"}
    assert schemes <= {"", "Bearer"}  # the first request is anonymous, then the token


def test_an_expired_token_means_a_new_login_not_a_failure(forgejo, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")

    async def twice() -> tuple[str, str]:
        settings = settings_for(forgejo)
        async with RegistryClient(settings, "pull-token-s3cret") as client:
            checker = IntegrityChecker(client)
            first = await checker.check(parse_reference(image.reference))
            forgejo.revoke_tokens()
            second = await IntegrityChecker(client).check(parse_reference(image.reference))
            return first.status, second.status

    assert asyncio.run(twice()) == ("intact", "intact")
    assert forgejo.tokens_issued == 2


def test_a_refused_token_login_is_exit_2_and_says_authentication_failed(forgejo):
    run = run_cli(
        "check",
        "viktor/app:latest",
        "--json",
        env={"REGISTRY_URL": forgejo.url, "REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "nope-nope"},
    )
    assert run.code == 2
    assert "Authentication failed" in run.json()["error"]
    assert "nope-nope" not in run.stdout + run.stderr


def test_no_credentials_against_a_login_only_registry_is_exit_2(forgejo):
    run = run_cli("check", "viktor/app:latest", "--json", env={"REGISTRY_URL": forgejo.url})
    assert run.code == 2
    assert "Authentication failed" in run.json()["error"]


def test_a_manifest_that_is_not_json_is_invalid(forgejo, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    forgejo.tamper("GET", rf"/manifests/{image.children['linux/arm64']}$", body=b"<html>oops</html>")
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    assert {(p.kind, p.platform, p.reason) for p in result.problems} == {
        ("manifest", "linux/arm64", "invalid_manifest"),
        ("manifest", "linux/arm64", "digest_mismatch"),  # the bytes no longer hash to the descriptor
        ("manifest", "linux/arm64", "size_mismatch"),
    }


def test_a_manifest_of_an_unknown_media_type_is_invalid(forgejo, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/x-something"}).encode()
    forgejo.tamper("GET", r"/manifests/v1$", body=body)
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    invalid = [p for p in result.problems if p.reason == "invalid_manifest"]
    assert len(invalid) == 1
    assert "unknown media type" in invalid[0].detail


def test_a_header_digest_that_disagrees_with_the_bytes_is_a_digest_mismatch(forgejo, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    forgejo.tamper("GET", r"/manifests/v1$", headers={"Docker-Content-Digest": "sha256:" + "0" * 64})
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    assert [(p.kind, p.reason) for p in result.problems] == [("manifest", "digest_mismatch")]


def test_an_unexpected_status_on_a_blob_is_a_problem(forgejo, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    layer = image.layers["linux/amd64"][0]
    forgejo.tamper("HEAD", rf"/blobs/{layer}$", status=410)
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    assert [(p.kind, p.reason, p.http_status) for p in result.problems] == [("layer", "unexpected_status", 410)]


def test_a_blob_whose_length_disagrees_is_a_size_mismatch(forgejo, pusher, repo_name):
    # Layers are asked for with HEAD (configs are read: tests/test_deep.py covers their sizes).
    image = pusher.push_single(repo_name, "v1")
    layer = image.layers["linux/amd64"][0]
    forgejo.tamper("HEAD", rf"/blobs/{layer}$", headers={"Content-Length": "1"})
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    assert [(p.kind, p.reason) for p in result.problems] == [("layer", "size_mismatch")]


def test_passing_5xx_answers_are_retried(forgejo, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    forgejo.tamper("GET", r"/manifests/latest$", status=503, times=2)
    result = asyncio.run(check(settings_for(forgejo), image.reference))
    assert result.status == "intact"


def test_a_registry_answering_5xx_to_everything_is_could_not_check_not_broken(forgejo, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    forgejo.tamper("*", r"^/v2/", status=502)
    run = run_cli("check", image.reference, "--json", env={"REGISTRY_URL": forgejo.url, **PULL})
    assert run.code == 2
    assert "HTTP 502" in run.json()["error"]


def test_4xx_is_not_retried(forgejo, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    layer = image.layers["linux/amd64"][0]
    forgejo.tamper("HEAD", rf"/blobs/{layer}$", status=404)
    asyncio.run(check(settings_for(forgejo), image.reference))
    assert forgejo.paths(f"/v2/{repo_name}/blobs/{layer}").count(f"/v2/{repo_name}/blobs/{layer}") == 1


def test_a_registry_that_answers_too_slowly_is_a_timeout_exit_2(forgejo, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    forgejo.tamper("GET", r"/manifests/v1$", delay=1.5)
    run = run_cli(
        "check",
        image.reference,
        "--json",
        env={"REGISTRY_URL": forgejo.url, **PULL, "REGISTRY_TIMEOUT": "0.3", "REGISTRY_RETRIES": "2"},
    )
    assert run.code == 2
    assert "timed out" in run.json()["error"]


def test_basic_credentials_work_against_forgejo_too(registry, repo_name):
    pusher = ImagePusher(registry.url)
    image = pusher.push_single(repo_name, "v1")
    with ForgejoStandIn(registry) as forgejo:
        run = run_cli("check", f"{forgejo.host}/{image.reference}", env={"REGISTRY_URL": forgejo.url, **PULL})
    assert run.code == 0, run.stdout


def test_a_tag_lookup_is_its_digest_none_when_gone_and_could_not_check_otherwise(forgejo, pusher, repo_name):
    """What rebuild's "another tag shares this digest" check and prune's plan stand on: a refused lookup (a rate
    limit, a 403) must never pass for a tag that is not there."""
    from bot.errors import CouldNotCheck

    image = pusher.push_single(repo_name, "v1")

    async def lookup(tag: str) -> str | None:
        async with RegistryClient(settings_for(forgejo), "pull-token-s3cret") as client:
            return await client.resolve_digest(repo_name, tag)

    assert asyncio.run(lookup("v1")) == image.digest
    assert asyncio.run(lookup("gone")) is None
    forgejo.tamper("HEAD", rf"^/v2/{repo_name}/manifests/v1$", status=429)
    with pytest.raises(CouldNotCheck, match=rf"Could not look up {repo_name}:v1 \(HTTP 429\)"):
        asyncio.run(lookup("v1"))
