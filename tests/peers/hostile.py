"""A registry that answers the way a hostile one would, and hosts that record who sends them credentials.

`HostileRegistry` is a loopback proxy in front of the real docker-registry. It asks for Basic or Bearer
credentials (its `WWW-Authenticate: Bearer realm=...` may name any URL), and it can lie in its answers: a
catalog or tags list of names of its choosing, a `Link: rel="next"` pointing anywhere, a `Docker-Content-Digest`
header that is not a digest. It serves TLS when given a `trustme.CA`.

`RecordingHost` is any other host on loopback (127.0.0.2 by default, so it is another host by name, not only
by port): a token service, or a place a next-page link points at. Both record each request with the
`Authorization` header it carried, so a test can say which credentials reached which host.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.peers.registry import Registry


@dataclass(frozen=True)
class Seen:
    host: str  # host:port the request reached
    method: str
    path: str  # with the query
    authorization: str  # the header as sent, '' when none


Answer = tuple[int, dict[str, str], bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)


class _LoopbackServer:
    """A threaded HTTP(S) server on `address` that records every request and answers through `_answer`."""

    def __init__(self, address: str = "127.0.0.1", tls: Any = None) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _Server((address, 0), self._handler())
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.issue_cert(address).configure_cert(context)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.host = f"{address}:{self._server.server_address[1]}"
        self.url = f"{'https' if tls is not None else 'http'}://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def credentials_seen(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.authorization]

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _route(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner.seen.append(Seen(owner.host, self.command, self.path, headers.get("authorization", "")))
                status, answer_headers, content = owner._answer(self.command, self.path, headers, body)
                self.send_response(status)
                answer_headers = {k.lower(): v for k, v in answer_headers.items()}
                answer_headers.setdefault("content-length", str(len(content)))
                for key, value in answer_headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD" and content:
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route

        return Handler


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()


class RecordingHost(_LoopbackServer):
    """Another host: answers a token to anyone (`/token`) and a listing of its choosing to anything else."""

    def __init__(self, address: str = "127.0.0.2", *, token: str = "token-from-elsewhere", tls: Any = None) -> None:
        super().__init__(address, tls)
        self.token = token
        self.listing: dict[str, Any] = {"repositories": ["evil/planted"], "tags": ["planted"]}

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if urlsplit(path).path.endswith("/token"):
            return _json(200, {"token": self.token, "expires_in": 300})
        return _json(200, self.listing)


@dataclass
class Lies:
    """What a HostileRegistry says instead of the truth (None: the real registry's answer)."""

    catalog: list[str] | None = None
    tags: dict[str, list[str]] = field(default_factory=dict)  # repository -> tags listed
    # path (without query) -> the Link header added to that answer
    links: dict[str, str] = field(default_factory=dict)
    # path -> Docker-Content-Digest header replacing the registry's
    digests: dict[str, str] = field(default_factory=dict)


class HostileRegistry(_LoopbackServer):
    """The real registry behind credentials (`username`/`password`), answering with `lies`.

    `realm` None: Basic auth is asked for. Otherwise a Bearer challenge naming `realm` (a callable gets this
    registry's URL); the registry accepts the tokens its own `/token` issues and those in `accept_tokens`.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        username: str = "cluster-puller",
        password: str = "pull-token-s3cret",
        realm: str | Callable[[str], str] | None = None,
        accept_tokens: tuple[str, ...] = (),
        tls: Any = None,
        address: str = "127.0.0.1",
    ) -> None:
        super().__init__(address, tls)
        self.registry = registry
        self.username, self.password = username, password
        self._realm = realm
        self.tokens: set[str] = set(accept_tokens)
        self.lies = Lies()
        self._upstream = httpx.Client(base_url=registry.url, timeout=30)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._upstream.close()

    @property
    def realm(self) -> str | None:
        return self._realm(self.url) if callable(self._realm) else self._realm

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value in self.tokens
        if scheme.lower() == "basic" and self.realm is None:
            return secrets.compare_digest(value, self._basic())
        return False

    def _basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = urlsplit(path)
        auth = headers.get("authorization", "")
        if parts.path == "/token":
            if auth.partition(" ")[2] != self._basic():
                return _json(401, {"errors": [{"code": "UNAUTHORIZED"}]})
            token = secrets.token_urlsafe(16)
            self.tokens.add(token)
            return _json(200, {"token": token})
        if not self._authorized(auth):
            challenge = (
                'Basic realm="hostile"'
                if self.realm is None
                else f'Bearer realm="{self.realm}",service="hostile",scope="repository:*:pull"'
            )
            return _json(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
        return self._lie(method, path, parts, headers, body)

    def _lie(self, method: str, path: str, parts: Any, headers: dict[str, str], body: bytes) -> Answer:
        lies = self.lies
        extra: dict[str, str] = {}
        if parts.path in lies.links:
            extra["Link"] = lies.links[parts.path]
        if parts.path == "/v2/_catalog" and lies.catalog is not None:
            return _json(200, {"repositories": lies.catalog}, extra)
        if parts.path.endswith("/tags/list"):
            name = parts.path[len("/v2/") : -len("/tags/list")]
            if name in lies.tags:
                return _json(200, {"name": name, "tags": lies.tags[name]}, extra)
        forward = {k: v for k, v in headers.items() if k in ("accept", "content-type")}
        upstream = self._upstream.request(method, path, headers=forward, content=body or None)
        kept = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "docker-content-digest", "content-length", "link")
        }
        if "link" in kept:
            kept["link"] = kept["link"].replace(self.registry.url, self.url)
        kept.update(extra)
        if parts.path in lies.digests:
            kept.pop("docker-content-digest", None)
            kept["Docker-Content-Digest"] = lies.digests[parts.path]
        return upstream.status_code, kept, b"" if method == "HEAD" else upstream.content
