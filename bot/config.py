"""One Settings object, read from the environment and an optional YAML file (REGISTRY_BOT_CONFIG).

The environment wins over the file. Secrets are wrapped in `Secret`, whose str/repr never shows the value,
so a settings object can be logged or printed safely. Plain dataclasses (not pydantic) keep the
check/scan start-up fast: importing pydantic-settings costs ~150 ms, more than a small scan.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bot.errors import ConfigError, UserFacingError


class Secret:
    """A secret value: shows as '**********' everywhere but `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


def _setting(default: Any, doc: str, *, secret: bool = False, vault: str = "") -> Any:
    return field(default=default, metadata={"doc": doc, "secret": secret, "vault": vault})


@dataclass(frozen=True)
class Settings:
    # --- the registry -------------------------------------------------------------------------------
    registry_url: str = _setting("", "Registry base URL, scheme and host (https://forgejo.example.org).")
    registry_username: str = _setting("", "User for the registry (Basic, or the token login).")
    registry_password: Secret = _setting(
        Secret(""),
        "Password or token for the registry.",
        secret=True,
        vault="VAULT_KV_MOUNT/VAULT_REGISTRY_PATH field VAULT_REGISTRY_FIELD",
    )
    registry_kind: str = _setting("forgejo", "forgejo or distribution: how versions are listed and deleted.")
    registry_hosts: tuple[str, ...] = _setting(
        (),
        "Other host[:port] names of the same registry (in-cluster service name, public name, mirrors), "
        "comma-separated; trusted as its own (a token realm there gets the login).",
    )
    registry_token_realms: tuple[str, ...] = _setting(
        (),
        "Hosts (host[:port]) besides the registry's own that may receive its login as a Bearer token service "
        "(e.g. auth.docker.io), comma-separated; the login goes nowhere else, and never from https to http.",
    )
    registry_instance: str = _setting(
        "", "The `instance` label the probe's metrics and alerts carry (default: REGISTRY_URL's host[:port])."
    )
    registry_tls_verify: bool = _setting(True, "Verify the registry's TLS certificate.")
    registry_ca_file: str = _setting("", "CA bundle for the registry's TLS certificate.")
    registry_timeout: float = _setting(10.0, "Seconds before one registry request times out.")
    registry_retries: int = _setting(3, "Attempts per request on 5xx, timeouts and connection errors.")
    registry_concurrency: int = _setting(32, "Registry requests in flight at once.")
    scan_rate_limit: float = _setting(
        0.0,
        "Registry requests per second a scan may send (a token bucket). 0: the CLI's `scan` is unlimited "
        "(`--rate` sets it there); `serve` spreads its probe over half of SCAN_INTERVAL and its deep scan over "
        "half of DEEP_SCAN_INTERVAL, at the last one's request count (at least 10/s).",
    )
    deep_concurrency: int = _setting(4, "Layer downloads in flight at once in a deep check (`--deep`).")
    deep_rate_limit: int = _setting(
        0, "Bytes per second all of a deep check's downloads together may read (0: unlimited)."
    )
    deep_max_bytes: int = _setting(
        2 * 2**30, "Diagnose hashes every layer (a deep check) when the image's layers add up to at most this."
    )
    deep_scan_interval: float = _setting(
        0.0, "Seconds between the leader's deep scans, which hash every layer (0 turns them off; 604800: weekly)."
    )
    forgejo_owners: tuple[str, ...] = _setting(
        ("viktor",), "Forgejo owners whose container packages a scan lists when the catalog cannot serve."
    )
    # --- Vault --------------------------------------------------------------------------------------
    vault_addr: str = _setting("", "Vault (or OpenBao) address; secrets not set directly come from here.")
    vault_auth: str = _setting(
        "", "token, kubernetes or approle (default: token when VAULT_TOKEN is set, else kubernetes)."
    )
    vault_token: Secret = _setting(Secret(""), "Vault token (VAULT_AUTH=token).", secret=True)
    vault_role: str = _setting("registry-bot", "Vault Kubernetes-auth role.")
    vault_kubernetes_mount: str = _setting("kubernetes", "Mount path of Vault's Kubernetes auth method.")
    vault_jwt_path: str = _setting(
        "/var/run/secrets/kubernetes.io/serviceaccount/token", "ServiceAccount token for Kubernetes auth."
    )
    vault_role_id: str = _setting("", "AppRole role_id (VAULT_AUTH=approle).")
    vault_secret_id: Secret = _setting(Secret(""), "AppRole secret_id (VAULT_AUTH=approle).", secret=True)
    vault_kv_mount: str = _setting("secret", "KV v2 mount holding the bot's secrets.")
    vault_registry_path: str = _setting("viktor", "KV path of the registry pull token.")
    vault_registry_field: str = _setting("forgejo_pull_token", "Field of the registry pull token.")
    vault_timeout: float = _setting(5.0, "Seconds before a Vault request times out.")

    # --- Slack and the web server ----------------------------------------------------------------------
    slack_bot_token: Secret = _setting(Secret(""), "Bot token (xoxb-...).", secret=True, vault="viktor#slack_bot_token")
    slack_signing_secret: Secret = _setting(Secret(""), "Signing secret that verifies Slack's requests.", secret=True)
    slack_app_token: Secret = _setting(Secret(""), "App-level token (xapp-...): turns Socket Mode on.", secret=True)
    slack_api_url: str = _setting("https://slack.com/api/", "Slack Web API base URL.")
    slack_channel: str = _setting("", "Channel ID incidents are posted to.")
    slack_retry_for: float = _setting(900.0, "Seconds a Slack message is retried while Slack fails.")
    alertmanager_token: Secret = _setting(Secret(""), "Bearer token Alertmanager's webhook must present.", secret=True)
    bot_host: str = _setting("0.0.0.0", "Address the HTTP server binds.")
    bot_port: int = _setting(3000, "Port of /slack/events, /alertmanager, /healthz, /readyz, /metrics.")
    log_format: str = _setting("auto", "json, text, or auto (json in a cluster, text in a terminal).")
    # --- state, approvals ----------------------------------------------------------------------------
    database_url: Secret = _setting(
        Secret(""),
        "SQLAlchemy URL, default sqlite:///registry-bot.db; postgresql+psycopg://user:pass@host/db for replicas.",
        secret=True,
    )
    approvers: tuple[str, ...] = _setting((), "Slack user IDs allowed to approve rebuilds, restarts and node actions.")
    approver_group: str = _setting("", "Slack user group handle (or ID) whose members may approve.")
    two_person_rule: bool = _setting(False, "A second, different approver must approve each destructive phase.")
    approval_ttl: float = _setting(1800.0, "Seconds before an approval request expires.")
    checks_per_user: int = _setting(
        2, "Checks and scans one Slack user may have running at once; more are refused, privately."
    )
    heartbeat_interval: float = _setting(
        10.0, "Seconds between a running phase's heartbeats; 3 missed ones mark it interrupted."
    )
    # --- Kubernetes and the probe -----------------------------------------------------------------------
    kube_enabled: str = _setting("auto", "auto (in-cluster or KUBECONFIG), true or false.")
    kube_namespaces: tuple[str, ...] = _setting((), "Namespaces whose workloads may be restarted (default: all).")
    probe_namespace: str = _setting("monitoring", "Namespace of the integrity probe CronJob.")
    probe_job: str = _setting("forgejo-integrity-probe", "Name (prefix) of the probe's Jobs.")
    # --- phases 2 and 3 -----------------------------------------------------------------------------------
    forgejo_cleanup_token: Secret = _setting(
        Secret(""),
        "Forgejo token with write:package (deletes versions).",
        secret=True,
        vault="viktor#forgejo_cleanup_token",
    )
    ci_backend: str = _setting("woodpecker", "woodpecker or github: where images are rebuilt by default.")
    woodpecker_url: str = _setting("", "Woodpecker server URL (https://ci.example.org).")
    woodpecker_token: Secret = _setting(
        Secret(""), "Woodpecker API token.", secret=True, vault="ci/global#woodpecker_api_token"
    )
    github_api_url: str = _setting("https://api.github.com", "GitHub API base URL.")
    github_token: Secret = _setting(Secret(""), "GitHub token that may dispatch workflows.", secret=True)
    ci_branch: str = _setting("master", "Branch rebuilt by default (per-image overrides in the YAML `images:`).")
    ci_poll_interval: float = _setting(5.0, "Seconds between CI status polls.")
    ci_timeout: float = _setting(3600.0, "Seconds before a rebuild pipeline is given up on.")
    ci_unreachable_grace: float = _setting(120.0, "Seconds CI may stop answering while the bot follows a pipeline.")
    rollout_timeout: float = _setting(600.0, "Seconds a restarted workload may take to roll out.")
    node_actions: bool = _setting(False, "Offer 'Drain <node> and restart containerd' (always two approvers).")
    node_shell_image: str = _setting(
        "alpine:3.20@sha256:d9e853e87e55526f6b2917df91a2115c36dd7c696a35be12163d44e6e2a4b6bc",
        "Image of the privileged pod that restarts containerd (pinned by digest; the node-actions admission policy "
        "names the same image).",
    )
    eviction_timeout: float = _setting(300.0, "Seconds to keep retrying evictions a PodDisruptionBudget refuses.")
    dry_run: bool = _setting(False, "Do every read, report every write, make none.")
    # --- phase 4 and the bot's own probe ---------------------------------------------------------------
    verify_delay: float = _setting(1800.0, "Seconds after a fix before verification runs.")
    prometheus_url: str = _setting("", "Prometheus base URL for verification's metric check.")
    scan_interval: float = _setting(900.0, "Seconds between the bot's own scans (0 turns them off).")
    prune_older_than: str = _setting(
        "1d",
        "Slack's and the schedule's prune plans keep every version newer than this (`older=` in `/registry prune` "
        "overrides it; empty: age protects nothing), so a push in progress is not cut in half.",
    )
    prune_schedule: str = _setting(
        "",
        "Cron schedule (5 fields, UTC) of the leader's prune plans, posted for an approver's Apply; never applied "
        "on their own (empty: off).",
    )
    leader_election: str = _setting(
        "auto", "auto (a Kubernetes Lease in a cluster, else the database), lease, database."
    )
    leader_lease_seconds: float = _setting(15.0, "Seconds a leader's Lease (or database lock) lasts unrenewed.")
    pod_name: str = _setting("", "This replica's name (the Downward API's metadata.name).")
    pod_namespace: str = _setting("registry-bot", "This replica's namespace (the Lease lives here).")
    # Per-image CI mapping, from the YAML file only: {"owner/name": {"ci", "repo", "branch", "workflow", "ref"}}.
    images: dict[str, Any] = field(default_factory=dict, metadata={"doc": "YAML only: per-image CI mapping."})
    # Several registries, from the YAML file only (bot/registry/registries.py): RegistryConfig entries.
    registries: tuple[Any, ...] = field(default=(), metadata={"doc": "YAML only: the registries, the default first."})

    # --- derived --------------------------------------------------------------------------------------
    @property
    def registry_host(self) -> str:
        """host[:port] of REGISTRY_URL, as references and probe labels spell it."""
        return urlsplit(self.registry_url).netloc

    @property
    def all_registry_hosts(self) -> tuple[str, ...]:
        hosts = [self.registry_host, *self.registry_hosts]
        return tuple(dict.fromkeys(h for h in hosts if h))

    @property
    def database(self) -> str:
        return self.database_url.reveal() or "sqlite:///registry-bot.db"

    @property
    def instance(self) -> str:
        return self.registry_instance or self.registry_host

    def require(self, *names: str) -> None:
        """Raise one ConfigError naming every missing setting among `names`."""
        missing = [n.upper() for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError("Missing required settings: " + ", ".join(missing) + ".")

    def with_values(self, **values: Any) -> Settings:
        return dataclasses.replace(self, **values)


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, not '{raw}'")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "tuple[str, ...]": _parse_list,
    "Secret": Secret,
}


def _coerce(name: str, type_name: str, raw: Any) -> Any:
    if type_name == "tuple[str, ...]" and isinstance(raw, list | tuple):
        return tuple(str(item) for item in raw)
    if type_name == "bool" and isinstance(raw, bool):
        return raw
    try:
        return _PARSERS[type_name](str(raw))
    except ValueError as exc:
        raise ConfigError(f"Setting {name.upper()} is malformed: {exc}.") from None


def _read_yaml(path: str) -> Mapping[str, Any]:
    import yaml  # only when a file is named: keeps the common path light

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"Cannot read the config file {path}: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"The config file {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The config file {path} must hold a mapping of settings.")
    return {str(key).lower(): value for key, value in data.items()}


def setting_fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    file_values: Mapping[str, Any] = {}
    if env.get("REGISTRY_BOT_CONFIG"):
        file_values = _read_yaml(env["REGISTRY_BOT_CONFIG"])
    known = {f.name for f in setting_fields()}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ConfigError("Unknown settings in the config file: " + ", ".join(unknown) + ".")
    values: dict[str, Any] = {}
    for f in setting_fields():
        type_name = str(f.type)
        if f.name == "registries":
            continue
        if f.name in _FILE_ONLY:
            if file_values.get(f.name) is not None:
                if not isinstance(file_values[f.name], dict):
                    raise ConfigError(f"The config file's `{f.name}` must be a mapping.")
                values[f.name] = dict(file_values[f.name])
            continue
        env_name = f.name.upper()
        if env_name in env:
            values[f.name] = _coerce(f.name, type_name, env[env_name])
        elif f.name in file_values and file_values[f.name] is not None:
            values[f.name] = _coerce(f.name, type_name, file_values[f.name])
    if file_values.get("registries") is not None:
        if values.get("registry_url"):
            raise ConfigError(
                "Both REGISTRY_URL and the config file's `registries:` list are set; give one: the list, or "
                "REGISTRY_URL and its friends for a single registry."
            )
        from bot.registry.registries import parse_registries

        values["registries"] = parse_registries(file_values["registries"])
    settings = Settings(**values)
    _validate(settings)
    return settings


# Structured sections only the YAML file can hold (per-image CI mappings, the registries list).
_FILE_ONLY = {"images", "registries"}


def _validate(settings: Settings) -> None:
    if settings.registry_url:
        parts = urlsplit(settings.registry_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(
                "REGISTRY_URL must be scheme and host, like https://forgejo.example.org, "
                f"not '{settings.registry_url}'."
            )
        if parts.username or parts.password:
            raise ConfigError("REGISTRY_URL must not carry credentials; use REGISTRY_USERNAME and REGISTRY_PASSWORD.")
    if settings.registry_kind not in {"forgejo", "distribution"}:
        raise ConfigError(f"REGISTRY_KIND must be forgejo or distribution, not '{settings.registry_kind}'.")
    if settings.vault_auth not in {"", "token", "kubernetes", "approle"}:
        raise ConfigError(f"VAULT_AUTH must be token, kubernetes or approle, not '{settings.vault_auth}'.")
    choices = {
        "ci_backend": ("woodpecker", "github"),
        "log_format": ("auto", "json", "text"),
        "kube_enabled": ("auto", "true", "false"),
        "leader_election": ("auto", "lease", "database"),
    }
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"{name.upper()} must be one of {', '.join(allowed)}, not '{getattr(settings, name)}'.")
    for name in ("registry_timeout", "registry_retries", "registry_concurrency", "deep_concurrency"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name.upper()} must be positive.")
    if settings.deep_max_bytes < 0 or settings.deep_scan_interval < 0:
        raise ConfigError("DEEP_MAX_BYTES and DEEP_SCAN_INTERVAL must be 0 or more.")
    if settings.prune_older_than:
        from bot.prune.model import parse_age

        try:
            parse_age(settings.prune_older_than)
        except UserFacingError as exc:
            raise ConfigError(f"PRUNE_OLDER_THAN: {exc}") from None
    if settings.prune_schedule:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(settings.prune_schedule, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"PRUNE_SCHEDULE is not a cron schedule (5 fields, like 0 6 * * 1): {exc}.") from None
    if settings.deep_rate_limit < 0:
        raise ConfigError("DEEP_RATE_LIMIT must be 0 (unlimited) or a number of bytes per second.")
    if not 0 <= settings.scan_rate_limit < float("inf"):  # also refuses nan
        raise ConfigError("SCAN_RATE_LIMIT must be 0 (see the README) or a number of requests per second.")
