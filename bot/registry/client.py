"""An async client for the OCI distribution API.

- Auth: Basic, and the Bearer token flow when the registry challenges with `WWW-Authenticate: Bearer realm=...`
  (Forgejo offers both; the token is preferred, cached while valid, and fetched again on a 401).
- Retries with backoff only on 5xx, timeouts and connection errors; never on 4xx.
- One connection pool for the whole run; a semaphore bounds requests in flight.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from bot.config import Settings
from bot.errors import AuthFailed, CouldNotCheck

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {500, 502, 503, 504}
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class _Token:
    value: str
    expires_at: float  # monotonic; inf when the registry gave no lifetime (Forgejo)


class RegistryFailing(CouldNotCheck):
    """The registry kept answering 5xx to one request."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


class RegistryClient:
    """Talks to one registry. Use as `async with RegistryClient(settings, password) as client:`."""

    def __init__(self, settings: Settings, password: str = "", transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self.base_url = settings.registry_url.rstrip("/")
        self._username = settings.registry_username
        self._password = password
        self._semaphore = asyncio.Semaphore(settings.registry_concurrency)
        self._tokens: dict[str, _Token] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        # Learned from the first challenge, so later requests carry credentials up front.
        self._scheme: str | None = None
        self._bearer_params: dict[str, str] = {}
        verify: bool | str = settings.registry_ca_file or settings.registry_tls_verify
        limits = httpx.Limits(
            max_connections=settings.registry_concurrency,
            max_keepalive_connections=settings.registry_concurrency,
        )
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.registry_timeout),
            limits=limits,
            verify=verify,
            transport=transport,
            headers={"User-Agent": "registry-bot"},
        )
        self.requests_made = 0
        credentials = f"{self._username}:{password}".encode()
        self._basic = "Basic " + base64.b64encode(credentials).decode("ascii")

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- requests ---------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send a request to the registry with auth and retries. 4xx answers are returned, not raised.

        Raises CouldNotCheck when the registry cannot be reached or keeps failing, AuthFailed when it
        refuses our credentials.
        """
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        response = await self._send_with_retries(method, url, headers, params, follow_redirects)
        if response.status_code == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            await self._answer_challenge(challenge, refused=response.request.headers.get("Authorization"))
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
    ) -> httpx.Response:
        """A request outside /v2/ (Forgejo's API) on the same pool and retries, with the caller's own auth."""
        url = f"{self.base_url}{path}"
        return await self._send_with_retries(method, url, headers, params, False, with_auth=False)

    async def _send_with_retries(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        follow_redirects: bool,
        *,
        with_auth: bool = True,
    ) -> httpx.Response:
        attempts = self.settings.registry_retries
        delay = 0.2
        for attempt in range(1, attempts + 1):
            all_headers = dict(headers or {})
            auth = self._auth_header() if with_auth else None
            if auth:
                all_headers["Authorization"] = auth
            try:
                async with self._semaphore:
                    self.requests_made += 1
                    response = await self._http.request(
                        method, url, headers=all_headers, params=params, follow_redirects=follow_redirects
                    )
                    if method != "HEAD":
                        await response.aread()
            except httpx.TimeoutException:
                problem = f"timed out after {self.settings.registry_timeout:g}s"
            except httpx.TransportError as exc:
                problem = f"could not connect ({type(exc).__name__})"
            else:
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

    # --- auth -------------------------------------------------------------------------------------

    def _auth_header(self) -> str | None:
        if self._scheme == "bearer":
            token = self._tokens.get(self._bearer_params.get("scope", ""))
            if token and token.expires_at > time.monotonic():
                return f"Bearer {token.value}"
            return None
        if self._scheme == "basic" and self._username:
            return self._basic
        return None

    async def _answer_challenge(self, challenge: str, *, refused: str | None) -> None:
        """Get credentials for a 401. `refused` is the Authorization header the registry just refused."""
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and params.get("realm"):
            self._scheme = "bearer"
            self._bearer_params = params
            scope = params.get("scope", "")
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
        auth = httpx.BasicAuth(self._username, self._password) if self._username else None
        try:
            response = await self._http.get(params["realm"], params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise CouldNotCheck(
                f"The registry's token service {_path_of(params['realm'])} is unreachable ({type(exc).__name__})."
            ) from None
        if response.status_code in (401, 403):
            raise AuthFailed(self._auth_failed_message())
        if response.status_code != 200:
            raise CouldNotCheck(f"The registry's token service answered HTTP {response.status_code}; try again later.")
        try:
            body = response.json()
            value = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise CouldNotCheck("The registry's token service answered without a token.") from None
        lifetime = body.get("expires_in")
        expires = time.monotonic() + max(float(lifetime) - 30, 1) if lifetime else float("inf")
        return _Token(str(value), expires)

    def _auth_failed_message(self) -> str:
        who = f"user '{self._username}'" if self._username else "anonymous access"
        return (
            f"Authentication failed: the registry {self.settings.registry_host} refused {who}; "
            "check REGISTRY_USERNAME and the token (REGISTRY_PASSWORD or Vault)."
        )


def _path_of(url: str) -> str:
    """The path of a URL, for messages: never the query (it may carry a scope) nor credentials."""
    return httpx.URL(url).path
