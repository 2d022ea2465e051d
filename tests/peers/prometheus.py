"""Real Prometheus, Pushgateway and Alertmanager processes for tests.

Each class is a context manager running the Debian-packaged binary on a free loopback port with its
config, state and log in a private temp dir. Wire them as the cluster does::

    with Pushgateway() as pgw, Alertmanager(webhook_url, token) as am, Prometheus(pgw, am) as prom:
        pgw.push(PROBE_JOB, probe_metrics("forgejo", failures=2), {"instance": "forgejo"})
        prom.wait_for_alert("RegistryManifestIntegrityFailure")
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx
import yaml

from tests.peers.process import ServerProcess

PROBE_JOB = "forgejo-integrity-probe"
CLUSTER_RULE_NAMES = (
    "RegistryManifestIntegrityFailure",
    "RegistryIntegrityProbeStale",
    "RegistryCatalogInaccessible",
)


def probe_metrics(
    instance: str,
    failures: int,
    catalog_accessible: int = 1,
    repos: int = 1,
    tags: int = 1,
    indexes: int = 0,
    last_run: float | None = None,
) -> str:
    """Text exposition of the six gauges the integrity probe pushes (job ``PROBE_JOB``)."""
    if last_run is None:
        last_run = time.time()
    gauges: list[tuple[str, str, float]] = [
        ("failures", "Manifests that failed the integrity check in the last run.", failures),
        ("catalog_accessible", "1 if the last run could list the registry catalog.", catalog_accessible),
        ("repos_checked", "Repositories checked in the last run.", repos),
        ("tags_checked", "Tags checked in the last run.", tags),
        ("indexes_checked", "Image indexes checked in the last run.", indexes),
        ("last_run_timestamp", "Unix time the last run finished.", last_run),
    ]
    label = _escape_label_value(instance)
    lines: list[str] = []
    for suffix, help_text, value in gauges:
        name = f"registry_manifest_integrity_{suffix}"
        lines += [
            f"# HELP {name} {help_text}",
            f"# TYPE {name} gauge",
            f'{name}{{instance="{label}"}} {value}',
        ]
    return "\n".join(lines) + "\n"


def cluster_rules(rule_for: str | Mapping[str, str] = "2s") -> dict[str, Any]:
    """The cluster's alerting rules (group ``Cluster``) as a rule-file document.

    ``rule_for`` is the ``for:`` duration of every rule, or a mapping of rule name to duration (rules left
    out get ``2s``).
    """

    def for_(name: str) -> str:
        return rule_for if isinstance(rule_for, str) else rule_for.get(name, "2s")

    return {
        "groups": [
            {
                "name": "Cluster",
                "rules": [
                    {
                        "alert": "RegistryManifestIntegrityFailure",
                        "expr": "registry_manifest_integrity_failures > 0",
                        "for": for_("RegistryManifestIntegrityFailure"),
                        "labels": {"severity": "critical"},
                        "annotations": {"summary": "Registry manifest integrity failures on {{ $labels.instance }}"},
                    },
                    {
                        "alert": "RegistryIntegrityProbeStale",
                        "expr": "time() - registry_manifest_integrity_last_run_timestamp > 3600",
                        "for": for_("RegistryIntegrityProbeStale"),
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "Registry integrity probe has not run for over an hour on {{ $labels.instance }}"
                        },
                    },
                    {
                        "alert": "RegistryCatalogInaccessible",
                        "expr": "registry_manifest_integrity_catalog_accessible == 0",
                        "for": for_("RegistryCatalogInaccessible"),
                        "labels": {"severity": "critical"},
                        "annotations": {"summary": "Registry catalog inaccessible on {{ $labels.instance }}"},
                    },
                ],
            }
        ]
    }


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _grouping_path(job: str, grouping: Mapping[str, str] | None) -> str:
    """``/metrics/job/<job>/<label>/<value>...``, base64-encoding values a path segment cannot carry."""

    def segment(name: str, value: str) -> str:
        if value == "" or "/" in value:
            encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
            return f"{name}@base64/{encoded}"
        return f"{name}/{quote(value, safe='')}"

    parts = [segment("job", job)] + [segment(k, v) for k, v in (grouping or {}).items()]
    return "/metrics/" + "/".join(parts)


def _require_binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"`{name}` not found on PATH; install the Debian package `{package}`")
    return found


def _wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class _Server(ServerProcess):
    """A binary on 127.0.0.1:<free port> with files in a temp dir; subclasses supply the command line."""

    binary = ""
    package = ""
    ready_path = "/-/ready"

    def __init__(self, start_timeout: float = 30.0) -> None:
        super().__init__(start_timeout)
        self.name = self.binary
        self.url = ""
        self._binary_path = ""

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self, binary: str, tmpdir: Path) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        self._binary_path = _require_binary(self.binary, self.package)
        return super().start()

    def _server_command(self) -> list[str]:
        assert self.tmpdir is not None
        self.url = f"http://{self.host_port}"
        return self._command(self._binary_path, self.tmpdir)

    def _server_env(self) -> dict[str, str]:
        return _loopback_env()

    def _wait_until_ready(self) -> None:
        self.wait_until(self._ready, f"{self.binary} to answer {self.ready_path}")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


def _loopback_env() -> dict[str, str]:
    # These servers only talk to each other and to test receivers on 127.0.0.1; an inherited HTTP(S)_PROXY
    # must not reroute Alertmanager's webhook calls or Prometheus' pushes to Alertmanager.
    proxy_vars = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    return {k: v for k, v in os.environ.items() if k.lower() not in proxy_vars}


class Pushgateway(_Server):
    binary = "prometheus-pushgateway"
    package = "prometheus-pushgateway"

    def _command(self, binary: str, tmpdir: Path) -> list[str]:
        return [
            binary,
            f"--web.listen-address={self.host_port}",
            # Debian's default is /var/lib/prometheus/pushgateway.data.
            f"--persistence.file={tmpdir / 'pushgateway.data'}",
        ]

    def push(self, job: str, metrics_text: str, grouping: Mapping[str, str] | None = None) -> None:
        """Replace every metric in the group ``job`` + ``grouping`` (HTTP PUT)."""
        response = httpx.put(
            self.url + _grouping_path(job, grouping),
            content=metrics_text.encode(),
            headers={"Content-Type": "text/plain; version=0.0.4"},
            timeout=10.0,
        )
        response.raise_for_status()

    def delete(self, job: str, grouping: Mapping[str, str] | None = None) -> None:
        httpx.delete(self.url + _grouping_path(job, grouping), timeout=10.0).raise_for_status()


class Alertmanager(_Server):
    """Routes every alert (grouped by ``alertname``) to one webhook, authenticated with a bearer token."""

    binary = "prometheus-alertmanager"
    package = "prometheus-alertmanager"

    def __init__(
        self,
        webhook_url: str,
        bearer_token: str,
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "1m",
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(start_timeout)
        self.webhook_url = webhook_url
        self.bearer_token = bearer_token
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval

    def config(self) -> dict[str, Any]:
        return {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname"],
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [
                        {
                            "url": self.webhook_url,
                            "send_resolved": True,
                            "http_config": {"authorization": {"type": "Bearer", "credentials": self.bearer_token}},
                        }
                    ],
                }
            ],
        }

    def _command(self, binary: str, tmpdir: Path) -> list[str]:
        config_file = tmpdir / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        storage = tmpdir / "data"
        storage.mkdir()
        return [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={storage}",
            f"--web.listen-address={self.host_port}",
            f"--web.external-url={self.url}",
            # Empty disables the gossip cluster listener, which would otherwise bind 0.0.0.0:9094.
            "--cluster.listen-address=",
        ]

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST /api/v2/alerts (each alert: ``labels``, optional ``annotations``/``startsAt``/``endsAt``)."""
        httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=10.0).raise_for_status()

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=10.0)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result


class Prometheus(_Server):
    """Scrapes the Pushgateway every second and evaluates the cluster rules every second."""

    binary = "prometheus"
    package = "prometheus"

    def __init__(
        self,
        pushgateway: Pushgateway | str | None = None,
        alertmanager: Alertmanager | str | None = None,
        rule_for: str | Mapping[str, str] = "2s",
        start_timeout: float = 60.0,
    ) -> None:
        """``pushgateway``/``alertmanager`` are running instances or base URLs (``http://127.0.0.1:P``)."""
        super().__init__(start_timeout)
        self.pushgateway = pushgateway
        self.alertmanager = alertmanager
        self.rule_for = rule_for

    @staticmethod
    def _target(peer: _Server | str) -> str:
        url = peer.url if isinstance(peer, _Server) else peer
        if not url:
            raise ValueError("peer server is not started")
        return urlsplit(url).netloc

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [],
        }
        if self.pushgateway is not None:
            config["scrape_configs"].append(
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,
                    "static_configs": [{"targets": [self._target(self.pushgateway)]}],
                }
            )
        if self.alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [
                    {"api_version": "v2", "static_configs": [{"targets": [self._target(self.alertmanager)]}]}
                ]
            }
        return config

    def _command(self, binary: str, tmpdir: Path) -> list[str]:
        config_file = tmpdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # Relative rule_files paths resolve against the config file's directory.
        (tmpdir / "rules.yml").write_text(yaml.safe_dump(cluster_rules(self.rule_for), sort_keys=False))
        return [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmpdir / 'tsdb'}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address={self.host_port}",
            # Otherwise generatorURL in alerts uses the machine's hostname.
            f"--web.external-url={self.url}",
        ]

    def _ready(self) -> bool:
        # /-/ready turns 200 before the first scrape: the scrape and notifier managers apply discovered
        # targets only every 5 s, so also wait until the peers are wired up for deterministic test timing.
        if not super()._ready():
            return False
        if self.pushgateway is not None:
            targets = self._api("targets", {"state": "active"})["activeTargets"]
            if not any(t["health"] == "up" for t in targets):
                return False
        if self.alertmanager is not None:
            return bool(self._api("alertmanagers")["activeAlertmanagers"])
        return True

    def _api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        body = response.json()
        if response.is_error or body.get("status") != "success":
            raise RuntimeError(f"Prometheus /api/v1/{path} -> {response.status_code}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result``, for a vector ``[{"metric": {...}, "value": [t, "v"]}]``."""
        result: list[dict[str, Any]] = self._api("query", {"query": promql})["result"]
        return result

    def active_alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts from /api/v1/alerts (resolved ones are not listed)."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def wait_for_alert(self, name: str, state: str = "firing", timeout: float = 30.0) -> dict[str, Any]:
        """Wait until alert ``name`` is in ``state`` ("pending" or "firing") and return it."""

        def matching() -> dict[str, Any] | None:
            for alert in self.active_alerts():
                if alert["labels"].get("alertname") == name and alert["state"] == state:
                    return alert
            return None

        found: dict[str, Any] = _wait_for(matching, timeout, f"alert {name} to be {state}")
        return found

    def wait_for_query(
        self, promql: str, predicate: Callable[[list[dict[str, Any]]], bool] = bool, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll ``query(promql)`` until ``predicate(result)`` holds (default: non-empty) and return it."""

        def check() -> list[dict[str, Any]] | None:
            result = self.query(promql)
            return result if predicate(result) else None

        found: list[dict[str, Any]] = _wait_for(check, timeout, f"query {promql!r} to match")
        return found
