"""Self-tests for the real peer servers in tests/peers (OpenBao, PostgreSQL, Prometheus stack)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
import sqlalchemy as sa

from tests.peers.openbao import OpenBao
from tests.peers.postgres import Postgres
from tests.peers.prometheus import (
    PROBE_JOB,
    Alertmanager,
    Prometheus,
    Pushgateway,
    _grouping_path,
    probe_metrics,
)

# --- OpenBao ---------------------------------------------------------------------------------------------

READ_POLICY = 'path "secret/data/registry-bot/*" { capabilities = ["read"] }'


def _read(client: hvac.Client, path: str) -> dict[str, Any]:
    response = client.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
    data: dict[str, Any] = response["data"]["data"]
    return data


def test_openbao_kv_put_and_read_with_hvac() -> None:
    with OpenBao() as bao:
        assert bao.addr.startswith("http://127.0.0.1:")
        bao.put_secret("registry-bot/slack", {"bot_token": "xoxb-1", "signing_secret": "s3"})
        client = hvac.Client(url=bao.addr, token=bao.root_token)
        assert _read(client, "registry-bot/slack") == {"bot_token": "xoxb-1", "signing_secret": "s3"}
        with pytest.raises(hvac.exceptions.InvalidPath):
            _read(client, "registry-bot/missing")


def test_openbao_approle_login_and_policy_enforcement() -> None:
    with OpenBao() as bao:
        bao.put_secret("registry-bot/registry", {"password": "pw"})
        bao.put_secret("other-team/db", {"password": "nope"})
        bao.write_policy("registry-bot-read", READ_POLICY)
        role_id, secret_id = bao.enable_approle("registry-bot", policies=["registry-bot-read"])

        client = hvac.Client(url=bao.addr)
        login = client.auth.approle.login(role_id=role_id, secret_id=secret_id)
        assert "registry-bot-read" in login["auth"]["policies"]
        assert client.is_authenticated()
        assert _read(client, "registry-bot/registry") == {"password": "pw"}
        with pytest.raises(hvac.exceptions.Forbidden):
            _read(client, "other-team/db")

        with pytest.raises(hvac.exceptions.InvalidRequest):
            hvac.Client(url=bao.addr).auth.approle.login(role_id=role_id, secret_id="wrong")

        token_client = hvac.Client(url=bao.addr, token=bao.create_token(["registry-bot-read"]))
        assert _read(token_client, "registry-bot/registry") == {"password": "pw"}
        with pytest.raises(hvac.exceptions.Forbidden):
            _read(hvac.Client(url=bao.addr, token="not-a-token"), "registry-bot/registry")


def test_openbao_sealed_then_stopped() -> None:
    with OpenBao() as bao:
        bao.put_secret("registry-bot/slack", {"bot_token": "xoxb-1"})
        client = hvac.Client(url=bao.addr, token=bao.root_token)
        bao.seal()
        assert client.sys.is_sealed()
        # A sealed server answers 503, which hvac maps to VaultDown.
        with pytest.raises(hvac.exceptions.VaultDown, match="sealed"):
            _read(client, "registry-bot/slack")
    # Nothing listening any more: hvac lets the requests exception through unwrapped.
    with pytest.raises(requests.exceptions.ConnectionError):
        _read(client, "registry-bot/slack")


# --- PostgreSQL ------------------------------------------------------------------------------------------


def test_postgres_connect_and_create_database() -> None:
    with Postgres() as pg:
        assert pg.url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/postgres"
        engine = sa.create_engine(pg.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "off"

        url = pg.create_database("registry_bot_test")
        assert url.endswith(f":{pg.port}/registry_bot_test")
        other = sa.create_engine(url)
        with other.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (42)"))
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == "registry_bot_test"
            assert conn.execute(sa.text("SELECT id FROM t")).scalar_one() == 42
        # Pools still hold connections here; stop() must not wait for them.
        started = time.monotonic()
    assert time.monotonic() - started < 10
    engine.dispose()
    other.dispose()


# --- Prometheus stack ------------------------------------------------------------------------------------


def test_probe_metrics_exposition() -> None:
    text = probe_metrics("forgejo", failures=3, catalog_accessible=0, repos=5, tags=9, indexes=2, last_run=100)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples == {
        'registry_manifest_integrity_failures{instance="forgejo"}': "3",
        'registry_manifest_integrity_catalog_accessible{instance="forgejo"}': "0",
        'registry_manifest_integrity_repos_checked{instance="forgejo"}': "5",
        'registry_manifest_integrity_tags_checked{instance="forgejo"}': "9",
        'registry_manifest_integrity_indexes_checked{instance="forgejo"}': "2",
        'registry_manifest_integrity_last_run_timestamp{instance="forgejo"}': "100",
    }
    assert text.count("# TYPE") == 6 and "gauge" in text


def test_grouping_path_encodes_slashes() -> None:
    assert _grouping_path("j", {"instance": "forgejo"}) == "/metrics/job/j/instance/forgejo"
    assert _grouping_path("j", {"instance": "a/b"}) == "/metrics/job/j/instance@base64/YS9i"


@dataclass
class Notification:
    path: str
    authorization: str | None
    body: dict[str, Any]


class WebhookReceiver:
    """A stdlib HTTP server on loopback that records every POST body (JSON) and its Authorization header."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with receiver._cond:
                    receiver.notifications.append(Notification(self.path, self.headers.get("Authorization"), body))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alertmanager"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[Notification], bool], timeout: float) -> Notification:
        with self._cond:
            found = self._cond.wait_for(lambda: next((n for n in self.notifications if predicate(n)), None), timeout)
        if found is None:
            raise AssertionError(f"no matching webhook within {timeout}s; got {self.notifications}")
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def _is(alertname: str, status: str) -> Callable[[Notification], bool]:
    def check(n: Notification) -> bool:
        return n.body.get("status") == status and n.body["groupLabels"].get("alertname") == alertname

    return check


def test_alertmanager_delivers_posted_alert_with_bearer_token(receiver: WebhookReceiver) -> None:
    token = secrets.token_hex(8)
    with Alertmanager(receiver.url, token) as am:
        am.post_alerts([{"labels": {"alertname": "Direct", "severity": "warning"}, "annotations": {"x": "y"}}])
        note = receiver.wait_for(_is("Direct", "firing"), timeout=10)
    assert note.path == "/alertmanager"
    assert note.authorization == f"Bearer {token}"
    assert note.body["version"] == "4"
    assert note.body["alerts"][0]["labels"] == {"alertname": "Direct", "severity": "warning"}


def test_probe_push_to_prometheus_alert_to_webhook_and_resolve(receiver: WebhookReceiver) -> None:
    token = secrets.token_hex(8)
    grouping = {"instance": "forgejo"}
    started = time.monotonic()
    with (
        Pushgateway() as pgw,
        Alertmanager(receiver.url, token) as am,
        Prometheus(pgw, am, rule_for="2s") as prom,
    ):
        pgw.push(PROBE_JOB, probe_metrics("forgejo", failures=2), grouping)
        result = prom.wait_for_query("registry_manifest_integrity_failures", timeout=10)
        assert result[0]["value"][1] == "2"
        assert result[0]["metric"]["instance"] == "forgejo"  # honor_labels kept the pushed instance
        assert result[0]["metric"]["job"] == PROBE_JOB

        alert = prom.wait_for_alert("RegistryManifestIntegrityFailure", timeout=15)
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == "Registry manifest integrity failures on forgejo"

        firing = receiver.wait_for(_is("RegistryManifestIntegrityFailure", "firing"), timeout=10)
        assert firing.authorization == f"Bearer {token}"
        assert firing.body["version"] == "4"
        [fired] = firing.body["alerts"]
        assert fired["status"] == "firing"
        assert fired["labels"]["alertname"] == "RegistryManifestIntegrityFailure"
        assert fired["labels"]["instance"] == "forgejo"

        pgw.push(PROBE_JOB, probe_metrics("forgejo", failures=0), grouping)
        resolved = receiver.wait_for(_is("RegistryManifestIntegrityFailure", "resolved"), timeout=15)
        assert resolved.authorization == f"Bearer {token}"
        assert resolved.body["alerts"][0]["status"] == "resolved"

        # The other two rules stay quiet for a healthy, fresh probe.
        names = {a["labels"]["alertname"] for a in prom.active_alerts()}
        assert not names & {"RegistryIntegrityProbeStale", "RegistryCatalogInaccessible"}

        pgw.delete(PROBE_JOB, grouping)
        prom.wait_for_query("absent(registry_manifest_integrity_failures)", timeout=10)
    assert time.monotonic() - started < 30
