"""An async client for the OCI distribution API.

- Auth: Basic, and the Bearer token flow when the registry challenges with `WWW-Authenticate: Bearer realm=...`
  (Forgejo offers both; the token is preferred, cached while valid, and fetched again on a 401).
- Credentials stay home: requests (and so the Authorization header) go only to the registry's own origin; the
  login goes to a token realm only on the registry's own hosts (REGISTRY_URL's, REGISTRY_HOSTS) or those in
  REGISTRY_TOKEN_REALMS, never from https to plain http, and never follows a redirect. Anything else is
  "could not check", naming the host.
- Retries with backoff only on 5xx, timeouts and connection errors; never on 4xx.
- One connection pool for the whole run; `slots` (pace.py) bound requests in flight and per second.

It runs on aiohttp, not httpx: a scan is thousands of small requests on a machine whose cores the registry
shares, and httpx's async pool cost ~2 ms of CPU per request here (more as concurrency grows) against
~0.25 ms for aiohttp; benchmarks/scan.py measured the whole scan 3x faster. Other, low-volume API clients
use httpx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bot.config import Settings
from bot.errors import AuthFailed, CouldNotCheck
from bot.refs import manifest_path, validate_digest
from bot.registry.media import ACCEPT
from bot.registry.pace import RequestSlots

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {500, 502, 503, 504}
DEFAULT_PORTS = {"http": 80, "https": 443}
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class _Token:
    value: str
    expires_at: float  # monotonic; inf when the registry gave no lifetime (Forgejo)


@dataclass
class RegistryResponse:
    """A finished answer: status, headers, the exact body bytes (never decompressed), the next page link."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    sent_authorization: str | None
    next_link: str | None = None

    def json(self) -> Any:
        return json.loads(self.content)


class RegistryFailing(CouldNotCheck):
    """The registry kept answering 5xx to one request."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class RegistryClient:
    """Talks to one registry. Use as `async with RegistryClient(settings, password) as client:`."""

    def __init__(
        self,
        settings: Settings,
        password: str = "",
        observer: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """`observer(method, status, seconds)` is told of every answer (the bot's metrics); 0 = no answer."""
        self.settings = settings
        self._observer = observer
        self.base_url = settings.registry_url.rstrip("/")
        self.password = password
        self._username = settings.registry_username
        self._basic = _basic(self._username, password)
        self.slots = RequestSlots(settings.registry_concurrency)  # in flight, per second (pace.py), counted
        self._tokens: dict[str, _Token] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        # Learned from the first challenge, so later requests carry credentials up front.
        self._scheme: str | None = None
        # Token scopes: Forgejo's is one ("*") for everything; others (ghcr.io) scope tokens per repository.
        self._default_scope = ""
        self._repo_scope: dict[str, str] = {}
        self._closed = False
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:  # a straggling task after the check ended must not open a pool nobody closes
            raise CouldNotCheck("The check ended before this request could be sent.")
        if self._session is None:
            settings = self.settings
            tls: ssl.SSLContext | bool = True
            if settings.registry_ca_file:
                tls = ssl.create_default_context(cafile=settings.registry_ca_file)
            elif not settings.registry_tls_verify:
                tls = False
            connector = aiohttp.TCPConnector(limit=settings.registry_concurrency, ssl=tls, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=settings.registry_timeout),
                auto_decompress=False,  # digests are over the exact stored bytes
                headers={"User-Agent": "registry-bot"},
            )
        return self._session

    # --- requests ---------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> RegistryResponse:
        """Send a request to the registry with auth and retries. 4xx answers are returned, not raised.

        Raises CouldNotCheck when the registry cannot be reached or keeps failing, AuthFailed when it
        refuses our credentials.
        """
        url = path if urlsplit(path).scheme else f"{self.base_url}{path}"
        if not self.same_origin(url):
            raise _elsewhere(self.settings, url)
        response = await self._send_with_retries(method, url, headers, params, follow_redirects)
        if response.status_code == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            await self._answer_challenge(challenge, refused=response.sent_authorization, url=url)
            response = await self._send_with_retries(method, url, headers, params, follow_redirects)
            if response.status_code == 401:
                raise AuthFailed(self._auth_failed_message())
        return response

    async def request_plain(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> RegistryResponse:
        """A request outside /v2/ (Forgejo's API) on the same pool and retries, with the caller's own auth."""
        return await self._send_with_retries(method, f"{self.base_url}{path}", headers, params, False, with_auth=False)

    # --- manifests by reference ------------------------------------------------------------------------

    async def resolve_digest(self, name: str, reference: str) -> str | None:
        """The digest a tag points at now (HEAD); None when not there (404); any other answer, CouldNotCheck."""
        response = await self.request("HEAD", manifest_path(name, reference), headers={"Accept": ACCEPT})
        digest = response.headers.get("Docker-Content-Digest", "").strip() if response.status_code == 200 else ""
        if not digest and response.status_code != 404:
            raise CouldNotCheck(f"Could not look up {name}:{reference} ({_unresolved(response.status_code)})")
        return validate_digest(digest) if digest else None  # a registry's answer may lie

    async def delete_manifest(self, name: str, digest: str) -> int:
        """DELETE a manifest by digest, which removes every tag pointing at it; the answer's HTTP status."""
        response = await self.request("DELETE", manifest_path(name, digest))
        return response.status_code

    async def _send_with_retries(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        follow_redirects: bool,
        *,
        with_auth: bool = True,
    ) -> RegistryResponse:
        attempts = self.settings.registry_retries
        delay = 0.2
        for attempt in range(1, attempts + 1):
            all_headers = dict(headers or {})
            auth = self._auth_header(url) if with_auth else None
            if auth:
                all_headers["Authorization"] = auth
            started = time.perf_counter()
            status = 0
            try:
                async with (
                    self.slots,
                    self._http().request(
                        method, url, headers=all_headers, params=params, allow_redirects=follow_redirects
                    ) as answer,
                ):
                    status = answer.status
                    content = b"" if method == "HEAD" else await answer.read()
                    next_page = answer.links.get("next")
                    response = RegistryResponse(
                        answer.status,
                        answer.headers,
                        content,
                        all_headers.get("Authorization"),
                        str(next_page["url"]) if next_page is not None else None,
                    )
            except TimeoutError:
                self._observe(method, status, started)
                problem = f"timed out after {self.settings.registry_timeout:g}s"
            except aiohttp.ClientError as exc:
                self._observe(method, status, started)
                problem = f"could not connect ({type(exc).__name__})"
            else:
                self._observe(method, status, started)
                if response.status_code not in RETRYABLE_STATUS:
                    return response
                if attempt == attempts:
                    raise RegistryFailing(
                        f"The registry {self.settings.registry_host} answered HTTP {response.status_code} "
                        f"to {method} {_path_of(url)} {attempts} times; it is failing, try again later.",
                        response.status_code,
                    )
                problem = f"HTTP {response.status_code}"
            if attempt == attempts:
                raise CouldNotCheck(
                    f"The registry {self.settings.registry_host} is unreachable: {method} {_path_of(url)} "
                    f"{problem} ({attempts} attempts); check that it is up and REGISTRY_URL is right."
                )
            log.info("registry %s %s: %s, retrying in %.1fs", method, _path_of(url), problem, delay)
            await asyncio.sleep(delay)
            delay *= 2.5
        raise AssertionError("unreachable")  # pragma: no cover

    def _observe(self, method: str, status: int, started: float) -> None:
        if self._observer is not None:
            self._observer(method, status, time.perf_counter() - started)

    # --- auth -------------------------------------------------------------------------------------

    def same_origin(self, url: str) -> bool:
        """Whether `url` is on the registry's own scheme, host and port: the only place its login may go."""
        return _origin(url) == _origin(self.base_url)

    def _auth_header(self, url: str) -> str | None:
        if not self.same_origin(url):
            return None
        if self._scheme == "bearer":
            token = self._tokens.get(self._repo_scope.get(_repository_of(url), self._default_scope))
            if token and token.expires_at > time.monotonic():
                return f"Bearer {token.value}"
            return None
        if self._scheme == "basic" and self._username:
            return self._basic
        return None

    async def _answer_challenge(self, challenge: str, *, refused: str | None, url: str) -> None:
        """Get credentials for a 401. `refused` is the Authorization header the registry just refused."""
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and params.get("realm"):
            check_realm(self.settings, params["realm"])
            self._scheme = "bearer"
            scope = params.get("scope", "")
            if scope.startswith("repository:"):
                self._repo_scope[_repository_of(url)] = scope
            else:
                self._default_scope = scope
            lock = self._token_locks.setdefault(scope, asyncio.Lock())
            async with lock:
                current = self._tokens.get(scope)
                # Another task may have logged in while we waited: only replace the token that was refused.
                if current and current.expires_at > time.monotonic() and f"Bearer {current.value}" != refused:
                    return
                self._tokens[scope] = await self._fetch_token(params)
        elif scheme == "basic":
            if not self._username:
                raise AuthFailed(
                    f"The registry {self.settings.registry_host} requires a login; set REGISTRY_USERNAME and "
                    "REGISTRY_PASSWORD (or Vault)."
                )
            if refused is not None and refused.startswith("Basic "):
                raise AuthFailed(self._auth_failed_message())
            self._scheme = "basic"
        else:
            raise AuthFailed(
                f"The registry {self.settings.registry_host} asked for an authentication scheme the bot "
                f"does not speak ({scheme or 'none given'})."
            )

    async def _fetch_token(self, params: dict[str, str]) -> _Token:
        query = {key: params[key] for key in ("service", "scope") if params.get(key)}
        headers = {"Authorization": self._basic} if self._username else {}
        realm = params["realm"]
        try:
            async with self._http().get(realm, params=query, headers=headers, allow_redirects=False) as answer:
                status = answer.status
                content = await answer.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CouldNotCheck(
                f"The registry's token service {_path_of(realm)} is unreachable ({type(exc).__name__})."
            ) from None
        if status in (401, 403):
            raise AuthFailed(self._auth_failed_message())
        if status != 200:
            raise CouldNotCheck(f"The registry's token service answered HTTP {status}; try again later.")
        return _token_from(content)

    def _auth_failed_message(self) -> str:
        return auth_failed_message(self.settings.registry_host, self._username)


def _token_from(content: bytes) -> _Token:
    """A token service's answer: the token, valid until 30 s before it says it expires (forever if it is silent)."""
    try:
        body = json.loads(content)
        value = body.get("token") or body["access_token"]
    except (ValueError, KeyError, AttributeError):
        raise CouldNotCheck("The registry's token service answered without a token.") from None
    lifetime = body.get("expires_in")
    expires = time.monotonic() + max(float(lifetime) - 30, 1) if lifetime else float("inf")
    return _Token(str(value), expires)


def auth_failed_message(host: str, username: str) -> str:
    who = f"user '{username}'" if username else "anonymous access"
    return (
        f"Authentication failed: the registry {host} refused {who}; "
        "check REGISTRY_USERNAME and the token (REGISTRY_PASSWORD or Vault)."
    )


def _elsewhere(settings: Settings, url: str) -> CouldNotCheck:
    return CouldNotCheck(
        f"The registry {settings.registry_host} pointed the bot at {host_of(url)}, another host; the bot sends "
        "requests with its login only to the registry itself, so it could not check."
    )


def check_realm(settings: Settings, realm: str) -> None:
    """Refuse (CouldNotCheck) a token realm the registry's login must not go to."""
    registry = settings.registry_host
    parts = urlsplit(realm)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise CouldNotCheck(
            f"The registry {registry} named a token service that is not an http(s) URL "
            f"({host_of(realm) or _clip(realm)}), so the login was not sent and it could not be checked."
        )
    host = host_of(realm)
    if scheme == "http" and urlsplit(settings.registry_url).scheme.lower() == "https":
        raise CouldNotCheck(
            f"The registry {registry} asked the bot to log in over plain http at {host}; the login never goes "
            "from https to http, so it was not sent and the image could not be checked."
        )
    trusted = {h.lower() for h in (*settings.all_registry_hosts, *settings.registry_token_realms)}
    if parts.username is not None or parts.password is not None or not (_host_forms(realm) & trusted):
        raise CouldNotCheck(
            f"The registry {registry} asked the bot to log in at {host}, which is not one of the registry's "
            "own hosts nor in REGISTRY_TOKEN_REALMS, so the login was not sent and the image could not be "
            "checked."
        )


def _repository_of(url: str) -> str:
    """The repository a /v2/<name>/(manifests|blobs|tags)/... URL addresses ('' for others)."""
    path = urlsplit(url).path
    if not path.startswith("/v2/"):
        return ""
    for marker in ("/manifests/", "/blobs/", "/tags/"):
        if marker in path:
            return path[4 : path.index(marker)]
    return ""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return scheme, "", -1  # a port that is not one matches no origin
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def _host_forms(url: str) -> set[str]:
    """The host[:port] spellings that name `url`'s host: with its default port, with and without it."""
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2].lower()
    default = DEFAULT_PORTS.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return set()
    if port is None:
        return {hostport, f"{hostport}:{default}"}
    if port == default:
        return {hostport, hostport[: hostport.rfind(":")]}
    return {hostport}


def host_of(url: str) -> str:
    """host[:port] of a URL for a message: no credentials, nothing unprintable, not too long."""
    return _clip(urlsplit(url).netloc.rpartition("@")[2])


def _clip(text: str, limit: int = 100) -> str:
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


def _path_of(url: str) -> str:
    """The path of a URL, for messages: never the query (it may carry a scope) nor credentials."""
    return urlsplit(url).path


def _unresolved(status: int) -> str:
    return "no Docker-Content-Digest" if status == 200 else f"HTTP {status}"
