"""Alertmanager's webhook payload (version 4), validated into plain data; anything else is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INTEGRITY_FAILURE = "RegistryManifestIntegrityFailure"
INFO_ALERTS = ("RegistryCatalogInaccessible", "RegistryIntegrityProbeStale")
MAX_ALERTS = 1000


class NotAnAlertPayload(ValueError):
    """The body is not an Alertmanager webhook payload; the message says why (it becomes the 400 body)."""


@dataclass(frozen=True)
class Alert:
    status: str  # firing or resolved
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str

    @property
    def instance(self) -> str:
        return self.labels.get("instance", "")


@dataclass(frozen=True)
class Notification:
    status: str
    receiver: str
    group_key: str
    alerts: tuple[Alert, ...]


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise NotAnAlertPayload(f"{what} must be an object of strings")
    return dict(value)


def parse_notification(body: Any) -> Notification:
    if not isinstance(body, dict):
        raise NotAnAlertPayload("the body is not a JSON object")
    version = body.get("version")
    if version != "4":
        raise NotAnAlertPayload(f'version must be "4" (Alertmanager\'s webhook format), not {str(version)[:20]!r}')
    status = body.get("status")
    if status not in ("firing", "resolved"):
        raise NotAnAlertPayload("status must be firing or resolved")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise NotAnAlertPayload("alerts must be a list")
    if len(alerts) > MAX_ALERTS:
        raise NotAnAlertPayload(f"more than {MAX_ALERTS} alerts in one notification")
    parsed = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise NotAnAlertPayload(f"alerts[{index}] is not an object")
        labels = _strings(alert.get("labels"), f"alerts[{index}].labels")
        if "alertname" not in labels:
            raise NotAnAlertPayload(f"alerts[{index}] has no alertname label")
        alert_status = alert.get("status", status)
        if alert_status not in ("firing", "resolved"):
            raise NotAnAlertPayload(f"alerts[{index}].status must be firing or resolved")
        parsed.append(
            Alert(
                status=alert_status,
                name=labels["alertname"],
                labels=labels,
                annotations=_strings(alert.get("annotations"), f"alerts[{index}].annotations"),
                starts_at=str(alert.get("startsAt", ""))[:40],
                ends_at=str(alert.get("endsAt", ""))[:40],
                fingerprint=str(alert.get("fingerprint", ""))[:64],
            )
        )
    return Notification(
        status=status,
        receiver=str(body.get("receiver", ""))[:200],
        group_key=str(body.get("groupKey", ""))[:500],
        alerts=tuple(parsed),
    )
