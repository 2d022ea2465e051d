"""The registry password from Vault KV v2 (a real OpenBao dev server), and each way Vault can fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import run_cli
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.openbao import OpenBao
from tests.peers.registry import ImagePusher, Registry, free_port

READ_POLICY = 'path "secret/data/viktor" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    with OpenBao() as server:
        server.put_secret("viktor", {"forgejo_pull_token": "pull-token-s3cret", "other": "x"})
        server.write_policy("registry-bot", READ_POLICY)
        yield server


@pytest.fixture
def forgejo(registry: Registry) -> Iterator[ForgejoStandIn]:
    with ForgejoStandIn(registry) as stand_in:
        yield stand_in


@pytest.fixture
def image(registry: Registry, repo_name: str) -> str:
    pusher = ImagePusher(registry.url)
    return pusher.push_single(repo_name, "v1").reference


def env_for(forgejo: ForgejoStandIn, bao: OpenBao, **extra: str) -> dict[str, str]:
    return {"REGISTRY_URL": forgejo.url, "REGISTRY_USERNAME": "cluster-puller", "VAULT_ADDR": bao.addr, **extra}


def test_the_pull_token_comes_from_vault_with_a_token(forgejo, bao, image):
    token = bao.create_token(["registry-bot"])
    run = run_cli("check", image, env=env_for(forgejo, bao, VAULT_TOKEN=token))
    assert run.code == 0, run.stdout + run.stderr
    assert "pull-token-s3cret" not in run.stdout + run.stderr


def test_the_pull_token_comes_from_vault_with_approle(forgejo, bao, image):
    role_id, secret_id = bao.enable_approle("registry-bot", ["registry-bot"])
    env = env_for(forgejo, bao, VAULT_AUTH="approle", VAULT_ROLE_ID=role_id, VAULT_SECRET_ID=secret_id)
    run = run_cli("check", image, env=env)
    assert run.code == 0, run.stdout + run.stderr


def test_registry_password_in_the_environment_wins_over_vault(forgejo, bao, image):
    env = env_for(forgejo, bao, VAULT_TOKEN="not-a-real-token", REGISTRY_PASSWORD="pull-token-s3cret")
    assert run_cli("check", image, env=env).code == 0


def test_a_token_without_the_policy_is_denied_in_one_sentence(forgejo, bao, image):
    token = bao.create_token(["default"])
    run = run_cli("check", image, "--json", env=env_for(forgejo, bao, VAULT_TOKEN=token))
    assert run.code == 2
    error = run.json()["error"]
    assert "denied" in error and bao.addr in error
    assert token not in run.stdout + run.stderr


def test_a_missing_field_names_the_field(forgejo, bao, image):
    token = bao.create_token(["registry-bot"])
    env = env_for(forgejo, bao, VAULT_TOKEN=token, VAULT_REGISTRY_FIELD="nope")
    run = run_cli("check", image, "--json", env=env)
    assert run.code == 2
    assert "no field 'nope'" in run.json()["error"]


def test_an_unreachable_vault_says_unreachable(forgejo, image):
    env = {
        "REGISTRY_URL": forgejo.url,
        "VAULT_ADDR": f"http://127.0.0.1:{free_port()}",
        "VAULT_TOKEN": "t",
    }
    run = run_cli("check", image, "--json", env=env)
    assert run.code == 2
    assert "unreachable" in run.json()["error"]


def test_a_sealed_vault_says_sealed(forgejo, image):
    with OpenBao() as sealed:
        sealed.seal()
        run = run_cli("check", image, "--json", env=env_for(forgejo, sealed, VAULT_TOKEN=sealed.root_token))
    assert run.code == 2
    assert "sealed" in run.json()["error"]
    assert "Traceback" not in run.stderr


def test_a_registry_entry_reads_its_password_from_vault(forgejo, bao, image, tmp_path):
    """`password_vault: path#field` in the `registries:` list: read from Vault when first needed, never shown."""
    token = bao.create_token(["registry-bot"])
    path = tmp_path / "bot.yaml"
    path.write_text(
        "registries:\n"
        f"  - {{url: {forgejo.url}, username: cluster-puller, password_vault: 'viktor#forgejo_pull_token'}}\n"
    )
    env = {"REGISTRY_BOT_CONFIG": str(path), "VAULT_ADDR": bao.addr, "VAULT_TOKEN": token}
    run = run_cli("check", image, env=env)
    assert run.code == 0, run.stdout + run.stderr
    assert "pull-token-s3cret" not in run.stdout + run.stderr
    path.write_text(
        f"registries:\n  - {{url: {forgejo.url}, username: cluster-puller, password_vault: 'viktor#no_such_field'}}\n"
    )
    missing = run_cli("check", image, env=env)
    assert missing.code == 2 and len(missing.stdout.strip().splitlines()) == 1
    assert "no_such_field" in missing.stdout
