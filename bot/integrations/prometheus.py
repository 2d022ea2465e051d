"""Prometheus instant queries (GET /api/v1/query), for verification's metric check."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from bot.errors import UserFacingError


class PrometheusUnavailable(UserFacingError):
    pass


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    async def query(self, promql: str) -> list[Sample]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.url} is unreachable ({type(exc).__name__}).") from None
        try:
            body = response.json()
        except ValueError:
            raise PrometheusUnavailable(f"Prometheus answered HTTP {response.status_code} without JSON.") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusUnavailable(
                f"Prometheus refused the query (HTTP {response.status_code}): {str(body.get('error', ''))[:200]}"
            )
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusUnavailable(f"Prometheus answered a {data.get('resultType')} where a vector was asked.")
        samples = []
        for item in data.get("result") or []:
            try:
                samples.append(Sample(dict(item.get("metric") or {}), float(item["value"][1])))
            except (KeyError, IndexError, TypeError, ValueError):
                continue
        return samples
