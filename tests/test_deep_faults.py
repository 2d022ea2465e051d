"""Deep checks against a real registry behind a front that misbehaves as real deployments do: blobs redirected
to storage on another origin, connections dropped mid-blob, shared layers, concurrency and rate limits, the
progress hook, and a layer of several hundred MiB with the process's peak RSS measured."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.config import Settings
from bot.refs import parse_reference
from bot.registry.blobs import DeepProgress
from bot.registry.client import RegistryClient
from bot.registry.integrity import IntegrityChecker
from tests.conftest import run_cli
from tests.deep_images import Pusher, flip_middle_byte, run_with_peak_rss
from tests.peers.blob_front import BlobStore, RegistryFront
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.registry import ImagePusher, Registry

PULL = {"REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "pull-token-s3cret"}


@pytest.fixture
def fresh_registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture
def front(registry: Registry) -> Iterator[RegistryFront]:
    with RegistryFront(registry) as f:
        yield f


def blob_requests(front: RegistryFront, method: str, digest: str) -> list[str]:
    return [s.path for s in front.requests(method) if s.path.endswith(f"/blobs/{digest}")]


async def deep_check(settings: Settings, ref: str, **kwargs: Any):
    async with RegistryClient(settings, settings.registry_password.reveal()) as client:
        return await IntegrityChecker(client, deep=True, **kwargs).check(parse_reference(ref))


# --- shared layers ------------------------------------------------------------------------------


def test_a_layer_shared_by_repositories_is_read_once_but_asked_for_in_each(fresh_registry):
    pusher = ImagePusher(fresh_registry.url)
    base = (b"shared base layer " * 50_000,)
    images = [
        pusher.push_image("viktor/api", "latest", base_layers=base),
        pusher.push_image("viktor/api", "v1", base_layers=base),
        pusher.push_single("viktor/worker", "v2", base_layers=base),
        pusher.push_single("viktor/cron", "v3", base_layers=base),
    ]
    pusher.close()
    shared = images[0].layers["linux/amd64"][0]
    with RegistryFront(fresh_registry) as front:
        run = run_cli("scan", "--deep", "--json", env={"REGISTRY_URL": front.url})
    assert run.code == 0, run.stdout
    assert len(blob_requests(front, "GET", shared)) == 1, "the shared layer was read more than once"
    assert sorted(blob_requests(front, "HEAD", shared)) == [
        f"/v2/{name}/blobs/{shared}" for name in ("viktor/api", "viktor/cron", "viktor/worker")
    ]
    every_layer = {d for image in images for layers in image.layers.values() for d in layers}
    assert all(len(blob_requests(front, "GET", d)) == 1 for d in every_layer)
    stored = {*every_layer, *(c for image in images for c in image.configs.values())}
    hashed = sum(fresh_registry.blob_data(d).stat().st_size for d in stored)
    assert run.json()["summary"]["bytes_verified"] == hashed  # each blob once


# --- a connection dropped mid-blob -----------------------------------------------------------------


def test_a_dropped_blob_is_retried_resuming_where_it_stopped(registry, front):
    pusher = Pusher(registry.url)
    layer = pusher.random_blob("viktor/drop", 3 << 20)
    pusher.image("viktor/drop", "once", [layer])
    pusher.close()
    front.drop_blob(layer.digest, after=1 << 20, times=1)
    run = run_cli("check", "viktor/drop:once", "--deep", "--json", env={"REGISTRY_URL": front.url})
    assert run.code == 0, run.stdout
    assert run.json()["bytes_verified"] >= layer.size
    gets = [s for s in front.requests("GET") if s.path.endswith(layer.digest)]
    assert len(gets) == 2
    assert gets[0].range == ""
    assert gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"


def test_a_blob_that_keeps_dropping_is_could_not_check_never_broken(registry, front):
    pusher = Pusher(registry.url)
    layer = pusher.random_blob("viktor/drop", 2 << 20)
    pusher.image("viktor/drop", "always", [layer])
    pusher.close()
    front.drop_blob(layer.digest, after=300_000, times=100)
    run = run_cli("check", "viktor/drop:always", "--deep", "--json", env={"REGISTRY_URL": front.url})
    assert run.code == 2, run.stdout
    body = run.json()
    assert body["status"] == "error" and body["problems"] == []
    assert "could not check it" in body["error"] and "3 attempts" in body["error"]
    assert len([s for s in front.requests("GET") if s.path.endswith(layer.digest)]) == 3
    human = run_cli("check", "viktor/drop:always", "--deep", env={"REGISTRY_URL": front.url})
    assert human.stdout.startswith("COULD NOT CHECK viktor/drop:always")
    assert "Traceback" not in human.stderr


# --- redirects to blob storage ---------------------------------------------------------------------


def test_blobs_redirected_to_storage_are_read_there_without_the_registrys_credentials(auth_registry):
    pusher = ImagePusher(auth_registry.url, auth=("cluster-puller", "pull-token-s3cret"))
    image = pusher.push_image("viktor/redirected", "latest")
    pusher.close()
    with BlobStore(auth_registry) as store, RegistryFront(auth_registry, store) as front:
        env = {"REGISTRY_URL": front.url, **PULL}
        plain = run_cli("check", image.reference, "--json", env=env)
        deep = run_cli("check", image.reference, "--deep", "--json", env=env)
        flip_middle_byte(auth_registry, image.layers["linux/amd64"][1])
        broken = run_cli("check", image.reference, "--deep", "--json", env=env)
        to_front = front.requests()
        to_store = store.requests()
    assert (plain.code, deep.code) == (0, 0), plain.stdout + deep.stdout
    assert deep.json()["bytes_verified"] > plain.json()["bytes_verified"] > 0
    assert [(p["kind"], p["reason"]) for p in broken.json()["problems"]] == [("layer", "digest_mismatch")]
    assert {s.method for s in to_store} == {"GET", "HEAD"}  # configs and layers were read from storage
    assert all(s.authorization == "" for s in to_store), "the registry's credentials went to blob storage"
    assert any(s.authorization.startswith("Basic ") for s in to_front)


def test_a_bearer_token_never_follows_a_redirect_either(registry):
    pusher = ImagePusher(registry.url)
    image = pusher.push_single("viktor/redirected-token", "v1")
    pusher.close()
    with (
        BlobStore(registry) as store,
        RegistryFront(registry, store) as front,
        ForgejoStandIn(front) as forgejo,  # type: ignore[arg-type]
    ):
        run = run_cli("check", image.reference, "--deep", "--json", env={"REGISTRY_URL": forgejo.url, **PULL})
        to_store = store.requests()
    assert run.code == 0, run.stdout
    assert len(to_store) >= 3
    assert all(s.authorization == "" for s in to_store)


# --- concurrency, rate, progress -------------------------------------------------------------------


@pytest.mark.parametrize("setting, expected", [("2", 2), (None, 4)], ids=["DEEP_CONCURRENCY=2", "default"])
def test_deep_concurrency_bounds_the_layer_downloads_in_flight(registry, front, repo_name, setting, expected):
    pusher = Pusher(registry.url)
    layers = [pusher.random_blob(repo_name, 64 << 10) for _ in range(6)]
    pusher.image(repo_name, "v1", layers)
    pusher.close()
    front.hold({layer.digest for layer in layers}, 0.3)
    env = {"REGISTRY_URL": front.url, **({"DEEP_CONCURRENCY": setting} if setting else {})}
    run = run_cli("check", f"{repo_name}:v1", "--deep", env=env)
    assert run.code == 0, run.stdout
    assert front.most_in_flight == expected


@pytest.mark.parametrize("limit_mib", [6, 48])
def test_deep_rate_limit_is_honoured_within_ten_percent(registry, repo_name, limit_mib):
    # Two layers, read at once, of 2 s worth each at the limit: together they must keep to it.
    pusher = Pusher(registry.url)
    layers = [pusher.random_blob(repo_name, limit_mib << 20) for _ in range(2)]
    pusher.image(repo_name, "v1", layers)
    pusher.close()
    limit = limit_mib << 20
    settings = Settings(registry_url=registry.url, deep_rate_limit=limit)
    seen: list[DeepProgress] = []
    started = time.monotonic()
    result = asyncio.run(deep_check(settings, f"{repo_name}:v1", on_progress=seen.append, progress_every=0.25))
    elapsed = time.monotonic() - started
    assert result.status == "intact"
    rate = 2 * limit / elapsed
    assert 0.9 * limit <= rate <= 1.1 * limit, f"{rate / (1 << 20):.2f} MiB/s against a limit of {limit_mib} MiB/s"
    assert len(seen) >= 5
    assert [p.bytes_verified for p in seen] == sorted(p.bytes_verified for p in seen)
    assert seen[-1].bytes_verified == result.bytes_verified
    assert seen[-1].bytes_planned == 2 * limit
    assert 0.9 * limit <= seen[-1].rate <= 1.1 * limit


def test_the_progress_hook_may_be_async_and_its_failures_never_fail_the_check(registry):
    pusher = Pusher(registry.url)
    pusher.image("viktor/hooked", "v1", [pusher.random_blob("viktor/hooked", 1 << 20)])
    pusher.close()
    settings = Settings(registry_url=registry.url)
    told: list[int] = []

    async def async_hook(progress: DeepProgress) -> None:
        told.append(progress.bytes_verified)

    def failing_hook(progress: DeepProgress) -> None:
        raise RuntimeError("the display broke")

    async def both() -> tuple[str, str]:
        first = await deep_check(settings, "viktor/hooked:v1", on_progress=async_hook)
        await asyncio.sleep(0)  # the hook's task runs
        second = await deep_check(settings, "viktor/hooked:v1", on_progress=failing_hook)
        return first.status, second.status

    assert asyncio.run(both()) == ("intact", "intact")
    assert told and told[-1] > 1 << 20


# --- memory -------------------------------------------------------------------------------------


def test_a_layer_of_several_hundred_mib_is_hashed_with_flat_memory(fresh_registry):
    size = 384 << 20
    pusher = Pusher(fresh_registry.url)
    layer = pusher.random_blob("viktor/huge", size)
    pusher.image("viktor/huge", "v1", [layer])
    pusher.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "VAULT_"))}
    env["REGISTRY_URL"] = fresh_registry.url
    command = [sys.executable, "-m", "bot", "check", "viktor/huge:v1", "--deep", "--json"]
    code, stdout, peak_mib = run_with_peak_rss(command, env)
    body = json.loads(stdout)
    assert (code, body["status"]) == (0, "intact"), body
    assert body["bytes_verified"] >= size
    assert peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB for a {size >> 20} MiB layer"
