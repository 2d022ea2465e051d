"""Credentials stay home: a hostile registry's answers never send the bot's login, or its requests, elsewhere.

The registry is the real docker-registry behind `HostileRegistry`, a loopback proxy that lies: next-page links
to other hosts, token realms on other hosts or over plain http, repository and tag names that are paths, a
digest header that is a path. `RecordingHost`s (127.0.0.2, another host by name) record what reaches them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bot.config import Secret, Settings
from bot.errors import UserFacingError
from bot.refs import parse_reference
from bot.registry.client import RegistryClient
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.scan import ScanResult, scan_registry
from tests.conftest import run_cli
from tests.peers.hostile import HostileRegistry, RecordingHost
from tests.peers.registry import Registry

USER, PASSWORD = "cluster-puller", "pull-token-s3cret"


@pytest.fixture
def foreign() -> Iterator[RecordingHost]:
    with RecordingHost("127.0.0.2") as host:
        yield host


@pytest.fixture
def hostile(registry: Registry) -> Iterator[HostileRegistry]:
    with HostileRegistry(registry, username=USER, password=PASSWORD) as proxy:
        yield proxy


def settings_for(proxy: HostileRegistry, **extra: Any) -> Settings:
    return Settings(
        registry_url=proxy.url,
        registry_username=USER,
        registry_password=Secret(PASSWORD),
        registry_kind="distribution",
        registry_retries=1,
        **extra,
    )


def check(settings: Settings, ref: str) -> CheckResult:
    async def run() -> CheckResult:
        async with RegistryClient(settings, settings.registry_password.reveal()) as client:
            return await IntegrityChecker(client).check(parse_reference(ref, settings.all_registry_hosts))

    return asyncio.run(run())


def scan(settings: Settings) -> ScanResult:
    async def run() -> ScanResult:
        async with RegistryClient(settings, settings.registry_password.reveal()) as client:
            return await scan_registry(client)

    return asyncio.run(run())


def one_sentence(text: str | None) -> str:
    assert text and "\n" not in text and len(text) < 400, text
    return text


# --- Link: rel="next" is followed on the registry's own origin only ---------------------------------------


@pytest.mark.parametrize("form", ["absolute", "scheme-relative", "same-address-other-port"])
def test_a_next_page_on_another_origin_is_not_followed(registry, pusher, repo_name, hostile, foreign, form):
    pusher.push_single(repo_name, "v1")
    with RecordingHost("127.0.0.1") as neighbour:
        target = {
            "absolute": foreign.url,
            "scheme-relative": f"//{foreign.host}",
            "same-address-other-port": neighbour.url,
        }[form]
        elsewhere = foreign if form != "same-address-other-port" else neighbour
        hostile.lies.links["/v2/_catalog"] = f'<{target}/v2/_catalog?n=100&last=zzz>; rel="next"'
        result = scan(settings_for(hostile))
    error = one_sentence(result.error)
    assert elsewhere.host in error and "could not" in error.lower()
    assert result.exit_code == 2
    assert foreign.seen == [] and neighbour.seen == []  # not asked at all, let alone with credentials


def test_a_tags_page_on_another_host_leaves_that_repository_unchecked(registry, pusher, repo_name, hostile, foreign):
    pusher.push_single(f"{repo_name}/a", "v1")
    pusher.push_single(f"{repo_name}/b", "v1")
    hostile.lies.catalog = [f"{repo_name}/a", f"{repo_name}/b"]
    hostile.lies.links[f"/v2/{repo_name}/b/tags/list"] = f'<{foreign.url}/v2/{repo_name}/b/tags/list?n=1>; rel="next"'
    result = scan(settings_for(hostile))
    by_ref = {r.reference: r for r in result.results}
    assert by_ref[f"{repo_name}/a:v1"].status == "intact"
    refused = by_ref[f"{repo_name}/b"]
    assert refused.status == "error" and foreign.host in one_sentence(refused.error)
    assert foreign.seen == []


# --- credentials go to a token realm only on the registry's own hosts or REGISTRY_TOKEN_REALMS ---------------


@pytest.mark.parametrize(
    "realm",
    [
        "{foreign}/token",
        "http://{foreign_host}:{foreign_port}/token?scope=x",
        "http://user:pw@{foreign_host}:{foreign_port}/token",
        "file:///etc/passwd",
    ],
)
def test_no_credentials_for_a_token_realm_elsewhere(registry, pusher, repo_name, foreign, realm):
    image = pusher.push_single(repo_name, "v1")
    host, port = foreign.host.split(":")
    named = realm.format(foreign=foreign.url, foreign_host=host, foreign_port=port)
    with HostileRegistry(registry, realm=named, accept_tokens=(foreign.token,)) as proxy:
        result = check(settings_for(proxy), image.reference)
        seen = proxy.credentials_seen()
    assert result.status == "error"
    error = one_sentence(result.error)
    assert (foreign.host if "etc" not in named else "file") in error
    assert "REGISTRY_TOKEN_REALMS" in error or "http" in error
    assert foreign.seen == []
    assert seen == []  # the registry itself never asked for Basic: nothing was sent anywhere


def test_a_token_realm_listed_in_registry_token_realms_gets_the_login(registry, pusher, repo_name, foreign):
    image = pusher.push_single(repo_name, "v1")
    with HostileRegistry(registry, realm=f"{foreign.url}/token", accept_tokens=(foreign.token,)) as proxy:
        result = check(settings_for(proxy, registry_token_realms=(foreign.host,)), image.reference)
        registry_saw = {s.authorization for s in proxy.credentials_seen()}
    assert result.status == "intact", result.error
    [login] = foreign.credentials_seen()
    assert login.authorization.startswith("Basic ") and login.path.startswith("/token?")
    assert registry_saw == {f"Bearer {foreign.token}"}


def test_a_token_realm_on_the_registrys_own_or_other_names_gets_the_login(registry, pusher, repo_name, foreign):
    image = pusher.push_single(repo_name, "v1")
    with HostileRegistry(registry, realm=lambda url: f"{url}/token") as proxy:
        assert check(settings_for(proxy), image.reference).status == "intact"
    # REGISTRY_HOSTS names the same registry (Forgejo's realm is on its public name, the bot may use another).
    with HostileRegistry(registry, realm=f"{foreign.url}/token", accept_tokens=(foreign.token,)) as proxy:
        result = check(settings_for(proxy, registry_hosts=(foreign.host,)), image.reference)
    assert result.status == "intact", result.error
    assert len(foreign.credentials_seen()) == 1


def test_https_credentials_never_go_to_a_plain_http_realm(registry, pusher, repo_name, tmp_path):
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    image = pusher.push_single(repo_name, "v1")
    with RecordingHost("127.0.0.2") as plain:
        realm = f"{plain.url}/token"
        with HostileRegistry(registry, realm=realm, accept_tokens=(plain.token,), tls=ca) as proxy:
            assert proxy.url.startswith("https://")
            settings = settings_for(proxy, registry_ca_file=str(ca_file), registry_token_realms=(plain.host,))
            result = check(settings, image.reference)
        assert result.status == "error"
        error = one_sentence(result.error)
        assert plain.host in error and "http" in error
        assert plain.seen == []
    # Over https to the same listed host, the login goes.
    with RecordingHost("127.0.0.2", tls=ca) as secure:
        with HostileRegistry(registry, realm=f"{secure.url}/token", accept_tokens=(secure.token,), tls=ca) as proxy:
            settings = settings_for(proxy, registry_ca_file=str(ca_file), registry_token_realms=(secure.host,))
            assert check(settings, image.reference).status == "intact"
        assert len(secure.credentials_seen()) == 1


def test_the_command_line_says_could_not_check_naming_the_host(registry, pusher, repo_name, foreign):
    image = pusher.push_single(repo_name, "v1")
    with HostileRegistry(registry, realm=f"{foreign.url}/token") as proxy:
        run = run_cli(
            "check",
            image.reference,
            env={"REGISTRY_URL": proxy.url, "REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": PASSWORD},
        )
    assert run.code == 2
    [line] = run.stdout.strip().splitlines()
    assert line.startswith(f"COULD NOT CHECK {image.reference} on {proxy.host}: ") and foreign.host in line
    assert PASSWORD not in run.stdout + run.stderr
    assert foreign.seen == []


# --- names the registry lists are held to the reference grammar before they go into a path -----------------

BAD_NAMES = [
    "../v2/_catalog",
    "viktor/app/../../../../v2",
    "viktor/%2e%2e/x",
    "Viktor/Upper",
    "viktor/app?n=1",
    "viktor/app#x",
    "viktor/app\n",
    "viktor//app",
    "viktor/" + "a" * 300,
    "",
]
BAD_TAGS = ["../../../_catalog", "v1/../../x", "ünï", "x" * 200, "v1?n=1", ".hidden", "", "v1\n"]


def test_names_from_the_catalog_and_tags_lists_must_fit_the_grammar(registry, pusher, repo_name, hostile):
    pusher.push_single(repo_name, "v1")
    hostile.lies.catalog = [repo_name, *BAD_NAMES]
    hostile.lies.tags[repo_name] = ["v1", *BAD_TAGS]
    result = scan(settings_for(hostile))
    assert result.error is None
    by_status: dict[str, list[CheckResult]] = {}
    for r in result.results:
        by_status.setdefault(r.status, []).append(r)
    assert [r.reference for r in by_status["intact"]] == [f"{repo_name}:v1"]
    errors = [one_sentence(r.error) for r in by_status["error"]]
    assert sum("not a valid repository name" in e for e in errors) == len(BAD_NAMES)
    assert sum("not a valid tag" in e for e in errors) == len(BAD_TAGS)
    allowed = re.compile(
        rf"^/v2/(|_catalog|{re.escape(repo_name)}/(tags/list|manifests/(v1|sha256:[0-9a-f]{{64}})|blobs/sha256:[0-9a-f]{{64}}))$"
    )
    paths = [s.path.split("?")[0] for s in hostile.seen]
    assert [p for p in paths if not allowed.match(p)] == []


# --- the distribution DELETE puts only a digest in its path -------------------------------------------------


def test_a_digest_header_that_is_a_path_deletes_nothing_else(registry, pusher, repo_name, hostile):
    from bot.runbook.base import PhaseContext, RecordingProgress
    from bot.runbook.rebuild import delete_broken_version
    from bot.secrets import SecretResolver
    from tests.world import unsaved_incident

    victim = pusher.push_single(f"{repo_name}/victim", "v1")
    target = pusher.push_single(f"{repo_name}/app", "latest")
    hostile.lies.digests[f"/v2/{repo_name}/app/manifests/latest"] = f"../../victim/manifests/{victim.digest}"
    settings = settings_for(hostile)
    incident = unsaved_incident(hostile.host, f"{repo_name}/app:latest", target.digest)
    ctx = PhaseContext(settings, incident, SecretResolver(settings))
    progress = RecordingProgress()
    try:
        asyncio.run(delete_broken_version(ctx, progress))
        refusal = ""
    except UserFacingError as exc:
        refusal = one_sentence(str(exc))
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    still = httpx.head(f"{registry.url}/v2/{repo_name}/victim/manifests/v1", headers=accept)
    assert still.status_code == 200, "the other repository's image was deleted"
    assert [s.path for s in hostile.seen if s.method == "DELETE"] == []
    assert "not a digest" in refusal
