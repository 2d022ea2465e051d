"""Settings: environment over YAML, secrets never shown, one clear line for anything wrong."""

from __future__ import annotations

import pytest

from bot.config import Secret, load_settings
from bot.errors import ConfigError


def test_environment_wins_over_the_file(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("registry_url: https://file.example\nregistry_username: from-file\nregistry_hosts: [a.example]\n")
    settings = load_settings({"REGISTRY_BOT_CONFIG": str(path), "REGISTRY_URL": "https://env.example:8443"})
    assert settings.registry_url == "https://env.example:8443"
    assert settings.registry_username == "from-file"
    assert settings.all_registry_hosts == ("env.example:8443", "a.example")
    assert settings.instance == "env.example:8443"


def test_secrets_do_not_show_in_repr_or_str():
    settings = load_settings({"REGISTRY_URL": "https://r.example", "REGISTRY_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert settings.registry_password.reveal() == "hunter2"
    assert str(Secret("x")) == "Secret('**********')"


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"REGISTRY_URL": "forgejo.example"}, "REGISTRY_URL must be scheme and host"),
        ({"REGISTRY_URL": "https://u:p@forgejo.example"}, "must not carry credentials"),
        ({"REGISTRY_TIMEOUT": "soon"}, "REGISTRY_TIMEOUT is malformed"),
        ({"REGISTRY_TLS_VERIFY": "maybe"}, "REGISTRY_TLS_VERIFY is malformed"),
        ({"REGISTRY_KIND": "harbor"}, "REGISTRY_KIND must be"),
        ({"REGISTRY_CONCURRENCY": "0"}, "must be positive"),
        ({"REGISTRY_BOT_CONFIG": "/nonexistent/bot.yaml"}, "Cannot read the config file"),
    ],
)
def test_bad_settings_are_one_line(env, fragment):
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("registry_ulr: https://typo.example\n")
    with pytest.raises(ConfigError, match="registry_ulr"):
        load_settings({"REGISTRY_BOT_CONFIG": str(path)})


def test_require_names_every_missing_setting():
    settings = load_settings({})
    with pytest.raises(ConfigError, match="REGISTRY_URL, VAULT_ADDR"):
        settings.require("registry_url", "vault_addr")
