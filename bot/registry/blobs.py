"""Blobs: a layer asked for (HEAD) in each repository, a config always read and hashed, and with `deep` every
layer read and hashed while it streams, as a pull would.

- Reading never holds a blob: it is hashed a chunk at a time (sha256 or sha512, as its digest says), and never
  read past the size its descriptor gives, so memory stays flat whatever the layer size.
- Content is addressed by digest, so a layer is read once per run however many repositories point at it; its
  HEAD still goes to every repository, because the link that makes it pullable is per repository.
- A stream that breaks off is retried, resuming with a Range request where the server allows; one that keeps
  breaking is "could not check", never "broken".
- DEEP_CONCURRENCY bounds the layer downloads in flight, DEEP_RATE_LIMIT their bytes per second together.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.errors import CouldNotCheck
from bot.registry.client import RETRYABLE_STATUS, RegistryClient, RegistryFailing
from bot.registry.model import Kind, Problem, human_bytes, short_digest
from bot.registry.stream import BlobStreamBroken, open_blob

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 << 20  # what pulls accept (containers/image refuses bigger configs)
CHUNK = 1 << 20
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
NON_DISTRIBUTABLE = {
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-")


def lives_elsewhere(descriptor: dict[str, Any]) -> bool:
    """A foreign layer with somewhere else to get it from (`urls`); without `urls` it is the registry's to serve."""
    urls = descriptor.get("urls")
    return descriptor.get("mediaType") in NON_DISTRIBUTABLE and isinstance(urls, list) and bool(urls)


@dataclass
class BlobFinding:
    """What asking for (and perhaps reading) one blob found: its problems and the bytes that hashed right."""

    problems: list[Problem] = field(default_factory=list)
    verified: dict[str, int] = field(default_factory=dict)  # digest -> bytes that hashed to it


@dataclass(frozen=True)
class DeepProgress:
    """How far a run's hashing has got, for a progress display."""

    bytes_verified: int  # bytes read and hashed so far in this run
    bytes_planned: int  # bytes of every layer the walk has found so far (it grows as the walk goes on)
    blobs_verified: int
    elapsed: float  # seconds since the first blob was read
    rate: float  # bytes per second, over the run so far


ProgressHook = Callable[[DeepProgress], object]


class RateLimit:
    """One pace for every download of a run: together they read at most `rate` bytes/s.

    Bytes are booked on a schedule; a reader ahead of it sleeps. Time spent receiving counts towards the
    schedule, but no more than CATCH_UP seconds of it: a pause (between layers) earns no burst later.
    """

    CATCH_UP = 0.1

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next: float | None = None

    async def spend(self, count: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        booked = now if self._next is None else max(self._next, now - self.CATCH_UP)
        self._next = booked + count / self.rate
        if self._next > now:
            await asyncio.sleep(self._next - now)


class Meter:
    """Counts the bytes a run hashed; tells the hook at most every `every` seconds, never failing the check."""

    def __init__(self, hook: ProgressHook | None, every: float) -> None:
        self.hook = hook
        self.every = every
        self.hashed = 0
        self.planned = 0
        self.blobs = 0
        self._started: float | None = None
        self._told = 0.0
        self._told_bytes = 0
        self._pending: set[asyncio.Future[Any]] = set()

    def add(self, count: int) -> None:
        if self._started is None:
            self._started = time.monotonic()
        self.hashed += count
        if self.hook is not None and time.monotonic() - self._told >= self.every:
            self.tell()

    def snapshot(self) -> DeepProgress:
        elapsed = time.monotonic() - self._started if self._started is not None else 0.0
        rate = self.hashed / elapsed if elapsed > 0 else 0.0
        return DeepProgress(self.hashed, self.planned, self.blobs, elapsed, rate)

    def tell_if_changed(self) -> None:
        if self.hashed != self._told_bytes:
            self.tell()

    def tell(self) -> None:
        if self.hook is None:
            return
        self._told = time.monotonic()
        self._told_bytes = self.hashed
        try:
            maybe = self.hook(self.snapshot())
            if inspect.isawaitable(maybe):
                task = asyncio.ensure_future(maybe)
                self._pending.add(task)
                task.add_done_callback(self._done)
        except Exception:
            log.warning("the progress hook failed; the check goes on", exc_info=True)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("the progress hook failed; the check goes on", exc_info=task.exception())


class BlobChecker:
    """Checks the blobs of one run (a check or a scan): shared, so each layer's bytes are read once."""

    def __init__(
        self,
        client: RegistryClient,
        *,
        deep: bool = False,
        on_progress: ProgressHook | None = None,
        progress_every: float = 1.0,
    ) -> None:
        self.client = client
        self.deep = deep
        self.meter = Meter(on_progress, progress_every)
        self._gate = asyncio.Semaphore(client.settings.deep_concurrency)
        self._pace = RateLimit(client.settings.deep_rate_limit)
        self._content: dict[str, asyncio.Task[BlobFinding]] = {}
        # Every layer the walk met, by repository then digest: what a deep check would read. A scan forgets a
        # repository's when its last tag is done (`forget`), so they never add up over a registry.
        self.layer_sizes: dict[str, dict[str, int]] = {}

    @property
    def host(self) -> str:
        return self.client.settings.registry_host

    def forget(self, name: str) -> None:
        self.layer_sizes.pop(name, None)

    async def check(self, name: str, kind: Kind, descriptor: dict[str, Any]) -> BlobFinding:
        """One config or layer of repository `name`; raises CouldNotCheck when the registry cannot be asked."""
        if kind == "config":
            return await self._read(name, kind, descriptor, limit=MAX_CONFIG_BYTES, paced=False)
        finding = await self._head(name, kind, descriptor)
        if isinstance(descriptor.get("size"), int):
            self.layer_sizes.setdefault(name, {})[str(descriptor["digest"])] = descriptor["size"]
        if not self.deep or finding.problems:
            return finding
        digest = str(descriptor["digest"])
        task = self._content.get(digest)
        if task is None:
            if isinstance(descriptor.get("size"), int):
                self.meter.planned += descriptor["size"]
            task = asyncio.ensure_future(self._read_layer(name, kind, descriptor))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._content[digest] = task
        return await task

    async def _read_layer(self, name: str, kind: Kind, descriptor: dict[str, Any]) -> BlobFinding:
        async with self._gate:
            return await self._read(name, kind, descriptor, limit=None, paced=True)

    async def _head(self, name: str, kind: Kind, descriptor: dict[str, Any]) -> BlobFinding:
        digest = str(descriptor["digest"])
        finding = BlobFinding()
        try:
            response = await self.client.request("HEAD", f"/v2/{name}/blobs/{digest}", follow_redirects=True)
        except RegistryFailing as exc:
            finding.problems.append(Problem(digest, kind, "unexpected_status", exc.http_status, None, "server error"))
            return finding
        status = response.status_code
        if status != 200:
            finding.problems += self._status_problem(name, kind, digest, status)
            return finding
        length = response.headers.get("Content-Length")
        header_digest = response.headers.get("Docker-Content-Digest")
        size = descriptor.get("size")
        # A registry may name a sha512 blob by its canonical sha256 (distribution does): compare like with like.
        if header_digest and header_digest.split(":")[0] == digest.split(":")[0] and header_digest != digest:
            finding.problems.append(
                Problem(digest, kind, "digest_mismatch", status, None, f"registry says {header_digest}")
            )
        if length is not None and isinstance(size, int) and length.isdigit() and int(length) != size:
            finding.problems.append(
                Problem(digest, kind, "size_mismatch", status, None, f"{length} bytes, descriptor says {size}")
            )
        return finding

    def _status_problem(self, name: str, kind: Kind, digest: str, status: int) -> list[Problem]:
        """The problem of a blob answered with `status` (not 200, not 5xx); raises for 403 and 429."""
        if status == 404:
            return [Problem(digest, kind, "missing", 404)]
        if status == 403:
            raise CouldNotCheck(f"The registry {self.host} denied access to {name}'s blobs (HTTP 403).")
        if status == 429:
            raise CouldNotCheck(f"The registry {self.host} is rate-limiting us (HTTP 429).")
        return [Problem(digest, kind, "unexpected_status", status)]

    # --- reading and hashing ----------------------------------------------------------------------

    async def _read(
        self, name: str, kind: Kind, descriptor: dict[str, Any], *, limit: int | None, paced: bool
    ) -> BlobFinding:
        """GET the blob and hash it while it streams; compare size and digest with the descriptor."""
        digest = str(descriptor["digest"])
        algorithm = digest.partition(":")[0]
        size = descriptor.get("size")
        size = size if isinstance(size, int) else None
        if limit is not None and size is not None and size > limit:
            detail = f"{human_bytes(size)}; pulls refuse a {kind} over {human_bytes(limit)}"
            return BlobFinding([Problem(digest, kind, "too_large", None, None, detail)])
        cap = size if size is not None else limit  # never read past what the descriptor promises
        reader = _Reader(algorithm, self.meter, self._pace if paced else None, cap)
        attempts = self.client.settings.registry_retries
        delay = 0.2
        failure = ""
        for attempt in range(1, attempts + 1):
            try:
                found = await self._attempt(name, kind, digest, size, reader, last=attempt == attempts)
            except BlobStreamBroken as exc:
                found = str(exc)
            if isinstance(found, BlobFinding):
                return found
            failure = found
            if attempt < attempts:
                log.info("blob %s of %s: %s, retrying in %.1fs", short_digest(digest), name, failure, delay)
                await asyncio.sleep(delay)
                delay *= 2.5
        read = f" after {human_bytes(reader.got)}" if reader.got else ""
        raise CouldNotCheck(
            f"The registry {self.host} kept failing to send {kind} {short_digest(digest)} of {name}{read}: "
            f"{failure} ({attempts} attempts); could not check it, try again later."
        )

    async def _attempt(
        self, name: str, kind: Kind, digest: str, size: int | None, reader: _Reader, *, last: bool
    ) -> BlobFinding | str:
        """One GET, resuming where the last one broke off: a finding, or why it must be tried again."""
        headers = {"Range": f"bytes={reader.got}-"} if reader.got else None
        async with open_blob(self.client, f"/v2/{name}/blobs/{digest}", headers=headers) as stream:
            status = stream.status_code
            if status in RETRYABLE_STATUS:
                if last:
                    return BlobFinding([Problem(digest, kind, "unexpected_status", status, None, "server error")])
                return f"HTTP {status}"
            if status not in (200, 206):
                return BlobFinding(self._status_problem(name, kind, digest, status))
            if not reader.resumes(status, stream.headers.get("Content-Range", "")):
                reader.restart()
                if status == 206:  # a part from elsewhere in the blob: hashing it would prove nothing
                    return "a partial answer from another offset"
            async for chunk in stream.chunks(CHUNK):
                if not await reader.take(chunk):
                    break
            return self._judge(digest, kind, size, reader, status)

    def _judge(self, digest: str, kind: Kind, size: int | None, reader: _Reader, status: int) -> BlobFinding:
        if reader.over:
            detail = f"more than the {reader.cap} bytes the descriptor says"
            return BlobFinding([Problem(digest, kind, "size_mismatch", status, None, detail)])
        if size is not None and reader.got != size:
            detail = f"{reader.got} bytes, descriptor says {size}"
            return BlobFinding([Problem(digest, kind, "size_mismatch", status, None, detail)])
        actual = f"{digest.partition(':')[0]}:{reader.hasher.hexdigest()}"
        if actual != digest:
            detail = f"stored bytes hash to {short_digest(actual)}"
            return BlobFinding([Problem(digest, kind, "digest_mismatch", status, None, detail)])
        self.meter.blobs += 1
        return BlobFinding(verified={digest: reader.got})


class _Reader:
    """The hashing state of one blob's download, kept across retries so a resumed stream goes on from it."""

    def __init__(self, algorithm: str, meter: Meter, pace: RateLimit | None, cap: int | None) -> None:
        self.algorithm = algorithm
        self.hasher = HASHES[algorithm]()
        self.meter = meter
        self.pace = pace
        self.cap = cap
        self.got = 0
        self.over = False

    def resumes(self, status: int, content_range: str) -> bool:
        """Whether this answer goes on where the last one stopped (206 from our offset), keeping the hash."""
        if not self.got:
            return True
        match = _CONTENT_RANGE.match(content_range.strip())
        return status == 206 and match is not None and int(match.group(1)) == self.got

    def restart(self) -> None:
        self.meter.hashed -= self.got
        self.hasher, self.got = HASHES[self.algorithm](), 0

    async def take(self, chunk: bytes) -> bool:
        """Hash one chunk; False (stop reading) once the blob is longer than its descriptor says."""
        if self.cap is not None and self.got + len(chunk) > self.cap:
            self.over = True
            return False
        self.hasher.update(chunk)
        self.got += len(chunk)
        if self.pace is not None:
            await self.pace.spend(len(chunk))
        self.meter.add(len(chunk))  # after the pace: the rate a display shows is the rate kept
        return True
