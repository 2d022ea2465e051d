"""A GitHub Container Registry stand-in in front of a real docker-registry, with GitHub's packages REST API.

The registry side (`url`) speaks GHCR's wire protocol:
- `/v2/` and every repository path answer 401 with `WWW-Authenticate: Bearer realm="<url>/token",
  service="<host>"` (plus `scope="repository:<name>:pull"` on a repository path) until a token is shown;
- `GET /token?service=...&scope=repository:<name>:pull[,push]` with Basic `username:PAT` answers
  `{"token": ...}`; a token is valid for its one repository and actions only (per repository scope);
  pull needs the PAT's `read:packages`, push `write:packages`;
- `/v2/_catalog` is not supported (404 UNSUPPORTED), nor is DELETE on /v2/ (deletes go through the REST API);
- everything else is proxied to the real registry.

The REST side (`api_url`, like https://api.github.com) serves, for the configured owner (a user or an org):
- `GET /users|orgs/{owner}/packages?package_type=container` with `Link` pagination (`per_page`, `page`);
- `GET .../packages/container/{name}/versions`, computed from what the registry really holds: one version per
  manifest revision in the repository's storage (index children too, untagged), `metadata.container.tags`
  from its tag links, newest first, `Link` pagination; a name with slashes must be URL-encoded (`tools%2Fcli`);
- `DELETE .../versions/{id}`: needs `delete:packages` (403 without), removes the manifest from the real
  registry, 204. Errors have GitHub's shape `{"message", "documentation_url", "status"}`.

Every request to either side is recorded with its Authorization header (`seen`), so a test can say which
credentials reached which host.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import httpx

from tests.peers.forgejo import QuietHTTPServer
from tests.peers.registry import Registry

DOCS = "https://docs.github.com/rest/packages/packages"
API_VERSIONS = ("2022-11-28", "2026-03-10")
ACCEPT_ALL = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
)


@dataclass
class GhcrUser:
    pat: str
    scopes: set[str] = field(default_factory=lambda: {"read:packages"})


@dataclass(frozen=True)
class Seen:
    side: str  # "registry" or "api"
    method: str
    path: str
    authorization: str


@dataclass(frozen=True)
class _Grant:
    user: str
    repository: str
    actions: frozenset[str]


Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(data).encode()


def github_error(status: int, message: str, doc: str = DOCS) -> Answer:
    return _json(status, {"message": message, "documentation_url": doc, "status": str(status)})


def registry_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return _json(status, {"errors": [{"code": code, "message": message}]}, headers)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GhcrStandIn:
    """Use as a context manager. `owner_type`: "user" or "org"; `users`: login -> GhcrUser (PAT, scopes)."""

    def __init__(
        self,
        registry: Registry,
        owner: str = "viktorbarzin",
        *,
        owner_type: str = "user",
        users: dict[str, GhcrUser] | None = None,
        default_per_page: int = 30,
        max_per_page: int = 100,
    ) -> None:
        """`default_per_page` and `max_per_page` are GitHub's 30 and 100; tests lower them to see pagination."""
        self.registry = registry
        self.owner = owner
        self.owner_type = owner_type
        self.users = users or {
            "viktorbarzin": GhcrUser("ghcr-pat-s3cret", {"read:packages", "write:packages", "delete:packages"}),
            "reader": GhcrUser("ghcr-read-s3cret", {"read:packages"}),
        }
        self.default_per_page = default_per_page
        self.off_schema = False  # True: packages lack `version_count`, an answer GitHub would never give
        self.max_per_page = max_per_page
        self.seen: list[Seen] = []
        self.deleted: list[tuple[str, str]] = []  # (repository, digest) removed through the REST API
        self._grants: dict[str, _Grant] = {}
        self._version_ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=registry.url, timeout=30)
        self._registry_server = QuietHTTPServer(("127.0.0.1", 0), self._handler("registry"))
        self._api_server = QuietHTTPServer(("127.0.0.1", 0), self._handler("api"))
        self.host = f"127.0.0.1:{self._registry_server.server_address[1]}"
        self.url = f"http://{self.host}"
        self.api_url = f"http://127.0.0.1:{self._api_server.server_address[1]}"
        self._threads = [
            threading.Thread(target=server.serve_forever, daemon=True)
            for server in (self._registry_server, self._api_server)
        ]

    def __enter__(self) -> GhcrStandIn:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._registry_server, self._api_server):
            server.shutdown()
            server.server_close()
        self._upstream.close()

    def authorizations(self, side: str | None = None) -> list[str]:
        with self._lock:
            return [s.authorization for s in self.seen if side in (None, s.side) and s.authorization]

    def version_id(self, repository: str, digest: str) -> int:
        """A version's id in the REST API: stable per (repository, digest), as GitHub's are."""
        with self._lock:
            key = (repository, digest)
            if key not in self._version_ids:
                self._version_ids[key] = 700_000_000 + len(self._version_ids) * 7 + zlib.crc32(digest.encode()) % 7
            return self._version_ids[key]

    # --- what the registry really holds ------------------------------------------------------------

    def repositories(self) -> list[str]:
        base = self.registry.root / "docker/registry/v2/repositories"
        if not base.exists():
            return []
        found = [str(p.parent.relative_to(base)) for p in base.rglob("_manifests")]
        return sorted(r for r in found if r.startswith(self.owner + "/"))

    def versions(self, repository: str) -> list[tuple[str, tuple[str, ...], float]]:
        """(digest, tags, created) of every manifest revision the repository holds, newest first."""
        manifests = self.registry.repo_dir(repository) / "_manifests"
        tags: dict[str, list[str]] = {}
        for link in (manifests / "tags").glob("*/current/link"):
            tags.setdefault(link.read_text().strip(), []).append(link.parent.parent.name)
        found = []
        for link in (manifests / "revisions").glob("*/*/link"):
            digest = f"{link.parent.parent.name}:{link.parent.name}"
            found.append((digest, tuple(sorted(tags.get(digest, []))), link.stat().st_mtime))
        return sorted(found, key=lambda v: (-v[2], v[0]))

    # --- the servers ---------------------------------------------------------------------------------

    def _handler(self, side: str) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _route(self) -> None:
                auth = self.headers.get("Authorization", "")
                with stand_in._lock:
                    stand_in.seen.append(Seen(side, self.command, self.path, auth))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if side == "registry":
                    status, headers, content = stand_in._registry(self.command, self.path, auth, body, self.headers)
                else:
                    status, headers, content = stand_in._api(self.command, self.path, auth, self.headers)
                self.send_response(status)
                if not any(key.lower() == "content-length" for key in headers):
                    headers["Content-Length"] = str(len(content))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD" and content:
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route

        return Handler

    # --- ghcr.io ---------------------------------------------------------------------------------------

    def _basic_user(self, auth: str, scope: str) -> str | None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            login, _, pat = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        user = self.users.get(login)
        return login if user and secrets.compare_digest(user.pat, pat) and scope in user.scopes else None

    def _token(self, query: dict[str, list[str]], auth: str) -> Answer:
        scope = (query.get("scope") or [""])[0]
        match = re.fullmatch(r"repository:([^:]+):([a-z,*]+)", scope)
        repository, wanted = (match[1], set(match[2].split(","))) if match else ("", {"pull"})
        needed = "write:packages" if "push" in wanted else "read:packages"
        user = self._basic_user(auth, needed)
        if user is None:
            return registry_error(401, "UNAUTHORIZED", "authentication required")
        token = base64.b64encode(secrets.token_bytes(24)).decode()
        with self._lock:
            self._grants[token] = _Grant(user, repository, frozenset(wanted))
        return _json(200, {"token": token})

    def _challenge(self, repository: str = "", actions: str = "pull") -> Answer:
        header = f'Bearer realm="{self.url}/token",service="{self.host}"'
        if repository:
            header += f',scope="repository:{repository}:{actions}"'
        return registry_error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": header})

    def _registry(self, method: str, raw: str, auth: str, body: bytes, headers: Any) -> Answer:
        parts = urlsplit(raw)
        if parts.path == "/token" and method == "GET":
            return self._token(parse_qs(parts.query), auth)
        if not parts.path.startswith("/v2/"):
            return registry_error(404, "NOT_FOUND", "page not found")
        scheme, _, value = auth.partition(" ")
        with self._lock:
            grant = self._grants.get(value) if scheme.lower() == "bearer" else None
        if parts.path == "/v2/":
            return _json(200, {}) if grant else self._challenge()
        if parts.path.startswith("/v2/_catalog"):
            return registry_error(404, "UNSUPPORTED", "The operation is unsupported.") if grant else self._challenge()
        match = re.fullmatch(r"/v2/(.+?)/(manifests|blobs|tags)/.*", parts.path)
        if not match:
            return registry_error(404, "NOT_FOUND", "page not found")
        repository = match[1]
        action = "pull" if method in ("GET", "HEAD") else "push"
        if grant is None or grant.repository != repository or action not in grant.actions:
            return self._challenge(repository, "pull" if action == "pull" else "pull,push")
        if method == "DELETE":
            return registry_error(405, "UNSUPPORTED", "Deletes go through GitHub's packages API.")
        return self._forward(method, raw, body, headers)

    def _forward(self, method: str, raw: str, body: bytes, headers: Any) -> Answer:
        forward = {k: v for k, v in headers.items() if k.lower() in ("accept", "content-type", "range")}
        upstream = self._upstream.request(method, raw, headers=forward, content=body or None, follow_redirects=False)
        kept = ("content-type", "docker-content-digest", "link", "location", "content-length", "range")
        answer = {k: v for k, v in upstream.headers.items() if k.lower() in kept}
        for key in ("location", "link"):
            if key in answer:
                answer[key] = answer[key].replace(self.registry.url, self.url)
        content = b"" if method == "HEAD" else upstream.content
        return upstream.status_code, answer, content

    # --- api.github.com --------------------------------------------------------------------------------

    def _api_user(self, auth: str) -> tuple[str | None, Answer | None]:
        if not auth:
            return None, github_error(401, "Requires authentication")
        scheme, _, value = auth.partition(" ")
        for login, user in self.users.items():
            if scheme.lower() in ("bearer", "token") and secrets.compare_digest(user.pat, value.strip()):
                return login, None
        return None, github_error(401, "Bad credentials", "https://docs.github.com/rest")

    def _api(self, method: str, raw: str, auth: str, headers: Any) -> Answer:
        login, refused = self._api_user(auth)
        if refused is not None:
            return refused
        assert login is not None
        version = headers.get("X-GitHub-Api-Version")
        if version is not None and version not in API_VERSIONS:
            return github_error(400, f"API version {version} is not supported.")
        scopes = self.users[login].scopes
        status, answer, content = self._api_route(method, raw, scopes)
        answer.update(
            {
                "X-OAuth-Scopes": ", ".join(sorted(scopes)),
                "X-Accepted-OAuth-Scopes": "delete:packages, read:packages" if method == "DELETE" else "read:packages",
                "X-GitHub-Api-Version-Selected": version or API_VERSIONS[0],
                "X-GitHub-Media-Type": "github.v3; format=json",
            }
        )
        return status, answer, content

    def _api_route(self, method: str, raw: str, scopes: set[str]) -> Answer:
        parts = urlsplit(raw)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        segments = parts.path.strip("/").split("/")  # the raw path: an encoded slash stays inside its segment
        if len(segments) < 3 or segments[0] not in ("users", "orgs") or segments[2] != "packages":
            return github_error(404, "Not Found", "https://docs.github.com/rest")
        kind, owner = segments[0], unquote(segments[1])
        if owner != self.owner or kind != ("orgs" if self.owner_type == "org" else "users"):
            return github_error(404, "Not Found")
        if "read:packages" not in scopes:
            return github_error(403, "You need at least read:packages scope to list packages.")
        rest = segments[3:]
        if not rest and method == "GET":
            return self._list_packages(kind, query)
        if len(rest) == 3 and rest[0] == "container" and rest[2] == "versions" and method == "GET":
            return self._list_versions(kind, unquote(rest[1]), query)
        if len(rest) == 4 and rest[0] == "container" and rest[2] == "versions" and method == "DELETE":
            if "delete:packages" not in scopes:
                return github_error(403, "You need at least delete:packages scope to delete a package version.")
            return self._delete_version(unquote(rest[1]), rest[3])
        return github_error(404, "Not Found")

    def _page(self, items: list[Any], query: dict[str, str], path: str, extra: dict[str, str]) -> tuple[list[Any], str]:
        """One page of `items` and its `Link` header (next, last, first, prev), as GitHub paginates."""
        per_page = min(max(int(query.get("per_page") or self.default_per_page), 1), self.max_per_page)
        page = max(int(query.get("page") or 1), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)

        def url(number: int) -> str:
            return f"{self.api_url}{path}?{urlencode({**extra, 'per_page': per_page, 'page': number})}"

        links = []
        if page < last:
            links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
        if page > 1:
            links += [f'<{url(1)}>; rel="first"', f'<{url(page - 1)}>; rel="prev"']
        return items[(page - 1) * per_page : page * per_page], ", ".join(links)

    def owner_json(self) -> dict[str, Any]:
        login, web = self.owner, self.api_url
        return {
            "login": login,
            "id": zlib.crc32(login.encode()) % 10_000_000,
            "node_id": "U_kgDO" + base64.b64encode(login.encode()).decode()[:8],
            "avatar_url": f"{web}/avatars/{login}",
            "gravatar_id": "",
            "url": f"{self.api_url}/users/{login}",
            "html_url": f"{web}/{login}",
            "followers_url": f"{self.api_url}/users/{login}/followers",
            "following_url": f"{self.api_url}/users/{login}/following{{/other_user}}",
            "gists_url": f"{self.api_url}/users/{login}/gists{{/gist_id}}",
            "starred_url": f"{self.api_url}/users/{login}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{self.api_url}/users/{login}/subscriptions",
            "organizations_url": f"{self.api_url}/users/{login}/orgs",
            "repos_url": f"{self.api_url}/users/{login}/repos",
            "events_url": f"{self.api_url}/users/{login}/events{{/privacy}}",
            "received_events_url": f"{self.api_url}/users/{login}/received_events",
            "type": "Organization" if self.owner_type == "org" else "User",
            "user_view_type": "public",
            "site_admin": False,
        }

    def package_json(self, kind: str, name: str) -> dict[str, Any]:
        repository = f"{self.owner}/{name}"
        versions = self.versions(repository)
        created = min((v[2] for v in versions), default=time.time())
        updated = max((v[2] for v in versions), default=created)
        encoded = quote(name, safe="")
        return {
            "id": zlib.crc32(repository.encode()) % 100_000_000,
            "name": name,
            "package_type": "container",
            "owner": self.owner_json(),
            **({} if self.off_schema else {"version_count": len(versions)}),
            "visibility": "private",
            "url": f"{self.api_url}/{kind}/{self.owner}/packages/container/{encoded}",
            "html_url": f"{self.api_url}/{self.owner}/packages/container/package/{encoded}",
            "created_at": iso(created),
            "updated_at": iso(updated),
        }

    def _list_packages(self, kind: str, query: dict[str, str]) -> Answer:
        package_type = query.get("package_type")
        if package_type is None:
            return github_error(422, 'Invalid request.\n\n"package_type" wasn\'t supplied.')
        names = [r.split("/", 1)[1] for r in self.repositories()] if package_type == "container" else []
        path = f"/{kind}/{self.owner}/packages"
        page, link = self._page(names, query, path, {"package_type": package_type})
        return _json(200, [self.package_json(kind, name) for name in page], {"Link": link} if link else {})

    def version_json(self, kind: str, name: str, digest: str, tags: tuple[str, ...], created: float) -> dict[str, Any]:
        encoded = quote(name, safe="")
        version_id = self.version_id(f"{self.owner}/{name}", digest)
        return {
            "id": version_id,
            "name": digest,
            "url": f"{self.api_url}/{kind}/{self.owner}/packages/container/{encoded}/versions/{version_id}",
            "package_html_url": f"{self.api_url}/{self.owner}/packages/container/package/{encoded}",
            "html_url": f"{self.api_url}/{self.owner}/packages/container/{encoded}/{version_id}",
            "created_at": iso(created),
            "updated_at": iso(created),
            "metadata": {"package_type": "container", "container": {"tags": list(tags)}},
        }

    def _list_versions(self, kind: str, name: str, query: dict[str, str]) -> Answer:
        repository = f"{self.owner}/{name}"
        if repository not in self.repositories():
            return github_error(404, "Package not found.")
        versions = self.versions(repository)
        path = f"/{kind}/{self.owner}/packages/container/{quote(name, safe='')}/versions"
        extra = {"state": query["state"]} if "state" in query else {}
        page, link = self._page(versions, query, path, extra)
        body = [self.version_json(kind, name, digest, tags, created) for digest, tags, created in page]
        return _json(200, body, {"Link": link} if link else {})

    def _delete_version(self, name: str, version_id: str) -> Answer:
        repository = f"{self.owner}/{name}"
        if repository not in self.repositories():
            return github_error(404, "Package not found.")
        held = self.versions(repository)
        digest = next((d for d, _, _ in held if str(self.version_id(repository, d)) == version_id), None)
        if digest is None:
            return github_error(404, "Not Found")
        answer = self._upstream.delete(f"/v2/{repository}/manifests/{digest}")
        if answer.status_code not in (200, 202):
            return github_error(500, f"the registry answered {answer.status_code}")
        with self._lock:
            self.deleted.append((repository, digest))
        return 204, {}, b""


class ChallengeAuth(httpx.Auth):
    """What `docker login` + `docker push` do against GHCR: answer a Bearer challenge with a token fetched from
    its realm with Basic username:PAT, one token per repository scope (for ImagePusher and the Actions runner)."""

    def __init__(self, username: str, pat: str) -> None:
        self._basic = "Basic " + base64.b64encode(f"{username}:{pat}".encode()).decode()
        self._tokens: dict[str, str] = {}

    def auth_flow(self, request: httpx.Request) -> Any:
        repository = _repository_of(request.url.path)
        if repository in self._tokens:
            request.headers["Authorization"] = f"Bearer {self._tokens[repository]}"
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer "):
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        scope = params.get("scope")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        token_request = httpx.Request("GET", params["realm"], params=query, headers={"Authorization": self._basic})
        token_response = yield token_request
        token_response.read()
        if token_response.status_code != 200:
            return
        self._tokens[repository] = token_response.json()["token"]
        request.headers["Authorization"] = f"Bearer {self._tokens[repository]}"
        yield request


def _repository_of(path: str) -> str:
    match = re.fullmatch(r"/v2/(.+?)/(manifests|blobs|tags)/.*", path)
    return match[1] if match else ""
