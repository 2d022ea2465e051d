"""A front for the real registry whose blob answers go wrong the ways real deployments do, and blob storage.

`RegistryFront` passes every request through to a real docker-registry (streaming bodies both ways, the
client's Authorization and Range included) and records what it was asked. It can:
  - redirect blob GETs and HEADs (302) to a `BlobStore` on another origin, as a registry on S3 or GCS does
    (only for blobs the repository links, as distribution checks before it redirects);
  - drop the connection in the middle of a blob: the headers promise the whole length, part of the body
    comes, then the socket closes;
  - hold each blob GET a while, and count how many are in flight at once.
`BlobStore` serves blobs straight from the registry's storage directory, like object storage behind a
presigned URL, and records every Authorization header it is sent (it must never see the registry's).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.peers.forgejo import QuietHTTPServer
from tests.peers.registry import Registry

_BLOB = re.compile(r"^/v2/(.+)/blobs/((?:sha256|sha512):[0-9a-f]+)$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class Seen:
    method: str
    path: str
    authorization: str
    range: str


class _Server:
    """A threaded loopback HTTP server; subclasses give `handle(handler)`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = QuietHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, method: str = "", path_prefix: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (not method or s.method == method) and s.path.startswith(path_prefix)]

    def handle(self, handler: Any) -> None:
        raise NotImplementedError

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                path = urlsplit(self.path).path
                with server._lock:
                    server.seen.append(
                        Seen(self.command, path, self.headers.get("Authorization", ""), self.headers.get("Range", ""))
                    )
                server.handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        return Handler


class BlobStore(_Server):
    """Object storage: GET/HEAD /<digest> answered from the registry's blob files."""

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    def handle(self, handler: Any) -> None:
        digest = urlsplit(handler.path).path.lstrip("/")
        path = self.registry.blob_data(digest) if re.fullmatch(r"sha(256|512):[0-9a-f]+", digest) else None
        if path is None or not path.exists():
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        size = path.stat().st_size
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        if handler.command == "GET":
            with open(path, "rb") as data:
                while chunk := data.read(1 << 16):
                    handler.wfile.write(chunk)


class RegistryFront(_Server):
    """In front of a real registry: passes through, redirects blobs, or drops them mid-body."""

    def __init__(self, registry: Registry, store: BlobStore | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.store = store
        self._drops: dict[str, list[int]] = {}  # digest -> [bytes to send before dropping, times left]
        self._held: set[str] = set()
        self._hold = 0.0
        self.in_flight = 0  # GETs of held blobs being answered now
        self.most_in_flight = 0

    def drop_blob(self, digest: str, *, after: int, times: int) -> None:
        """The next `times` GETs of `digest` break off after `after` bytes of the body."""
        with self._lock:
            self._drops[digest] = [after, times]

    def hold(self, digests: set[str], seconds: float) -> None:
        """GETs of these blobs wait `seconds` before their body (so they overlap) and are counted in flight."""
        with self._lock:
            self._held, self._hold = set(digests), seconds

    def handle(self, handler: Any) -> None:
        path = urlsplit(handler.path).path
        blob = _BLOB.match(path)
        if blob and self.store is not None and handler.command in ("GET", "HEAD"):
            with self._upstream(handler, "HEAD") as upstream:
                status = upstream.status
            if status == 200:  # a registry redirects only to blobs this repository links
                handler.send_response(302)
                handler.send_header("Location", f"{self.store.url}/{blob.group(2)}?X-Amz-Signature=presigned")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        counted = blob is not None and handler.command == "GET" and blob.group(2) in self._held
        if counted:
            with self._lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if counted:
            # Counted while held, and no longer once the body starts: the client frees its slot only after
            # the whole body has arrived, so it cannot have started the next GET before this one left the
            # count (counting until this thread ends would, on a busy machine, see the next one overlap).
            try:
                time.sleep(self._hold)
            finally:
                with self._lock:
                    self.in_flight -= 1
        with self._upstream(handler, handler.command) as upstream:
            self._relay(handler, upstream, blob)

    def _relay(self, handler: Any, upstream: http.client.HTTPResponse, blob: re.Match[str] | None) -> None:
        drop = None
        if blob and handler.command == "GET" and upstream.status in (200, 206):
            with self._lock:
                rule = self._drops.get(blob.group(2))
                if rule and rule[1] > 0:
                    rule[1] -= 1
                    drop = rule[0]
        whole = None
        if upstream.getheader("Content-Length") is None and handler.command != "HEAD":
            whole = upstream.read()  # chunked upstream: answer with a length instead
        handler.send_response(upstream.status)
        for key, value in upstream.getheaders():
            if key.lower() not in _HOP:
                handler.send_header(key, value.replace(self.registry.url, self.url))
        if whole is not None:
            handler.send_header("Content-Length", str(len(whole)))
        handler.end_headers()
        if whole is not None:
            handler.wfile.write(whole)
            return
        sent = 0
        while handler.command != "HEAD" and (chunk := upstream.read(1 << 16)):
            if drop is not None and sent + len(chunk) >= drop:
                handler.wfile.write(chunk[: drop - sent])
                handler.wfile.flush()
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            handler.wfile.write(chunk)
            sent += len(chunk)

    @contextmanager
    def _upstream(self, handler: Any, method: str) -> Iterator[http.client.HTTPResponse]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length and method == handler.command else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP | {"host", "content-length"}}
        connection = http.client.HTTPConnection("127.0.0.1", self.registry.port, timeout=30)
        try:
            connection.request(method, handler.path, body=body, headers=headers)
            yield connection.getresponse()
        finally:
            connection.close()
