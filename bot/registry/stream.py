"""Streamed blob GETs over a RegistryClient's pool, auth and request slots, for reading blobs of any size.

One attempt each, no retries: the caller knows how far it got and resumes (bot/registry/blobs.py). The
registry's 401 is answered once, as `RegistryClient.request` does. Redirects are followed here, not by
aiohttp: credentials go only to the registry's own origin, never to the blob storage (S3, GCS) it redirects
to. Only silence times out (REGISTRY_TIMEOUT without a byte), never a long download.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot.errors import AuthFailed, CouldNotCheck
from bot.registry.client import RegistryClient

REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
STREAM_BUFFER = 1 << 20  # aiohttp's read buffer for a streamed blob: fewer wake-ups per MiB than its 64 KiB


class BlobStreamBroken(CouldNotCheck):
    """A blob GET could not be sent, or its answer stopped before its end (timeout, connection dropped)."""


@dataclass
class BlobStream:
    """An open blob answer, its body not read yet: read it with `chunks()`, within `open_blob`'s block."""

    status_code: int
    headers: Mapping[str, str]
    url: str  # where the answer finally came from, after redirects
    _answer: aiohttp.ClientResponse

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of up to `size` bytes; BlobStreamBroken when it stops before its end."""
        try:
            async for chunk in self._answer.content.iter_chunked(size):
                yield chunk
        except TimeoutError:
            raise BlobStreamBroken(f"no byte came for a while from {_path_of(self.url)}") from None
        except aiohttp.ClientError as exc:
            raise BlobStreamBroken(f"the answer from {_path_of(self.url)} broke off ({type(exc).__name__})") from None


@asynccontextmanager
async def open_blob(
    client: RegistryClient, path: str, *, headers: Mapping[str, str] | None = None
) -> AsyncIterator[BlobStream]:
    """GET `path` (/v2/<name>/blobs/<digest>) to read as a stream, holding one of the client's request slots
    while the block runs. Raises BlobStreamBroken when nothing could be sent, AuthFailed on a refused login."""
    url = f"{client.base_url}{path}"
    async with client.slots:
        answer, final_url, sent, own = await _open_following(client, url, headers or {})
        if answer.status == 401 and own:
            challenge = answer.headers.get("WWW-Authenticate", "")
            answer.close()
            await client._answer_challenge(challenge, refused=sent, url=final_url)
            answer, final_url, sent, own = await _open_following(client, url, headers or {})
            if answer.status == 401 and own:
                answer.close()
                raise AuthFailed(client._auth_failed_message())
        try:
            yield BlobStream(answer.status, answer.headers, final_url, answer)
        finally:
            if answer.content.at_eof():
                answer.release()  # read to its end: the connection goes back to the pool
            else:
                answer.close()  # left unread (a wrong size, an error): the connection cannot be reused


async def _open_following(
    client: RegistryClient, url: str, headers: Mapping[str, str]
) -> tuple[aiohttp.ClientResponse, str, str | None, bool]:
    """(the open answer, its URL, the Authorization sent with it, whether that URL is the registry's),
    after following redirects."""
    seconds = client.settings.registry_timeout
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    own = True  # the first URL is the registry's; a redirect's is looked at
    for _ in range(MAX_REDIRECTS + 1):
        all_headers = dict(headers)
        auth = client._auth_header(url) if own else None
        if auth:
            all_headers["Authorization"] = auth
        started = time.perf_counter()
        try:
            answer = await client._http().get(
                url, headers=all_headers, allow_redirects=False, timeout=timeout, read_bufsize=STREAM_BUFFER
            )
        except TimeoutError:
            client._observe("GET", 0, started)
            raise BlobStreamBroken(f"GET {_path_of(url)} timed out after {seconds:g}s") from None
        except aiohttp.ClientError as exc:
            client._observe("GET", 0, started)
            raise BlobStreamBroken(f"GET {_path_of(url)} could not connect ({type(exc).__name__})") from None
        client._observe("GET", answer.status, started)
        location = answer.headers.get("Location")
        if answer.status not in REDIRECT_STATUS or not location:
            return answer, url, auth, own
        answer.close()
        url = urljoin(url, location)
        own = client.same_origin(url)
    raise CouldNotCheck(f"The registry {client.settings.registry_host} redirected {_path_of(url)} too many times.")


def _path_of(url: str) -> str:
    """The path of a URL, for messages: never the query (a presigned URL's signature) nor credentials."""
    return urlsplit(url).path
