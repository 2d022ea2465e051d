"""Prometheus metrics at /metrics: the probe's own gauges (so the cluster's alert rules work with the bot in
place of the CronJob) and the bot's figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# The probe's metric names, with the same `instance` label.
PROBE_FAILURES = Gauge(
    "registry_manifest_integrity_failures", "Broken tags found by the last scan", ["instance"], registry=REGISTRY
)
PROBE_CATALOG = Gauge(
    "registry_manifest_integrity_catalog_accessible",
    "1 when the last scan could list the registry",
    ["instance"],
    registry=REGISTRY,
)
PROBE_REPOS = Gauge(
    "registry_manifest_integrity_repos_checked",
    "Repositories checked by the last scan",
    ["instance"],
    registry=REGISTRY,
)
PROBE_TAGS = Gauge(
    "registry_manifest_integrity_tags_checked", "Tags checked by the last scan", ["instance"], registry=REGISTRY
)
PROBE_INDEXES = Gauge(
    "registry_manifest_integrity_indexes_checked", "Indexes checked by the last scan", ["instance"], registry=REGISTRY
)
PROBE_LAST_RUN = Gauge(
    "registry_manifest_integrity_last_run_timestamp",
    "Unix time the last scan finished",
    ["instance"],
    registry=REGISTRY,
)

# The bot's own figures.
INCIDENTS = Gauge("registry_bot_incidents", "Incidents by state", ["state"], registry=REGISTRY)
PHASE_RUNS = Counter(
    "registry_bot_phase_runs", "Phase runs by phase and outcome", ["phase", "outcome"], registry=REGISTRY
)
PHASE_SECONDS = Histogram(
    "registry_bot_phase_duration_seconds",
    "Phase run durations by phase and outcome",
    ["phase", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    registry=REGISTRY,
)
SLACK_API_ERRORS = Counter(
    "registry_bot_slack_api_errors", "Slack Web API errors by method and error", ["method", "error"], registry=REGISTRY
)
REGISTRY_REQUESTS = Counter(
    "registry_bot_registry_requests", "Registry requests by method and status", ["method", "status"], registry=REGISTRY
)
REGISTRY_LATENCY = Histogram(
    "registry_bot_registry_request_seconds",
    "Registry request latency",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
ALERTS_RECEIVED = Counter(
    "registry_bot_alerts_received",
    "Alertmanager notifications by alert and outcome",
    ["alertname", "outcome"],
    registry=REGISTRY,
)
SCAN_REQUESTS = Gauge(
    "registry_bot_scan_requests",
    "Registry requests the last scan of its kind sent (scan: the probe or /registry scan; deep)",
    ["instance", "kind"],
    registry=REGISTRY,
)
SCAN_SECONDS = Gauge(
    "registry_bot_scan_seconds", "Seconds the last scan of its kind took", ["instance", "kind"], registry=REGISTRY
)
SCAN_RATE_LIMIT = Gauge(
    "registry_bot_scan_rate_limit",
    "Requests per second the last scan of its kind was held to (0: unlimited)",
    ["instance", "kind"],
    registry=REGISTRY,
)
IS_LEADER = Gauge("registry_bot_leader", "1 while this replica runs the scheduler and the scan", registry=REGISTRY)

PROBE_GAUGES = (PROBE_FAILURES, PROBE_CATALOG, PROBE_REPOS, PROBE_TAGS, PROBE_INDEXES, PROBE_LAST_RUN)


def clear_probe_gauges() -> None:
    """A replica that is not the leader exports no probe series (two replicas must not disagree)."""
    for gauge in PROBE_GAUGES:
        gauge.clear()


def observe_registry(method: str, status: int, seconds: float) -> None:
    """The registry client's observer: every answer counted and timed (status 0: no answer)."""
    REGISTRY_REQUESTS.labels(method=method, status=str(status) if status else "none").inc()
    REGISTRY_LATENCY.labels(method=method).observe(seconds)


def observe_scan(instance: str, kind: str, requests: int, seconds: float, rate_limit: float) -> None:
    """A scan's load on the registry, so an operator sees what a scan costs and what pace it kept."""
    SCAN_REQUESTS.labels(instance=instance, kind=kind).set(requests)
    SCAN_SECONDS.labels(instance=instance, kind=kind).set(seconds)
    SCAN_RATE_LIMIT.labels(instance=instance, kind=kind).set(rate_limit)


def count_incidents(states: list[str]) -> None:
    from bot.incidents.lifecycle import State

    for state in State:
        INCIDENTS.labels(state=state).set(states.count(state))
