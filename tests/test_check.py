"""`registry-bot check` against a real registry: intact images, each way of breaking one, exit codes, output."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.peers.registry import ImagePusher, Registry


def check(registry: Registry, ref: str, *extra: str, env: dict[str, str] | None = None):
    return run_cli("check", ref, "--json", *extra, env={"REGISTRY_URL": registry.url, **(env or {})})


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_an_intact_multi_arch_index_passes_with_every_object_counted(registry, pusher, repo_name, docker):
    image = pusher.push_image(repo_name, "latest", docker=docker, attestation=not docker)
    run = check(registry, image.reference)
    assert run.code == 0, run.stdout + run.stderr
    body = run.json()
    assert body["status"] == "intact"
    assert body["digest"] == image.digest
    assert body["problems"] == []
    # index + per platform (manifest + config + 2 layers) + attestation (manifest + config + 1 layer)
    assert body["objects_checked"] == 1 + 2 * 4 + (0 if docker else 3)
    assert body["reference"] == image.reference
    assert body["registry"] == registry.host
    assert isinstance(body["elapsed_ms"], int)


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_an_intact_single_manifest_passes(registry, pusher, repo_name, docker):
    image = pusher.push_single(repo_name, "v1", docker=docker)
    run = check(registry, image.reference)
    assert run.code == 0, run.stdout
    assert run.json()["objects_checked"] == 4


def test_by_digest_and_with_the_registry_host_prefix(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    assert check(registry, f"{repo_name}@{image.digest}").code == 0
    assert check(registry, f"{registry.host}/{image.reference}").code == 0


def test_a_child_manifest_file_gone_is_reported_with_its_platform(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    registry.break_blob_file(image.children["linux/amd64"])
    run = check(registry, image.reference)
    assert run.code == 1
    body = run.json()
    assert body["status"] == "broken"
    assert body["problems"] == [
        {
            "digest": image.children["linux/amd64"],
            "kind": "manifest",
            "platform": "linux/amd64",
            "http_status": 404,
            "reason": "missing",
            "detail": "MANIFEST_UNKNOWN",
            "pull_impact": "fails",
        }
    ]


def test_a_child_link_gone_in_one_repository_is_missing(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest", attestation=True)
    registry.break_manifest_link(repo_name, image.children["attestation"])
    body = check(registry, image.reference).json()
    assert [(p["platform"], p["reason"]) for p in body["problems"]] == [("attestation", "missing")]


def test_a_layer_gone_is_found_although_every_manifest_still_answers(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    layer = image.layers["linux/arm64"][1]
    registry.break_layer_link(repo_name, layer)
    body = check(registry, image.reference).json()
    assert body["status"] == "broken"
    assert [(p["kind"], p["platform"], p["digest"], p["http_status"], p["reason"]) for p in body["problems"]] == [
        ("layer", "linux/arm64", layer, 404, "missing")
    ]


def test_a_config_gone_is_missing(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "v2")
    registry.break_blob_file(image.configs["linux/amd64"])
    body = check(registry, image.reference).json()
    assert [(p["kind"], p["reason"], p["platform"]) for p in body["problems"]] == [("config", "missing", None)]


def test_changed_child_manifest_bytes_are_flagged(registry, pusher, repo_name):
    # distribution verifies a manifest fetched by digest and answers 500 when its bytes changed.
    image = pusher.push_image(repo_name, "latest")
    registry.corrupt_blob_file(image.children["linux/amd64"], same_size=True)
    body = check(registry, image.reference, env={"REGISTRY_RETRIES": "1"}).json()
    assert body["status"] == "broken"
    assert [(p["kind"], p["platform"], p["reason"], p["http_status"]) for p in body["problems"]] == [
        ("manifest", "linux/amd64", "unexpected_status", 500)
    ]


def test_changed_index_bytes_are_a_digest_mismatch_of_the_index(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    registry.corrupt_blob_file(image.digest)
    body = check(registry, image.reference).json()
    assert body["problems"][0]["kind"] == "index"
    assert body["problems"][0]["reason"] == "digest_mismatch"


def test_a_layer_whose_stored_size_changed_is_a_size_mismatch(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "v3")
    layer = image.layers["linux/amd64"][0]
    registry.corrupt_blob_file(layer)
    body = check(registry, image.reference).json()
    assert [(p["kind"], p["reason"]) for p in body["problems"]] == [("layer", "size_mismatch")]


def test_foreign_layers_are_skipped_not_flagged(registry, pusher, repo_name):
    image = pusher.push_single(repo_name, "win", docker=True, foreign_layer=True)
    run = check(registry, image.reference)
    assert run.code == 0, run.stdout
    assert run.json()["objects_checked"] == 4


def test_a_tag_that_does_not_exist_is_broken_with_a_manifest_problem(registry, pusher, repo_name):
    pusher.push_single(repo_name, "v1")
    run = check(registry, f"{repo_name}:nope")
    assert run.code == 1
    problem = run.json()["problems"][0]
    assert (problem["kind"], problem["reason"], problem["http_status"]) == ("manifest", "missing", 404)


def test_human_output_is_a_verdict_then_one_line_per_problem(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    registry.break_blob_file(image.children["linux/amd64"])
    run = run_cli("check", image.reference, env={"REGISTRY_URL": registry.url})
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith(f"BROKEN {image.reference} on {registry.host}")
    short = image.children["linux/amd64"][:19]
    assert lines[1].split() == ["manifest", "linux/amd64", short, "404", "missing", "(MANIFEST_UNKNOWN)"]
    assert len(lines) == 2
    assert run.stderr == ""


@pytest.mark.parametrize(
    "ref, why",
    [
        ("Viktor/App:latest", "capital"),
        ("viktor/app@sha256:abc", "64 hex"),
        ("viktor/app@md5:0123456789abcdef0123456789abcdef", "not a digest"),
        ("ghcr.io/viktor/app:latest", "not this bot's registry"),
        ("viktor/app:-bad", "not a valid tag"),
        ("viktor//app:latest", "not a valid repository name"),
        ("viktor/app:la test", "white space"),
        ("", "No image given"),
    ],
)
def test_bad_references_exit_2_with_one_line_and_no_request(ref, why):
    # REGISTRY_URL points at a port nothing listens on: a request would fail differently.
    run = run_cli("check", ref, "--json", env={"REGISTRY_URL": "http://127.0.0.1:9"})
    assert run.code == 2
    body = run.json()
    assert body["status"] == "error"
    assert why in body["error"]
    assert "\n" not in body["error"]
    assert "Traceback" not in run.stderr


def test_an_unreachable_registry_is_exit_2(unused_port):
    run = run_cli(
        "check", "viktor/app:latest", env={"REGISTRY_URL": f"http://127.0.0.1:{unused_port}", "REGISTRY_RETRIES": "2"}
    )
    assert run.code == 2
    assert "unreachable" in run.stdout
    assert "Traceback" not in run.stderr


def test_missing_registry_url_is_exit_2_naming_it():
    run = run_cli("check", "viktor/app:latest", "--json")
    assert run.code == 2
    assert "REGISTRY_URL" in run.json()["error"]


@pytest.mark.parametrize("ref", ["viktor/app:latest", "viktor/app"])
def test_without_a_registry_the_verdict_names_no_empty_host(ref):
    run = run_cli("check", ref)
    assert run.code == 2
    line = run.stdout.strip()
    assert line.startswith("COULD NOT CHECK viktor/app:latest") and line.endswith(
        ": Missing required settings: REGISTRY_URL."
    )
    assert " on :" not in line and " on " not in line


def test_a_bare_name_is_checked_as_latest_and_the_verdict_says_so(registry, pusher, repo_name):
    image = pusher.push_image(repo_name, "latest")
    run = check(registry, repo_name)
    assert run.code == 0, run.stdout + run.stderr
    body = run.json()
    assert (body["reference"], body["digest"], body["status"]) == (image.reference, image.digest, "intact")
    assert body["note"] == "no tag given; checked :latest"
    human = run_cli("check", repo_name, env={"REGISTRY_URL": registry.url}).stdout
    assert human.startswith(f"INTACT {repo_name}:latest (no tag given; checked :latest) on {registry.host}")
    assert "note" not in check(registry, image.reference).json()  # a tag given is not remarked on


def test_version_prints_the_version():
    import bot

    run = run_cli("--version")
    assert (run.code, run.stdout.strip(), run.stderr) == (0, f"registry-bot {bot.__version__}", "")


def test_sha512_digests_are_accepted(registry):
    run = check(registry, "viktor/none@sha512:" + "a" * 128)
    assert run.code == 1  # well-formed, and not there
    assert run.json()["problems"][0]["reason"] == "missing"


def test_multi_component_names(registry, pusher, repo_name):
    image = pusher.push_single(f"{repo_name}/team/app", "v1")
    assert check(registry, image.reference).code == 0


@pytest.fixture
def unused_port() -> int:
    from tests.peers.registry import free_port

    return free_port()


def test_basic_auth_registry_with_the_right_password(auth_registry: Registry, repo_name):
    pusher = ImagePusher(auth_registry.url, auth=("cluster-puller", "pull-token-s3cret"))
    image = pusher.push_image(repo_name, "latest")
    env = {"REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "pull-token-s3cret"}
    run = check(auth_registry, image.reference, env=env)
    assert run.code == 0, run.stdout


def test_basic_auth_refused_is_exit_2_saying_authentication_failed(auth_registry: Registry):
    env = {"REGISTRY_USERNAME": "cluster-puller", "REGISTRY_PASSWORD": "wrong-password"}
    run = check(auth_registry, "viktor/app:latest", env=env)
    assert run.code == 2
    assert "Authentication failed" in run.json()["error"]
    assert "wrong-password" not in run.stdout + run.stderr
