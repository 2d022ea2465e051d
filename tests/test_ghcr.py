"""GitHub's container registry beside a Forgejo one: check and scan both at once, GHCR listed through
GitHub's packages API (read with githubkit), Link pagination, nested names, and credentials kept apart."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.registry.ghcr import GhcrPackages
from bot.registry.registries import RegistryConfig
from tests.conftest import run_cli
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.ghcr import ChallengeAuth, GhcrStandIn
from tests.peers.registry import ImagePusher, PushedImage, Registry

PAT = "ghcr-pat-s3cret"
PULL = "pull-token-s3cret"


@pytest.fixture(scope="module")
def forgejo() -> Iterator[ForgejoStandIn]:
    with Registry() as backing, ForgejoStandIn(backing) as stand_in:
        pusher = ImagePusher(backing.url)
        pusher.push_image("viktor/payslip-ingest", "latest")
        pusher.close()
        yield stand_in


@pytest.fixture(scope="module")
def ghcr() -> Iterator[GhcrStandIn]:
    with Registry() as backing, GhcrStandIn(backing, default_per_page=2, max_per_page=2) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def images(ghcr: GhcrStandIn) -> dict[str, PushedImage]:
    pusher = ImagePusher(ghcr.url, auth=ChallengeAuth("viktorbarzin", PAT))  # type: ignore[arg-type]
    pushed = {
        "app": pusher.push_image("viktorbarzin/app", "latest"),
        "cli": pusher.push_single("viktorbarzin/tools/cli", "v1"),
        "web": pusher.push_single("viktorbarzin/web", "1.0"),
        "api": pusher.push_image("viktorbarzin/api", "latest"),
    }
    pusher.close()
    ghcr.registry.break_manifest_link("viktorbarzin/api", pushed["api"].children["linux/arm64"])
    return pushed


def write_config(tmp_path: Path, forgejo: ForgejoStandIn, ghcr: GhcrStandIn, ghcr_extra: str = "") -> dict[str, str]:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "registries:\n"
        f"  - {{url: {forgejo.url}, kind: forgejo, username: cluster-puller, password_env: FORGEJO_PULL}}\n"
        f"  - {{url: {ghcr.url}, kind: ghcr, owner: viktorbarzin, username: viktorbarzin, password_env: GHCR_PAT,"
        f" github_api_url: {ghcr.api_url}{ghcr_extra}}}\n"
    )
    return {"REGISTRY_BOT_CONFIG": str(path), "FORGEJO_PULL": PULL, "GHCR_PAT": PAT}


@pytest.fixture
def both(tmp_path, forgejo, ghcr, images) -> dict[str, str]:
    return write_config(tmp_path, forgejo, ghcr)


def test_check_on_ghcr_by_host_nested_names_too(both, ghcr, images):
    for reference in ("viktorbarzin/app:latest", "viktorbarzin/tools/cli:v1"):
        run = run_cli("check", f"{ghcr.host}/{reference}", "--json", env=both)
        assert run.code == 0, run.stdout + run.stderr
        assert (run.json()["registry"], run.json()["status"]) == (ghcr.host, "intact")


def test_a_missing_child_on_ghcr_names_the_retention_job(both, ghcr):
    run = run_cli("check", f"{ghcr.host}/viktorbarzin/api:latest", env=both)
    assert run.code == 1
    assert "a retention job that deletes untagged versions" in run.stdout


def test_scan_covers_forgejo_and_ghcr_together(both, forgejo, ghcr, images):
    run = run_cli("scan", "--json", env=both)
    assert run.code == 1, run.stdout + run.stderr
    body = run.json()
    by_registry = {s["registry"]: s for s in body["registries"]}
    assert by_registry[forgejo.host]["listed_by"] == "catalog" and by_registry[forgejo.host]["tags"] == 1
    listed = by_registry[ghcr.host]
    assert (listed["listed_by"], listed["repositories"], listed["tags"], listed["broken"]) == (
        "GitHub packages API",
        4,
        4,
        1,
    )
    refs = {r["reference"] for r in body["results"] if r["registry"] == ghcr.host}
    assert refs == {
        "viktorbarzin/app:latest",
        "viktorbarzin/tools/cli:v1",
        "viktorbarzin/web:1.0",
        "viktorbarzin/api:latest",
    }
    pages = [s.path for s in ghcr.seen if s.side == "api" and s.path.startswith("/users/viktorbarzin/packages?")]
    assert len(pages) == 2  # four packages, two a page: the Link header was followed
    assert not any(s.path.startswith("/v2/_catalog") for s in ghcr.seen)
    only = run_cli("scan", "--registry", ghcr.host, env=both)
    assert only.stdout.startswith(f"BROKEN {ghcr.host}: 4 tags in 4 repositories, 1 broken")
    assert forgejo.host not in only.stdout


def test_credentials_are_kept_apart(both, forgejo, ghcr, images):
    forgejo.authorizations.clear()
    with ghcr._lock:
        ghcr.seen.clear()
    assert run_cli("scan", env=both).code == 1
    assert run_cli("check", f"{ghcr.host}/viktorbarzin/app:latest", env=both).code == 0
    assert run_cli("check", "viktor/payslip-ingest:latest", env=both).code == 0
    forgejo_login = {PULL, base64.b64encode(f"cluster-puller:{PULL}".encode()).decode()}
    ghcr_login = {PAT, base64.b64encode(f"viktorbarzin:{PAT}".encode()).decode()}
    at_ghcr = ghcr.authorizations()
    assert at_ghcr and forgejo.authorizations
    assert not any(secret in header for header in at_ghcr for secret in forgejo_login)
    assert not any(secret in header for header in forgejo.authorizations for secret in ghcr_login)
    # On ghcr.io the PAT goes to the token realm only (Basic); the registry sees tokens, the API the PAT.
    basic_paths = {
        s.path.split("?")[0] for s in ghcr.seen if s.side == "registry" and s.authorization.startswith("Basic")
    }
    assert basic_paths == {"/token"}
    assert {s.authorization for s in ghcr.seen if s.side == "api"} == {f"token {PAT}"}


def test_versions_are_paged_by_link_and_read_by_githubs_schema(ghcr, images):
    entry = RegistryConfig(url=ghcr.url, kind="ghcr", owner="viktorbarzin", github_api_url=ghcr.api_url)

    async def versions() -> list:
        async with GhcrPackages(entry, PAT) as packages:
            return await packages.versions("app")

    found = asyncio.run(versions())
    app = images["app"]
    assert {(v.digest, v.tags) for v in found} == {(app.digest, ("latest",))} | {
        (child, ()) for child in app.children.values()
    }
    assert len({v.id for v in found}) == 3  # three versions, two a page


def test_an_organisation_is_found_after_the_user_and_an_off_schema_answer_fails(tmp_path, forgejo):
    with Registry() as backing, GhcrStandIn(backing, owner_type="org") as org:
        pusher = ImagePusher(org.url, auth=ChallengeAuth("viktorbarzin", PAT))  # type: ignore[arg-type]
        pusher.push_single("viktorbarzin/svc", "1")
        pusher.close()
        env = write_config(tmp_path, forgejo, org)
        run = run_cli("scan", "--json", "--registry", org.host, env=env)
        assert run.code == 0, run.stdout
        assert [r["reference"] for r in run.json()["results"]] == ["viktorbarzin/svc:1"]
        assert [s.path.split("?")[0] for s in org.seen if s.side == "api"][:2] == [
            "/users/viktorbarzin/packages",
            "/orgs/viktorbarzin/packages",
        ]
        org.off_schema = True
        broken = run_cli("scan", "--registry", org.host, env=env)
        assert broken.code == 2
        assert "answered listing viktorbarzin's packages with something that is not GitHub's schema" in broken.stdout


def test_a_listing_longer_than_the_page_bound_is_an_error_not_a_shorter_list(ghcr, images, monkeypatch):
    """Three versions two a page with a bound of one page: "could not check", never the first page alone
    (prune would take a version it never saw listed for untagged)."""
    import bot.registry.ghcr as ghcr_module
    from bot.errors import CouldNotCheck

    monkeypatch.setattr(ghcr_module, "MAX_PAGES", 1)
    entry = RegistryConfig(url=ghcr.url, kind="ghcr", owner="viktorbarzin", github_api_url=ghcr.api_url)

    async def versions() -> list:
        async with GhcrPackages(entry, PAT) as packages:
            return await packages.versions("app")

    with pytest.raises(CouldNotCheck, match="more than 1 pages; the bot stopped"):
        asyncio.run(versions())
