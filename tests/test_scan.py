"""`registry-bot scan`: every repository and tag, paginated listings, the packages-API fallback, sharing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bot.config import Secret, Settings
from bot.registry import scan as scan_module
from bot.registry.client import RegistryClient
from bot.registry.scan import scan_registry
from tests.conftest import run_cli
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.registry import ImagePusher, Registry, free_port

PULL = {"REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "pull-token-s3cret"}


@pytest.fixture
def fresh_registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture
def populated(fresh_registry: Registry) -> dict[str, object]:
    pusher = ImagePusher(fresh_registry.url)
    base = (b"shared base layer " * 500,)
    images = {
        "ok": pusher.push_image("viktor/api", "latest", base_layers=base),
        "ok2": pusher.push_image("viktor/api", "v1.0", base_layers=base),
        "single": pusher.push_single("viktor/worker", "v2", base_layers=base),
        "broken": pusher.push_image("viktor/payslip-ingest", "latest", base_layers=base),
    }
    fresh_registry.break_manifest_link("viktor/payslip-ingest", images["broken"].children["linux/amd64"])
    pusher.close()
    return images


def test_scan_reports_every_tag_and_exits_1_when_any_is_broken(fresh_registry, populated):
    run = run_cli("scan", "--json", env={"REGISTRY_URL": fresh_registry.url})
    assert run.code == 1, run.stderr
    body = run.json()
    by_ref = {r["reference"]: r for r in body["results"]}
    assert set(by_ref) == {"viktor/api:latest", "viktor/api:v1.0", "viktor/worker:v2", "viktor/payslip-ingest:latest"}
    assert by_ref["viktor/payslip-ingest:latest"]["status"] == "broken"
    assert by_ref["viktor/payslip-ingest:latest"]["problems"][0]["platform"] == "linux/amd64"
    assert all(by_ref[r]["status"] == "intact" for r in by_ref if "payslip" not in r)
    summary = body["summary"]
    assert (summary["repositories"], summary["tags"], summary["broken"], summary["intact"]) == (3, 4, 1, 3)
    assert summary["indexes"] == 3
    assert summary["catalog_accessible"] is True


def test_human_scan_output_lists_only_what_is_wrong(fresh_registry, populated):
    run = run_cli("scan", env={"REGISTRY_URL": fresh_registry.url})
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith(f"BROKEN {fresh_registry.host}: 4 tags in 3 repositories, 1 broken")
    assert lines[1].startswith("BROKEN viktor/payslip-ingest:latest")
    assert len(lines) == 3


def test_tags_per_repo_keeps_the_last_n(fresh_registry, populated):
    run = run_cli("scan", "--json", "--tags-per-repo", "1", env={"REGISTRY_URL": fresh_registry.url})
    refs = {r["reference"] for r in run.json()["results"]}
    assert refs == {"viktor/api:v1.0", "viktor/worker:v2", "viktor/payslip-ingest:latest"}


def test_listings_are_followed_across_pages(fresh_registry, populated, monkeypatch):
    monkeypatch.setattr(scan_module, "PAGE_SIZE", 1)
    result = asyncio.run(_scan(Settings(registry_url=fresh_registry.url)))
    assert len(result.results) == 4
    assert result.repositories == 3


def test_each_blob_is_asked_for_once_per_repository(fresh_registry, populated):
    with ForgejoStandIn(fresh_registry) as forgejo:
        settings = Settings(
            registry_url=forgejo.url, registry_username="cluster-puller", registry_password=Secret("pull-token-s3cret")
        )
        result = asyncio.run(_scan(settings))
        heads = [p for p in forgejo.paths("/v2/viktor/api/blobs/")]
    assert result.exit_code == 1
    assert len(heads) == len(set(heads)), "a blob of viktor/api was asked for twice"
    shared = populated["ok"].layers["linux/amd64"][0]  # type: ignore[attr-defined]
    assert heads.count(f"/v2/viktor/api/blobs/{shared}") == 1


def test_forgejo_without_a_catalog_is_listed_through_the_packages_api(fresh_registry, populated):
    with ForgejoStandIn(fresh_registry) as forgejo:
        forgejo.catalog_disabled = True
        run = run_cli("scan", "--json", env={"REGISTRY_URL": forgejo.url, **PULL})
    assert run.code == 1
    body = run.json()
    assert body["summary"]["listed_by"] == "packages API"
    assert body["summary"]["tags"] == 4


def test_a_registry_that_cannot_be_listed_is_exit_2(fresh_registry):
    env = {"REGISTRY_URL": f"http://127.0.0.1:{free_port()}", "REGISTRY_RETRIES": "1", "REGISTRY_KIND": "distribution"}
    run = run_cli("scan", "--json", env=env)
    assert run.code == 2
    assert run.json()["summary"]["status"] == "error"
    assert "unreachable" in run.json()["summary"]["error"]


def test_an_empty_registry_is_intact(fresh_registry):
    run = run_cli("scan", env={"REGISTRY_URL": fresh_registry.url})
    assert run.code == 0
    assert "0 tags in 0 repositories" in run.stdout


async def _scan(settings: Settings):
    async with RegistryClient(settings, settings.registry_password.reveal()) as client:
        return await scan_registry(client)
