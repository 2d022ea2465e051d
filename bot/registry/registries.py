"""The registries one bot watches: the YAML file's `registries:` list, or one entry made of REGISTRY_URL and
its friends. The first entry is the default for a reference without a host.

Each entry becomes a per-registry view of the settings (`view`): the Settings the registry code has always
read (REGISTRY_URL, REGISTRY_KIND, REGISTRY_HOSTS...), filled from that entry alone, so a client built
from it trusts only that registry's hosts and carries only its credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bot.errors import ConfigError

if TYPE_CHECKING:
    from bot.config import Secret, Settings
    from bot.secrets import SecretResolver

KINDS = ("forgejo", "distribution", "ghcr")
OWNER_TYPES = ("", "user", "org")
GITHUB_API = "https://api.github.com"
# Every key an entry may have, with what it means (`registry-bot settings --markdown` prints this table).
KEYS: dict[str, str] = {
    "url": "Scheme and host (https://ghcr.io)",
    "kind": "`forgejo`, `distribution` or `ghcr`: how the registry is listed and versions are deleted",
    "username": "The registry user",
    "password": "The password or token itself; with a username, exactly one of `password`, `password_env`, "
    "`password_vault`",
    "password_env": "The name of an environment variable holding the password",
    "password_vault": "`path#field` of a Vault KV secret holding the password",
    "instance": "The `instance` label the probe's metrics and alerts carry (default: the host)",
    "hosts": "Other host[:port] names of the same registry",
    "token_realms": "Hosts besides its own that may receive its login as a Bearer token service",
    "owner": "GHCR: the user or organisation whose packages are listed (Forgejo: the owner a scan lists when "
    "the catalog cannot serve)",
    "owner_type": "GHCR: `user` or `org` (default: try the user, then the org)",
    "github_api_url": f"GHCR: GitHub's REST API (default {GITHUB_API})",
    "github_token": "GHCR: a token for the REST API (default: the registry password, which for GHCR is the PAT)",
    "github_token_env": "GHCR: the name of an environment variable holding that token",
    "github_token_vault": "GHCR: `path#field` of a Vault KV secret holding that token",
    "tls_verify": "Verify the registry's TLS certificate (default true)",
    "ca_file": "CA bundle for the registry's TLS certificate",
    "timeout": "Seconds before one registry request times out (default REGISTRY_TIMEOUT)",
    "concurrency": "Registry requests in flight at once (default REGISTRY_CONCURRENCY)",
    "scan_rate_limit": "Requests per second a scan may send to it, 0 unlimited (default SCAN_RATE_LIMIT)",
}
_SOURCES = ("password", "password_env", "password_vault")
_TOKEN_SOURCES = ("github_token", "github_token_env", "github_token_vault")


@dataclass(frozen=True)
class RegistryConfig:
    """One registry the bot watches."""

    url: str
    kind: str = "forgejo"
    username: str = ""
    password: Secret | None = None
    password_env: str = ""
    password_vault: str = ""  # path#field
    instance: str = ""
    hosts: tuple[str, ...] = ()
    token_realms: tuple[str, ...] = ()
    owner: str = ""
    owner_type: str = ""
    github_api_url: str = GITHUB_API
    github_token: Secret | None = None
    github_token_env: str = ""
    github_token_vault: str = ""
    tls_verify: bool = True
    ca_file: str = ""
    timeout: float | None = None
    concurrency: int | None = None
    scan_rate_limit: float | None = None
    from_environment: bool = field(default=False, compare=False)  # REGISTRY_URL and friends

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def all_hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h.lower() for h in (self.host, *self.hosts) if h))

    @property
    def label(self) -> str:
        """The `instance` label of its metrics and alerts."""
        return self.instance or self.host

    def describe(self) -> str:
        """One line for `registry-bot settings`: every key that is set, secrets masked."""
        parts = [f"url={self.url}", f"kind={self.kind}"]
        for key in KEYS:
            if key in ("url", "kind"):
                continue
            value = getattr(self, key)
            if key == "github_api_url" and (self.kind != "ghcr" or value == GITHUB_API):
                continue
            if key == "tls_verify" and value:
                continue
            if value in ("", (), None):
                continue
            if key in ("password", "github_token"):
                value = "(set)"
            elif isinstance(value, tuple):
                value = ",".join(value)
            parts.append(f"{key}={value}")
        return " ".join(parts)

    def view(self, base: Settings) -> Settings:
        """The settings as this registry's code reads them: its URL, kind, hosts, limits, and nothing else's."""
        from bot.config import Secret

        values: dict[str, Any] = {
            "registry_url": self.url,
            "registry_username": self.username,
            "registry_kind": self.kind,
            "registry_hosts": self.hosts,
            "registry_token_realms": self.token_realms,
            "registry_instance": self.instance,
            "registry_tls_verify": self.tls_verify,
            "registry_ca_file": self.ca_file,
            "registries": (self,),
        }
        if not self.from_environment:
            values["registry_password"] = Secret("")  # resolved per entry (`password_of`), never shared
        if self.timeout is not None:
            values["registry_timeout"] = self.timeout
        if self.concurrency is not None:
            values["registry_concurrency"] = self.concurrency
        if self.scan_rate_limit is not None:
            values["scan_rate_limit"] = self.scan_rate_limit
        if self.kind == "forgejo" and self.owner:
            values["forgejo_owners"] = (self.owner,)
        return base.with_values(**values)


# --- the list ----------------------------------------------------------------------------------------------


def registry_list(settings: Settings) -> tuple[RegistryConfig, ...]:
    """Every registry the bot watches, the default first; () when none is configured."""
    if settings.registries:
        return tuple(settings.registries)
    if not settings.registry_url:
        return ()
    return (from_environment(settings),)


def from_environment(settings: Settings) -> RegistryConfig:
    """The one-entry list REGISTRY_URL and its friends mean."""
    return RegistryConfig(
        url=settings.registry_url,
        kind=settings.registry_kind,
        username=settings.registry_username,
        instance=settings.registry_instance,
        hosts=settings.registry_hosts,
        token_realms=settings.registry_token_realms,
        tls_verify=settings.registry_tls_verify,
        ca_file=settings.registry_ca_file,
        from_environment=True,
    )


def all_hosts(settings: Settings) -> tuple[str, ...]:
    """Every host[:port] any configured registry answers to: what a reference may name."""
    return tuple(dict.fromkeys(h for entry in registry_list(settings) for h in entry.all_hosts))


def for_host(settings: Settings, host: str | None) -> RegistryConfig | None:
    """The registry a reference's host names (the default one for no host); None when none does."""
    entries = registry_list(settings)
    if not entries:
        return None
    if not host:
        return entries[0]
    wanted = host.lower()
    return next((entry for entry in entries if wanted in entry.all_hosts), None)


def for_instance(settings: Settings, instance: str) -> RegistryConfig | None:
    """The registry whose metrics and alerts carry this `instance` label."""
    return next((entry for entry in registry_list(settings) if entry.label == instance), None)


def view_for_host(settings: Settings, host: str) -> Settings | None:
    """The settings as the registry `host` reads them (an incident's registry); None when none is configured."""
    entry = for_host(settings, host) if host else None
    return entry.view(settings) if entry is not None else None


def registries_named(settings: Settings) -> str:
    """The registries' hosts for a message: `forgejo.example, ghcr.io`."""
    return ", ".join(entry.host for entry in registry_list(settings)) or "no registry"


def require_registry(settings: Settings) -> tuple[RegistryConfig, ...]:
    entries = registry_list(settings)
    if not entries:
        raise ConfigError("No registry configured: set REGISTRY_URL, or list `registries:` in REGISTRY_BOT_CONFIG.")
    return entries


# --- secrets -------------------------------------------------------------------------------------------------


async def password_of(entry: RegistryConfig, secrets: SecretResolver) -> str:
    """The registry's password: REGISTRY_PASSWORD (or its Vault default) for the environment's entry, else the
    entry's own source. "" when it has none."""
    if entry.from_environment:
        return await secrets.get("registry_password")
    return await _secret(entry.password, entry.password_env, entry.password_vault, secrets)


async def github_token_of(entry: RegistryConfig, secrets: SecretResolver) -> str:
    """The token for GitHub's REST API: the entry's own, else its registry password (GHCR's is the PAT)."""
    if entry.github_token or entry.github_token_env or entry.github_token_vault:
        return await _secret(entry.github_token, entry.github_token_env, entry.github_token_vault, secrets)
    return await password_of(entry, secrets)


async def _secret(value: Secret | None, env: str, vault: str, secrets: SecretResolver) -> str:
    from bot.logsetup import register_secret

    if value:
        register_secret(value.reveal())
        return value.reveal()
    if env:
        found = os.environ.get(env, "")
        register_secret(found)
        return found
    if vault:
        path, _, key = vault.partition("#")
        return await secrets.read_vault(path, key)
    return ""


# --- parsing the YAML list --------------------------------------------------------------------------------


def parse_registries(raw: Any) -> tuple[RegistryConfig, ...]:
    """The `registries:` list of the YAML file, each entry checked; ConfigError (one line) on anything wrong."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("The config file's `registries` must be a non-empty list of registries.")
    entries = tuple(_entry(item, index) for index, item in enumerate(raw, start=1))
    seen_hosts: dict[str, int] = {}
    seen_labels: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        for host in entry.all_hosts:
            if host in seen_hosts:
                raise ConfigError(f"Registries {seen_hosts[host]} and {index} both name the host {host}.")
            seen_hosts[host] = index
        if entry.label in seen_labels:
            raise ConfigError(f"Registries {seen_labels[entry.label]} and {index} both have instance {entry.label}.")
        seen_labels[entry.label] = index
    return entries


def _entry(item: Any, index: int) -> RegistryConfig:
    where = f"Registry {index} in the config file"
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys (url, kind, username...).")
    data = {str(k).lower(): v for k, v in item.items() if v is not None}
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown keys: {', '.join(unknown)}; known: {', '.join(KEYS)}.")
    url = str(data.get("url", ""))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ConfigError(f"{where}: url must be scheme and host, like https://ghcr.io, not '{url[:100]}'.")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: url must not carry credentials; use username and password_env or _vault.")
    where = f"Registry {parts.netloc} in the config file"
    kind = str(data.get("kind", "forgejo"))
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be forgejo, distribution or ghcr, not '{kind[:40]}'.")
    _one_source(data, _SOURCES, where, required=bool(data.get("username")))
    _one_source(data, _TOKEN_SOURCES, where, required=False)
    for key in ("password_vault", "github_token_vault"):
        if key in data and not _is_vault_spec(str(data[key])):
            raise ConfigError(f"{where}: {key} must be path#field, not '{str(data[key])[:60]}'.")
    owner_type = str(data.get("owner_type", ""))
    if owner_type not in OWNER_TYPES:
        raise ConfigError(f"{where}: owner_type must be user or org, not '{owner_type[:40]}'.")
    if kind == "ghcr" and not data.get("owner"):
        raise ConfigError(f"{where}: a ghcr registry needs `owner`, the user or organisation whose packages it lists.")
    return _build(data, url.rstrip("/"), kind, where)


def _build(data: dict[str, Any], url: str, kind: str, where: str) -> RegistryConfig:
    from bot.config import Secret

    def text(key: str) -> str:
        return str(data.get(key, ""))

    def hosts(key: str) -> tuple[str, ...]:
        value = data.get(key, ())
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: {key} must be a list of host[:port] names.")
        return tuple(str(h).strip().lower() for h in items if str(h).strip())

    def number(key: str, kind_: type[int] | type[float]) -> Any:
        if key not in data:
            return None
        try:
            value = kind_(data[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be a number, not '{str(data[key])[:40]}'.") from None
        if value <= 0:
            raise ConfigError(f"{where}: {key} must be positive.")
        return value

    rate = data.get("scan_rate_limit")
    if rate is not None:
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            rate = -1.0
        if not 0 <= rate < float("inf"):  # also refuses nan
            raise ConfigError(f"{where}: scan_rate_limit must be 0 (unlimited) or requests per second.")
    verify = data.get("tls_verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"{where}: tls_verify must be true or false.")
    api = text("github_api_url") or GITHUB_API
    if urlsplit(api).scheme not in ("http", "https") or not urlsplit(api).netloc:
        raise ConfigError(f"{where}: github_api_url must be an http(s) URL, not '{api[:100]}'.")
    return RegistryConfig(
        url=url,
        kind=kind,
        username=text("username"),
        password=Secret(text("password")) if "password" in data else None,
        password_env=text("password_env"),
        password_vault=text("password_vault"),
        instance=text("instance"),
        hosts=hosts("hosts"),
        token_realms=hosts("token_realms"),
        owner=text("owner"),
        owner_type=text("owner_type"),
        github_api_url=api.rstrip("/"),
        github_token=Secret(text("github_token")) if "github_token" in data else None,
        github_token_env=text("github_token_env"),
        github_token_vault=text("github_token_vault"),
        tls_verify=verify,
        ca_file=text("ca_file"),
        timeout=number("timeout", float),
        concurrency=number("concurrency", int),
        scan_rate_limit=rate,
    )


def _one_source(data: dict[str, Any], keys: tuple[str, ...], where: str, *, required: bool) -> None:
    given = [key for key in keys if key in data and str(data[key]) != ""]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of {', '.join(keys)}, not {' and '.join(given)}.")
    if required and not given:
        raise ConfigError(f"{where} has a username but no password: give one of {', '.join(keys)}.")


def _is_vault_spec(spec: str) -> bool:
    path, sep, key = spec.partition("#")
    return bool(sep and path and key)
