"""Content verification on the real registry: configs always read and hashed, `--deep` layers, sha512,
non-distributable layers without `urls`, attestations that only attestations lost, the JSON contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import run_cli
from tests.deep_images import NONDIST_ZSTD, Blob, Pusher, change_bytes_in_place, digest_of, flip_middle_byte
from tests.peers.registry import FOREIGN_LAYER, Registry

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "check-result.schema.json").read_text())


def conforms(instance: object, definition: str) -> None:
    """`instance` is what docs/check-result.schema.json says a `definition` is."""
    jsonschema.validate(instance, {**SCHEMA, "oneOf": [{"$ref": f"#/$defs/{definition}"}]})


@pytest.fixture
def deep_pusher(registry: Registry) -> Iterator[Pusher]:
    pusher = Pusher(registry.url)
    yield pusher
    pusher.close()


def check(registry: Registry, ref: str, *extra: str, env: dict[str, str] | None = None):
    run = run_cli("check", ref, "--json", *extra, env={"REGISTRY_URL": registry.url, **(env or {})})
    if run.stdout.startswith("{"):
        conforms(run.json(), "check")
    return run


def problems(run) -> list[tuple[str, str]]:
    return [(p["kind"], p["reason"]) for p in run.json()["problems"]]


# --- configs, on every check --------------------------------------------------------------------


def test_a_config_whose_stored_bytes_changed_is_a_digest_mismatch_without_deep(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    config = image.configs["linux/amd64"]
    change_bytes_in_place(registry, config, b'"amd64"', b'"arm64"')  # same length, still valid JSON
    run = check(registry, image.reference)
    assert run.code == 1, run.stdout
    [problem] = run.json()["problems"]
    assert (problem["kind"], problem["reason"], problem["digest"]) == ("config", "digest_mismatch", config)
    assert problem["detail"].startswith("stored bytes hash to sha256:")
    assert problem["pull_impact"] == "fails"


def test_a_config_is_read_and_counted_in_bytes_verified(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    body = check(registry, image.reference).json()
    size = registry.blob_data(image.configs["linux/amd64"]).stat().st_size
    assert (body["status"], body["deep"], body["bytes_verified"]) == ("intact", False, size)


def test_a_config_longer_than_its_descriptor_is_a_size_mismatch(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    registry.corrupt_blob_file(image.configs["linux/amd64"])  # one byte appended
    assert problems(check(registry, image.reference)) == [("config", "size_mismatch")]


def test_a_config_over_4_mib_is_refused_unread(registry, deep_pusher, repo_name):
    big = b'{"pad": "' + b"x" * (4 << 20) + b'"}'
    image = deep_pusher.image(repo_name, "big", [deep_pusher.blob(repo_name, b"layer")], config=big)
    run = check(registry, f"{repo_name}:big")
    [problem] = run.json()["problems"]
    assert (problem["kind"], problem["reason"], problem["digest"]) == ("config", "too_large", image["config"].digest)
    assert "4.0 MiB" in problem["detail"]


# --- layers, with --deep --------------------------------------------------------------------------


def test_a_layer_whose_stored_bytes_changed_is_found_only_by_a_deep_check(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    layer = image.layers["linux/arm64"][1]
    flip_middle_byte(registry, layer)
    assert check(registry, image.reference).code == 0  # HEAD: present, right size
    run = check(registry, image.reference, "--deep")
    assert run.code == 1, run.stdout
    [problem] = run.json()["problems"]
    assert (problem["kind"], problem["platform"], problem["reason"]) == ("layer", "linux/arm64", "digest_mismatch")
    assert problem["digest"] == layer


def test_a_deep_check_of_an_intact_image_counts_every_byte(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    run = check(registry, image.reference, "--deep")
    assert run.code == 0, run.stdout
    body = run.json()
    blobs = {*image.configs.values(), *(d for layers in image.layers.values() for d in layers)}
    assert body["deep"] is True
    assert body["bytes_verified"] == sum(registry.blob_data(d).stat().st_size for d in blobs)


def test_human_output_of_a_deep_check_says_how_much_was_hashed(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "v1")
    run = run_cli("check", image.reference, "--deep", env={"REGISTRY_URL": registry.url})
    assert run.code == 0
    assert run.stdout.startswith(f"INTACT {image.reference}")
    assert "KiB of layers and configs hashed." in run.stdout
    assert run.stderr == ""  # no progress line when stderr is not a terminal


def test_sha512_layers_and_configs_are_hashed_with_sha512(registry, deep_pusher, repo_name):
    contents = [b"sha512 layer %d " % i * 4096 for i in range(2)]
    layers = [deep_pusher.blob(repo_name, content, "sha512") for content in contents]
    image = deep_pusher.image(repo_name, "v512", layers, algorithm="sha512")
    assert image["config"].digest.startswith("sha512:")
    run = check(registry, f"{repo_name}:v512", "--deep")
    assert run.code == 0, run.stdout
    assert run.json()["bytes_verified"] == image["config"].size + sum(layer.size for layer in layers)

    flip_middle_byte(registry, digest_of(contents[1]))  # distribution stores it under its sha256
    run = check(registry, f"{repo_name}:v512", "--deep")
    [problem] = run.json()["problems"]
    assert (problem["digest"], problem["reason"]) == (layers[1].digest, "digest_mismatch")
    assert problem["detail"].startswith("stored bytes hash to sha512:")


# --- foreign layers -----------------------------------------------------------------------------


def test_a_non_distributable_layer_without_urls_is_checked_like_any_other(registry, deep_pusher, repo_name):
    layer = deep_pusher.blob(repo_name, b"a windows layer without urls" * 100, media_type=NONDIST_ZSTD)
    deep_pusher.image(repo_name, "win", [deep_pusher.blob(repo_name, b"base"), layer])
    run = check(registry, f"{repo_name}:win")
    assert (run.code, run.json()["objects_checked"]) == (0, 4)
    registry.break_blob_file(layer.digest)
    run = check(registry, f"{repo_name}:win")
    assert run.code == 1
    assert [(p["kind"], p["digest"], p["reason"]) for p in run.json()["problems"]] == [
        ("layer", layer.digest, "missing")
    ]


def test_a_foreign_layer_with_urls_is_skipped_even_deep(registry, deep_pusher, repo_name):
    foreign = Blob("sha256:" + "f" * 64, 12345, FOREIGN_LAYER, ["https://mcr.example.invalid/layer"])
    deep_pusher.image(repo_name, "win", [deep_pusher.blob(repo_name, b"base"), foreign])
    run = check(registry, f"{repo_name}:win", "--deep")
    assert (run.code, run.json()["objects_checked"]) == (0, 3), run.stdout


# --- attestations -------------------------------------------------------------------------------


def test_a_lost_attestation_is_broken_but_pulls_still_work(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest", attestation=True)
    registry.break_manifest_link(repo_name, image.children["attestation"])
    run = check(registry, image.reference)
    assert run.code == 1
    assert [(p["platform"], p["pull_impact"]) for p in run.json()["problems"]] == [("attestation", "none")]
    human = run_cli("check", image.reference, env={"REGISTRY_URL": registry.url})
    assert human.stdout.splitlines()[0].endswith("; pulls still work; only the attestation is gone.")


def test_a_lost_attestation_layer_alone_leaves_pulls_working_too(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest", attestation=True)
    registry.break_layer_link(repo_name, image.layers["unknown/unknown"][0])
    body = check(registry, image.reference).json()
    assert [(p["kind"], p["pull_impact"]) for p in body["problems"]] == [("layer", "none")]


def test_an_attestation_lost_beside_a_platform_means_pulls_fail(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest", attestation=True)
    registry.break_manifest_link(repo_name, image.children["attestation"])
    registry.break_layer_link(repo_name, image.layers["linux/amd64"][0])
    run = run_cli("check", image.reference, "--json", env={"REGISTRY_URL": registry.url})
    assert {(p["platform"], p["pull_impact"]) for p in run.json()["problems"]} == {
        ("attestation", "fails"),
        ("linux/amd64", "fails"),
    }
    human = run_cli("check", image.reference, env={"REGISTRY_URL": registry.url})
    assert "pulls still work" not in human.stdout


# --- scan --deep and the JSON contract ------------------------------------------------------------


def test_scan_deep_finds_changed_layer_bytes_and_matches_the_schema():
    with Registry() as fresh:
        from tests.peers.registry import ImagePusher

        fresh_pusher = ImagePusher(fresh.url)
        ok = fresh_pusher.push_single("viktor/ok", "v1")
        bad = fresh_pusher.push_image("viktor/bad", "latest")
        fresh_pusher.close()
        flip_middle_byte(fresh, bad.layers["linux/amd64"][0])
        plain = run_cli("scan", "--json", env={"REGISTRY_URL": fresh.url})
        deep = run_cli("scan", "--json", "--deep", env={"REGISTRY_URL": fresh.url})
        human = run_cli("scan", "--deep", env={"REGISTRY_URL": fresh.url})
    assert plain.code == 0, plain.stdout
    assert deep.code == 1, deep.stdout
    body = deep.json()
    conforms(body, "scan")
    conforms(plain.json(), "scan")
    by_ref = {r["reference"]: r for r in body["results"]}
    assert by_ref[ok.reference]["status"] == "intact"
    assert problems_of(by_ref[bad.reference]) == [("layer", "digest_mismatch")]
    assert body["summary"]["deep"] is True and body["summary"]["bytes_verified"] > 0
    assert " hashed, " in human.stdout.splitlines()[0]


def problems_of(result: dict) -> list[tuple[str, str]]:
    return [(p["kind"], p["reason"]) for p in result["problems"]]


@pytest.mark.parametrize(
    "env, why",
    [
        ({"DEEP_CONCURRENCY": "0"}, "DEEP_CONCURRENCY must be positive"),
        ({"DEEP_RATE_LIMIT": "-5"}, "DEEP_RATE_LIMIT must be 0 (unlimited)"),
        ({"DEEP_RATE_LIMIT": "fast"}, "DEEP_RATE_LIMIT is malformed"),
    ],
)
def test_bad_deep_settings_are_one_line_and_no_request(env, why):
    run = run_cli("check", "viktor/app:latest", "--deep", "--json", env={"REGISTRY_URL": "http://127.0.0.1:9", **env})
    assert run.code == 2
    assert why in run.json()["error"]
    assert "Traceback" not in run.stderr
