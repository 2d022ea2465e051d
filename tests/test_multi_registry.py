"""Several registries in one bot, on the command line: check picks the registry by the reference's host,
scan covers them all at once (or those `--registry` names), and each gets only its own credentials."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Secret
from tests.conftest import run_cli
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.registry import ImagePusher, Registry
from tests.test_deep import conforms

MIRROR_USER, MIRROR_PASSWORD = "mirror-user", "mirror-pass-s3cret"
PULL = "pull-token-s3cret"


@pytest.fixture(scope="module")
def forgejo() -> Iterator[ForgejoStandIn]:
    with Registry() as backing, ForgejoStandIn(backing) as stand_in:
        pusher = ImagePusher(backing.url)
        pusher.push_image("viktor/payslip-ingest", "latest")
        broken = pusher.push_image("viktor/old", "v1")
        backing.break_manifest_link("viktor/old", broken.children["linux/arm64"])
        pusher.close()
        yield stand_in


@pytest.fixture(scope="module")
def mirror() -> Iterator[Registry]:
    with Registry(username=MIRROR_USER, password=MIRROR_PASSWORD) as registry:
        pusher = ImagePusher(registry.url, auth=(MIRROR_USER, MIRROR_PASSWORD))
        pusher.push_single("library/alpine", "3.20")
        pusher.close()
        yield registry


@pytest.fixture
def two(tmp_path: Path, forgejo: ForgejoStandIn, mirror: Registry) -> dict[str, str]:
    path = tmp_path / "bot.yaml"
    path.write_text(
        "registries:\n"
        f"  - {{url: {forgejo.url}, kind: forgejo, username: cluster-puller, password_env: FORGEJO_PULL}}\n"
        f"  - {{url: {mirror.url}, kind: distribution, username: {MIRROR_USER}, password_env: MIRROR_PASS,"
        " instance: mirror}\n"
    )
    return {"REGISTRY_BOT_CONFIG": str(path), "FORGEJO_PULL": "pull-token-s3cret", "MIRROR_PASS": MIRROR_PASSWORD}


def test_check_chooses_the_registry_by_the_references_host(two, forgejo, mirror):
    default = run_cli("check", "viktor/payslip-ingest:latest", "--json", env=two)
    assert default.code == 0, default.stdout + default.stderr
    assert default.json()["registry"] == forgejo.host
    named = run_cli("check", f"{mirror.host}/library/alpine:3.20", "--json", env=two)
    assert named.code == 0, named.stdout + named.stderr
    assert named.json()["registry"] == mirror.host and named.json()["status"] == "intact"
    # The image lives on the mirror only: on the default registry it is not there, so broken there.
    elsewhere = run_cli("check", "library/alpine:3.20", env=two)
    assert elsewhere.code == 1 and elsewhere.stdout.startswith(f"BROKEN library/alpine:3.20 on {forgejo.host}")


def test_a_host_no_entry_names_is_refused_before_any_request(two, forgejo):
    before = len(forgejo.requests)
    run = run_cli("check", "docker.io/library/alpine:3.20", env=two)
    assert run.code == 2
    assert "not this bot's registry" in run.stdout and len(run.stdout.strip().splitlines()) == 1
    assert len(forgejo.requests) == before


def test_scan_covers_every_registry_and_registry_limits_it(two, forgejo, mirror):
    run = run_cli("scan", env=two)
    assert run.code == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"BROKEN {forgejo.host}: 2 tags in 2 repositories, 1 broken")
    assert lines[1].startswith(f"BROKEN viktor/old:v1 on {forgejo.host}")
    assert any(line.startswith(f"INTACT {mirror.host}: 1 tags in 1 repositories, 0 broken") for line in lines)
    body = run_cli("scan", "--json", env=two).json()
    conforms(body, "scan")
    assert [s["registry"] for s in body["registries"]] == [forgejo.host, mirror.host]
    assert body["summary"]["tags"] == 3 and body["summary"]["broken"] == 1
    assert {r["registry"] for r in body["results"]} == {forgejo.host, mirror.host}
    only = run_cli("scan", "--json", "--registry", mirror.host, env=two)
    assert only.code == 0 and only.json()["summary"]["registry"] == mirror.host
    assert {r["reference"] for r in only.json()["results"]} == {"library/alpine:3.20"}
    unknown = run_cli("scan", "--registry", "docker.io", env=two)
    assert unknown.code == 2 and "'docker.io' is none of this bot's registries" in unknown.stderr


def test_each_registry_gets_only_its_own_login(two, forgejo):
    forgejo.authorizations.clear()
    assert run_cli("scan", env=two).code == 1
    mirror_basic = base64.b64encode(f"{MIRROR_USER}:{MIRROR_PASSWORD}".encode()).decode()
    seen = set(forgejo.authorizations)
    assert seen and not any(MIRROR_PASSWORD in a or mirror_basic in a for a in seen)


def test_a_slow_registry_never_slows_another_ones_scan():
    """Ratios, not absolute times: the fast registry's scan takes about as long beside a slow one as alone."""
    import asyncio

    from bot.config import Settings
    from bot.registry.multiscan import scan_registries
    from bot.registry.registries import RegistryConfig
    from bot.secrets import SecretResolver

    with Registry() as fast, Registry() as slow_store, ForgejoStandIn(slow_store) as slow:
        for registry in (fast, slow_store):
            pusher = ImagePusher(registry.url)
            for i in range(8):
                pusher.push_image(f"viktor/app{i}", "v1")
            pusher.close()
        slow.tamper("*", r"^/v2/.+/(manifests|blobs)/", delay=0.12)  # every object answers late
        fast_entry = RegistryConfig(url=fast.url, kind="distribution")
        slow_entry = RegistryConfig(
            url=slow.url, kind="forgejo", username="cluster-puller", password=Secret(PULL), concurrency=2
        )
        settings = Settings(registries=(fast_entry, slow_entry))

        def scan(*entries: RegistryConfig) -> list:
            return asyncio.run(scan_registries(settings, SecretResolver(settings), entries))

        scan(fast_entry)  # warm up: the first walk pays for imports and the registry's caches
        alone = min(scan(fast_entry)[0].elapsed_ms for _ in range(3))
        started = time.perf_counter()
        fast_beside, slow_result = scan(fast_entry, slow_entry)
        together_ms = (time.perf_counter() - started) * 1000
    assert fast_beside.error is None and slow_result.error is None
    assert fast_beside.summary()["tags"] == slow_result.summary()["tags"] == 8
    print(f"fast alone {alone} ms, beside the slow one {fast_beside.elapsed_ms} ms, slow {slow_result.elapsed_ms} ms")
    assert slow_result.elapsed_ms > 5 * fast_beside.elapsed_ms  # the slow one really was slow
    assert fast_beside.elapsed_ms < 3 * max(alone, 20)  # and the fast one did not wait for it
    assert together_ms < 1.3 * slow_result.elapsed_ms  # concurrently: the run lasts as long as the slowest


def test_jsonl_streams_every_registrys_tags_then_one_summary_naming_each(two, forgejo, mirror):
    run = run_cli("scan", "--jsonl", env=two)
    assert run.code == 1, run.stdout + run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    *results, last = lines
    for result in results:
        conforms(result, "check")
    conforms(last, "scan_end")
    assert sorted((r["registry"], r["reference"]) for r in results) == sorted(
        [
            (forgejo.host, "viktor/old:v1"),
            (forgejo.host, "viktor/payslip-ingest:latest"),
            (mirror.host, "library/alpine:3.20"),
        ]
    )
    assert last["summary"]["tags"] == 3 and [s["registry"] for s in last["registries"]] == [forgejo.host, mirror.host]


def test_each_registry_keeps_its_own_pace_and_one_progress_adds_them_up(forgejo, mirror):
    """A registry's `scan_rate_limit` paces that registry only; the progress a display reads covers both."""
    import asyncio

    from bot.config import Settings
    from bot.registry.multiscan import scan_registries
    from bot.registry.progress import ScanProgress
    from bot.registry.registries import RegistryConfig
    from bot.secrets import SecretResolver

    paced = RegistryConfig(
        url=forgejo.url, kind="forgejo", username="cluster-puller", password=Secret(PULL), scan_rate_limit=4
    )
    free = RegistryConfig(
        url=mirror.url, kind="distribution", username=MIRROR_USER, password=Secret(MIRROR_PASSWORD), instance="m"
    )
    settings = Settings(registries=(paced, free))
    progress = ScanProgress()
    scans = asyncio.run(scan_registries(settings, SecretResolver(settings), (paced, free), progress=progress))
    slow, fast = scans
    assert (slow.rate_limit, fast.rate_limit) == (4.0, 0.0)
    # One second of tokens up front, then 4 a second: the paced registry's requests take at least this long.
    assert slow.elapsed_ms >= 0.9 * 1000 * (slow.requests - 4) / 4, (slow.requests, slow.elapsed_ms)
    assert fast.elapsed_ms < slow.elapsed_ms
    assert progress.listing_done and progress.listed == progress.done == 3 and progress.broken == 1
    assert progress.requests == slow.requests + fast.requests
