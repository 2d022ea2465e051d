"""A Forgejo stand-in in front of the real registry: Forgejo's registry auth and its packages API.

/v2/* is proxied to the test's real docker-registry, behind Forgejo's auth: an unauthenticated request gets
401 with `WWW-Authenticate: Bearer realm="<url>/v2/token",service="container_registry",scope="*"`,
`GET /v2/token` with Basic user:token answers `{"token": ...}` (no expires_in, like Forgejo), and Basic
user:token is accepted on /v2/* directly too. The packages API (/api/v1/packages, `Authorization: token`)
lists, shows and deletes container versions of the real registry. `tamper` makes chosen answers go wrong
for fault tests.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.peers.registry import Registry


@dataclass
class Tamper:
    method: str
    path: re.Pattern[str]
    status: int | None
    body: bytes | None
    headers: dict[str, str]
    times: int | None
    delay: float = 0.0


@dataclass
class ForgejoUser:
    token: str
    scopes: set[str] = field(default_factory=lambda: {"read:package"})


class QuietHTTPServer(ThreadingHTTPServer):
    """A client hanging up mid-answer (a timeout test) is normal here, not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ForgejoStandIn:
    def __init__(self, registry: Registry, users: dict[str, ForgejoUser] | None = None) -> None:
        self.registry = registry
        self.users = users or {
            "cluster-puller": ForgejoUser("pull-token-s3cret", {"read:package"}),
            "viktor": ForgejoUser("cleanup-token-s3cret", {"read:package", "write:package"}),
        }
        self._tokens: dict[str, str] = {}  # bearer token -> user
        self._tampers: list[Tamper] = []
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, auth scheme)
        self.authorizations: list[str] = []  # every Authorization header received, as sent
        self.tokens_issued = 0
        self.catalog_disabled = False
        self._server = QuietHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._upstream = httpx.Client(base_url=registry.url, timeout=30)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ForgejoStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    # --- test controls --------------------------------------------------------------------------

    def tamper(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        times: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer matching requests with this status/body/headers instead of the registry's answer."""
        with self._lock:
            self._tampers.append(Tamper(method, re.compile(path_regex), status, body, headers or {}, times, delay))

    def clear_tampering(self) -> None:
        with self._lock:
            self._tampers.clear()

    def revoke_tokens(self) -> None:
        """Forget every issued bearer token, as when they expire."""
        with self._lock:
            self._tokens.clear()

    def paths(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [path for _, path, _ in self.requests if path.startswith(prefix)]

    # --- Forgejo's API shapes (convert.ToUser, convert.ToPackage, the API's error bodies) ----------------

    def user_json(self, login: str) -> dict[str, Any]:
        return {
            "id": zlib.crc32(login.encode()) % 100_000,
            "login": login,
            "login_name": "",
            "source_id": 0,
            "full_name": login.title(),
            "email": f"{login}@noreply.localhost",
            "avatar_url": f"{self.url}/avatars/{login}",
            "html_url": f"{self.url}/{login}",
            "language": "",
            "is_admin": False,
            "last_login": "2026-11-30T00:00:00Z",
            "created": "2026-01-01T00:00:00Z",
            "restricted": False,
            "active": True,
            "prohibit_login": False,
            "location": "",
            "pronouns": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
        }

    def package_json(self, owner: str, name: str, version: str) -> dict[str, Any]:
        return {
            "id": zlib.crc32(f"{owner}/{name}:{version}".encode()) % 1_000_000,
            "owner": self.user_json(owner),
            "creator": self.user_json(owner),
            "type": "container",
            "name": name,
            "version": version,
            "created_at": "2026-11-30T00:00:00Z",
            "html_url": f"{self.url}/{owner}/-/packages/container/{name}/{version}",
        }

    def api_error(self, status: int, message: str) -> dict[str, Any]:
        """Forgejo's APIError ({message, url}), APINotFound also listing `errors`."""
        body: dict[str, Any] = {"message": message, "url": f"{self.url}/api/swagger"}
        if status == 404:
            body["errors"] = [message]
        return body

    # --- the server -------------------------------------------------------------------------------

    def _user_for(self, header: str | None) -> str | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            with self._lock:
                return self._tokens.get(value)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return None
            known = self.users.get(user)
            return user if known and secrets.compare_digest(known.token, password) else None
        if scheme.lower() == "token":
            for user, known in self.users.items():
                if secrets.compare_digest(known.token, value):
                    return user
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                headers = dict(headers or {})
                headers.setdefault("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _challenge(self) -> None:
                realm = f"{stand_in.url}/v2/token"
                self._json(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    {"WWW-Authenticate": f'Bearer realm="{realm}",service="container_registry",scope="*"'},
                )

            def _route(self) -> None:
                parts = urlsplit(self.path)
                auth = self.headers.get("Authorization", "")
                with stand_in._lock:
                    stand_in.requests.append((self.command, parts.path, auth.partition(" ")[0]))
                    stand_in.authorizations.append(auth)
                    tamper = next(
                        (t for t in stand_in._tampers if t.method in (self.command, "*") and t.path.search(parts.path)),
                        None,
                    )
                    if tamper and tamper.times is not None:
                        tamper.times -= 1
                        if tamper.times <= 0:
                            stand_in._tampers.remove(tamper)
                if tamper and tamper.delay:
                    import time

                    time.sleep(tamper.delay)
                if parts.path == "/v2/token":
                    return self._token(auth)
                if parts.path.startswith("/v2/"):
                    return self._registry(parts, auth, tamper)
                if parts.path.startswith("/api/v1/packages/"):
                    if tamper and tamper.status is not None:
                        body = tamper.body if tamper.body is not None else b'{"message":"tampered"}'
                        return self._send(tamper.status, body, {"Content-Type": "application/json"})
                    return self._packages(parts, auth)
                self._json(404, {"message": "Not Found"})

            def _token(self, auth: str) -> None:
                user = stand_in._user_for(auth) if auth.lower().startswith("basic ") else None
                if not user:
                    self._json(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]})
                    return
                token = secrets.token_urlsafe(24)
                with stand_in._lock:
                    stand_in._tokens[token] = user
                    stand_in.tokens_issued += 1
                self._json(200, {"token": token})

            def _registry(self, parts: Any, auth: str, tamper: Tamper | None) -> None:
                if not stand_in._user_for(auth):
                    return self._challenge()
                if parts.path.startswith("/v2/_catalog") and stand_in.catalog_disabled:
                    return self._json(404, {"errors": [{"code": "UNSUPPORTED", "message": "not supported"}]})
                if tamper and tamper.status is not None and tamper.body is None and not tamper.headers:
                    return self._json(tamper.status, {"errors": [{"code": "UNKNOWN", "message": "tampered"}]})
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                forward = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
                upstream = stand_in._upstream.request(
                    self.command, self.path, headers=forward, content=body, follow_redirects=False
                )
                headers = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "docker-content-digest", "link", "location", "content-length")
                }
                if "link" in headers:
                    headers["link"] = headers["link"].replace(stand_in.registry.url, stand_in.url)
                status, content = upstream.status_code, upstream.content
                if self.command == "HEAD":
                    content = b""
                if tamper:
                    status = tamper.status if tamper.status is not None else status
                    if tamper.body is not None:
                        content = tamper.body
                        headers["content-length"] = str(len(content))
                    headers.update({k.lower(): v for k, v in tamper.headers.items()})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "content-length" not in headers:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD" and content:
                    self.wfile.write(content)

            def _packages(self, parts: Any, auth: str) -> None:
                user = stand_in._user_for(auth)
                if not user:
                    return self._json(401, stand_in.api_error(401, "token is required"))
                segments = [s for s in parts.path.split("/")[4:] if s]
                if len(segments) == 1 and self.command == "GET":
                    return self._list(segments[0], parse_qs(parts.query))
                if len(segments) == 4 and segments[1] == "container":
                    owner, _, name, version = segments
                    return self._version(user, owner, name, version)
                self._json(404, stand_in.api_error(404, "Not Found"))

            def _list(self, owner: str, query: dict[str, list[str]]) -> None:
                page = int(query.get("page", ["1"])[0])
                limit = int(query.get("limit", ["50"])[0])
                versions = []
                catalog = stand_in._upstream.get("/v2/_catalog", params={"n": "1000"}).json()
                for repo in catalog.get("repositories") or []:
                    if not repo.startswith(owner + "/"):
                        continue
                    tags = stand_in._upstream.get(f"/v2/{repo}/tags/list").json().get("tags") or []
                    for tag in tags:
                        versions.append(stand_in.package_json(owner, repo.split("/", 1)[1], tag))
                chunk = versions[(page - 1) * limit : page * limit]
                headers = {"X-Total-Count": str(len(versions))}
                if page * limit < len(versions):
                    headers["Link"] = (
                        f"<{stand_in.url}/api/v1/packages/{owner}?type=container&page={page + 1}&limit={limit}>; "
                        'rel="next"'
                    )
                self._json(200, chunk, headers)

            def _version(self, user: str, owner: str, name: str, version: str) -> None:
                repo = f"{owner}/{name}"
                head = stand_in._upstream.head(
                    f"/v2/{repo}/manifests/{version}",
                    headers={
                        "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest"
                        ".v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
                        "application/vnd.docker.distribution.manifest.v2+json"
                    },
                )
                if self.command == "GET":
                    if head.status_code != 200:
                        return self._json(404, stand_in.api_error(404, "package does not exist"))
                    return self._json(200, stand_in.package_json(owner, name, version))
                if self.command != "DELETE":
                    return self._json(405, stand_in.api_error(405, "method not allowed"))
                if "write:package" not in stand_in.users[user].scopes:
                    message = "token does not have at least one of required scope(s): [write:package]"
                    return self._json(403, stand_in.api_error(403, message))
                if head.status_code != 200:
                    return self._json(404, stand_in.api_error(404, "package does not exist"))
                digest = head.headers["Docker-Content-Digest"]
                stand_in._upstream.delete(f"/v2/{repo}/manifests/{digest}")
                self._send(204)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route

        return Handler
