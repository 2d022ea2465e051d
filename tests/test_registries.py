"""The `registries:` list: every key of an entry, the environment's one-entry list, one line for anything wrong."""

from __future__ import annotations

import pytest

from bot.config import load_settings
from bot.errors import ConfigError
from bot.registry.registries import all_hosts, for_host, for_instance, registry_list
from tests.conftest import run_cli

TWO = """
registries:
  - {url: https://forgejo.viktorbarzin.me, kind: forgejo, username: cluster-puller,
     password_vault: "viktor#forgejo_pull_token"}
  - {url: https://ghcr.io, kind: ghcr, owner: viktorbarzin, username: viktorbarzin, password_vault: "viktor#ghcr_pat"}
"""


def config(tmp_path, text: str) -> dict[str, str]:
    path = tmp_path / "bot.yaml"
    path.write_text(text)
    return {"REGISTRY_BOT_CONFIG": str(path)}


def test_the_issue_example_is_two_registries_the_first_the_default(tmp_path):
    settings = load_settings(config(tmp_path, TWO))
    forgejo, ghcr = registry_list(settings)
    assert (forgejo.kind, forgejo.host, forgejo.label, forgejo.password_vault) == (
        "forgejo",
        "forgejo.viktorbarzin.me",
        "forgejo.viktorbarzin.me",
        "viktor#forgejo_pull_token",
    )
    assert (ghcr.kind, ghcr.owner, ghcr.owner_type, ghcr.github_api_url) == (
        "ghcr",
        "viktorbarzin",
        "",
        "https://api.github.com",
    )
    assert for_host(settings, None) == forgejo
    assert for_host(settings, "GHCR.io") == ghcr
    assert for_host(settings, "docker.io") is None
    assert for_instance(settings, "ghcr.io") == ghcr and for_instance(settings, "elsewhere") is None
    assert all_hosts(settings) == ("forgejo.viktorbarzin.me", "ghcr.io")


def test_every_key_of_an_entry(tmp_path):
    text = """
registries:
  - url: https://ghcr.io
    kind: ghcr
    username: viktorbarzin
    password_env: GHCR_PAT
    instance: ghcr
    hosts: [ghcr-mirror.internal:5000]
    owner: viktorbarzin
    owner_type: org
    github_api_url: https://github.example/api/v3/
    github_token_vault: "viktor#ghcr_api"
    tls_verify: false
    ca_file: /etc/ssl/ca.pem
    timeout: 4
    concurrency: 8
    scan_rate_limit: 25
"""
    settings = load_settings(config(tmp_path, text))
    (entry,) = registry_list(settings)
    assert entry.hosts == ("ghcr-mirror.internal:5000",) and entry.label == "ghcr"
    assert (entry.owner_type, entry.github_api_url, entry.github_token_vault) == (
        "org",
        "https://github.example/api/v3",
        "viktor#ghcr_api",
    )
    view = entry.view(settings)
    assert (view.registry_url, view.registry_kind, view.registry_timeout, view.registry_concurrency) == (
        "https://ghcr.io",
        "ghcr",
        4.0,
        8,
    )
    assert view.all_registry_hosts == ("ghcr.io", "ghcr-mirror.internal:5000") and view.scan_rate_limit == 25.0
    assert (view.instance, view.registry_tls_verify, view.registry_ca_file) == ("ghcr", False, "/etc/ssl/ca.pem")


def test_the_environment_means_a_one_entry_list():
    settings = load_settings(
        {"REGISTRY_URL": "https://forgejo.example", "REGISTRY_HOSTS": "forgejo.svc:3000", "REGISTRY_INSTANCE": "fj"}
    )
    (entry,) = registry_list(settings)
    assert entry.from_environment and entry.all_hosts == ("forgejo.example", "forgejo.svc:3000")
    assert entry.label == "fj" and entry.view(settings).registry_url == "https://forgejo.example"
    assert registry_list(load_settings({})) == ()


def test_both_is_one_line_at_start(tmp_path):
    env = {**config(tmp_path, TWO), "REGISTRY_URL": "https://forgejo.example"}
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    assert "Both REGISTRY_URL and the config file's `registries:` list are set" in str(error.value)
    assert "\n" not in str(error.value)
    run = run_cli("settings", env=env)
    assert run.code == 2 and len(run.stderr.strip().splitlines()) == 1 and "Both REGISTRY_URL" in run.stderr


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ("[]", "must be a non-empty list"),
        ("[https://ghcr.io]", "must be a mapping"),
        ("[{url: ghcr.io}]", "url must be scheme and host"),
        ("[{url: 'https://u:p@ghcr.io'}]", "must not carry credentials"),
        ("[{url: https://ghcr.io, kind: harbor}]", "kind must be forgejo, distribution or ghcr"),
        ("[{url: https://ghcr.io, kind: ghcr}]", "needs `owner`"),
        ("[{url: https://r.example, pasword: x}]", "unknown keys: pasword"),
        ("[{url: https://r.example, username: u}]", "has a username but no password"),
        ("[{url: https://r.example, username: u, password: a, password_env: B}]", "not password and password_env"),
        ("[{url: https://r.example, password_vault: nofield}]", "password_vault must be path#field"),
        ("[{url: https://r.example, timeout: soon}]", "timeout must be a number"),
        ("[{url: https://r.example, concurrency: 0}]", "concurrency must be positive"),
        ("[{url: https://r.example, owner_type: team}]", "owner_type must be user or org"),
        ("[{url: https://r.example, scan_rate_limit: -1}]", "scan_rate_limit must be 0 (unlimited)"),
        ("[{url: https://r.example, scan_rate_limit: .nan}]", "scan_rate_limit must be 0 (unlimited)"),
        ("[{url: https://r.example, scan_rate_limit: fast}]", "scan_rate_limit must be 0 (unlimited)"),
        ("[{url: https://a.example}, {url: https://b.example, hosts: [A.example]}]", "both name the host a.example"),
        ("[{url: https://a.example, instance: x}, {url: https://b.example, instance: x}]", "both have instance x"),
    ],
)
def test_a_bad_entry_is_one_line(tmp_path, entries, fragment):
    with pytest.raises(ConfigError) as error:
        load_settings(config(tmp_path, f"registries: {entries}\n"))
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_settings_shows_the_list_with_secrets_masked(tmp_path):
    text = TWO + "  - {url: http://127.0.0.1:5000, kind: distribution, username: u, password: hunter22}\n"
    run = run_cli("settings", env=config(tmp_path, text))
    assert run.code == 0
    lines = [line for line in run.stdout.splitlines() if line.startswith("REGISTRIES")]
    assert lines[0].startswith("REGISTRIES=3 (the config file's registries; the first is the default")
    assert lines[1] == (
        "REGISTRIES[1]=url=https://forgejo.viktorbarzin.me kind=forgejo username=cluster-puller "
        "password_vault=viktor#forgejo_pull_token"
    )
    assert lines[2] == (
        "REGISTRIES[2]=url=https://ghcr.io kind=ghcr username=viktorbarzin password_vault=viktor#ghcr_pat "
        "owner=viktorbarzin"
    )
    assert lines[3] == "REGISTRIES[3]=url=http://127.0.0.1:5000 kind=distribution username=u password=(set)"
    assert "hunter22" not in run.stdout
    single = run_cli("settings", env={"REGISTRY_URL": "https://forgejo.example"})
    assert "REGISTRIES[1]=url=https://forgejo.example kind=forgejo" in single.stdout
