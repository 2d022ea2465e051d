"""The integrity walk: every manifest hashed, every index child fetched, every config read and hashed, every
layer asked for (and with `deep`, read and hashed).

The probe in the cluster stops at index children; this walk goes down to the blobs, because a manifest's
HEAD stays 200 when its layers are gone. Within one checker (one `check` or one scan) each manifest and
blob is asked for once per repository, however many tags share it; blobs are in bot/registry/blobs.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

from bot.errors import CouldNotCheck
from bot.refs import ImageRef, validate_digest
from bot.registry.blobs import HASHES, BlobChecker, DeepProgress, ProgressHook, lives_elsewhere
from bot.registry.client import RegistryClient, RegistryFailing
from bot.registry.media import (
    ACCEPT,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from bot.registry.model import CheckResult, Kind, Problem

MAX_INDEX_DEPTH = 4


@dataclass
class Outcome:
    """What one object's subtree holds: its problems and the digests it took to know."""

    problems: list[Problem] = field(default_factory=list)
    objects: set[str] = field(default_factory=set)
    digest: str | None = None
    is_index: bool = False
    verified: dict[str, int] = field(default_factory=dict)  # blob digest -> bytes that hashed to it

    def absorb(self, other: Outcome, platform: str | None) -> None:
        self.objects |= other.objects
        self.verified |= other.verified
        for problem in other.problems:
            if platform and not problem.platform:
                problem = dataclasses.replace(problem, platform=platform)
            self.problems.append(problem)


def platform_of(descriptor: dict[str, Any]) -> str | None:
    annotations = descriptor.get("annotations") or {}
    if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return "attestation"
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(p for p in parts if p) or None


def digest_of(algorithm: str, body: bytes) -> str:
    return f"{algorithm}:{HASHES[algorithm](body).hexdigest()}"


class IntegrityChecker:
    """Checks images on one registry. Share one checker across a scan so shared objects are asked once.

    `deep` reads and hashes every layer (once per run, however many repositories share it).
    `on_progress(DeepProgress)` is told how far the hashing has got, at most every `progress_every` seconds
    and when a check ends; it may return an awaitable (run as a task), and its failures never fail a check.
    """

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
        self.blobs = BlobChecker(client, deep=deep, on_progress=on_progress, progress_every=progress_every)
        # Shared walks by repository, then (kind, digest): a scan forgets a repository when its tags are done.
        self._cache: dict[str, dict[tuple[str, str], asyncio.Task[Outcome]]] = {}

    def progress(self) -> DeepProgress:
        """How far this run's hashing has got (bytes, rate), whenever the caller wants to know."""
        return self.blobs.meter.snapshot()

    @property
    def layer_bytes(self) -> int:
        """Bytes of the distinct layers this run met: what hashing them all would read."""
        distinct = {digest: size for sizes in self.blobs.layer_sizes.values() for digest, size in sizes.items()}
        return sum(distinct.values())

    @property
    def bytes_hashed(self) -> int:
        """Bytes this run read and hashed, each shared blob once (a scan's total)."""
        return self.blobs.meter.hashed

    async def check(self, ref: ImageRef, display: str | None = None) -> CheckResult:
        """Walk one image. Raises nothing for a broken image; returns status `error` when it could not check."""
        started = time.perf_counter()
        result = CheckResult(
            reference=display or str(ref), registry=self.client.settings.registry_host, status="error", deep=self.deep
        )
        try:
            outcome = await self._manifest(ref.name, ref.reference, ref.digest, None, top=True, depth=0)
        except CouldNotCheck as exc:
            result.error = str(exc)
        else:
            result.digest = outcome.digest or ref.digest
            result.problems = _with_pull_impact(_dedupe(outcome.problems), outcome.is_index)
            result.objects_checked = len(outcome.objects)
            result.bytes_verified = sum(outcome.verified.values())
            result.is_index = outcome.is_index
            result.status = "broken" if result.problems else "intact"
        result.elapsed_ms = round((time.perf_counter() - started) * 1000)
        if self.deep:
            self.blobs.meter.tell_if_changed()
        return result

    # --- manifests ------------------------------------------------------------------------------------

    def forget(self, name: str) -> None:
        """Drop repository `name`'s shared walks (a scan is done with it); any still running are cancelled,
        since no check waits for them any more."""
        for task in self._cache.pop(name, {}).values():
            task.cancel()
        self.blobs.forget(name)

    def _cached(self, key: tuple[str, str, str], make: Any) -> asyncio.Task[Outcome]:
        name, kind, digest = key
        shared = self._cache.setdefault(name, {})
        task = shared.get((kind, digest))
        if task is None:
            task = asyncio.ensure_future(make())
            # A shared walk may outlive the check that started it: its failure is read here, never lost.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            shared[kind, digest] = task
        return task

    async def _child_manifest(self, name: str, descriptor: dict[str, Any], depth: int) -> Outcome:
        digest = str(descriptor["digest"])
        size = descriptor.get("size")
        key = (name, "manifest", digest)
        outcome = await self._cached(
            key,
            lambda: self._manifest(name, digest, digest, size, top=False, depth=depth, kind=_kind_of(descriptor)),
        )
        return outcome

    async def _manifest(
        self,
        name: str,
        reference: str,
        expected_digest: str | None,
        expected_size: int | None,
        *,
        top: bool,
        depth: int,
        kind: Kind = "manifest",
    ) -> Outcome:
        outcome = Outcome(digest=expected_digest)
        outcome.objects.add(expected_digest or f"{name}:{reference}")
        path = f"/v2/{name}/manifests/{reference}"
        try:
            response = await self.client.request("GET", path, headers={"Accept": ACCEPT})
        except RegistryFailing as exc:
            if top:
                raise
            outcome.problems.append(
                Problem(reference, kind, "unexpected_status", exc.http_status, None, "server error")
            )
            return outcome
        status = response.status_code
        shown = expected_digest or reference
        if status == 404:
            outcome.problems.append(Problem(shown, kind, "missing", 404, None, _error_code(response)))
            return outcome
        if status == 403:
            raise CouldNotCheck(
                f"The registry {self.client.settings.registry_host} denied access to {name} (HTTP 403); "
                "the user lacks pull permission on it."
            )
        if status == 429:
            raise CouldNotCheck(f"The registry {self.client.settings.registry_host} is rate-limiting us (HTTP 429).")
        if status != 200:
            outcome.problems.append(Problem(shown, kind, "unexpected_status", status, None, _error_code(response)))
            return outcome

        body = response.content
        header_digest = response.headers.get("Docker-Content-Digest", "").strip()
        algorithm = (expected_digest or header_digest or "sha256").split(":", 1)[0]
        if algorithm not in HASHES:
            algorithm = "sha256"
        actual = digest_of(algorithm, body)
        outcome.digest = expected_digest or header_digest or actual
        outcome.objects.discard(f"{name}:{reference}")
        outcome.objects.add(outcome.digest)
        if expected_digest and actual != expected_digest:
            outcome.problems.append(
                Problem(expected_digest, kind, "digest_mismatch", status, None, f"stored bytes hash to {actual}")
            )
        elif header_digest and header_digest.startswith(algorithm + ":") and actual != header_digest:
            outcome.problems.append(
                Problem(header_digest, kind, "digest_mismatch", status, None, f"stored bytes hash to {actual}")
            )
        if expected_size is not None and len(body) != expected_size:
            detail = f"{len(body)} bytes, descriptor says {expected_size}"
            outcome.problems.append(Problem(outcome.digest, kind, "size_mismatch", status, None, detail))

        document, media_type, invalid = _parse_manifest(body, response.headers.get("Content-Type", ""))
        if invalid:
            outcome.problems.append(Problem(outcome.digest, kind, "invalid_manifest", status, None, invalid))
            return outcome
        if media_type in INDEX_TYPES:
            outcome.is_index = True
            if top:
                # A top-level index is reported as an index; its problems are the index's own.
                outcome.problems = [dataclasses.replace(p, kind="index") for p in outcome.problems]
            await self._index_children(name, document, outcome, depth)
        else:
            await self._blobs(name, document, outcome)
        return outcome

    async def _index_children(self, name: str, document: dict[str, Any], outcome: Outcome, depth: int) -> None:
        children = document.get("manifests")
        if not isinstance(children, list):
            outcome.problems.append(
                Problem(outcome.digest or "", "index", "invalid_manifest", 200, None, "no manifests list")
            )
            return
        if depth >= MAX_INDEX_DEPTH:
            outcome.problems.append(
                Problem(outcome.digest or "", "index", "invalid_manifest", 200, None, "indexes nested too deep")
            )
            return
        checks = []
        platforms = []
        for descriptor in children:
            bad = _bad_descriptor(descriptor)
            if bad:
                outcome.problems.append(Problem(outcome.digest or "", "index", "invalid_manifest", 200, None, bad))
                continue
            checks.append(self._child_manifest(name, descriptor, depth + 1))
            platforms.append(platform_of(descriptor))
        for platform, child in zip(platforms, await asyncio.gather(*checks), strict=True):
            outcome.absorb(child, platform)

    # --- blobs --------------------------------------------------------------------------------------

    async def _blobs(self, name: str, document: dict[str, Any], outcome: Outcome) -> None:
        config = document.get("config")
        layers = document.get("layers")
        if not isinstance(config, dict) or not isinstance(layers, list):
            outcome.problems.append(
                Problem(outcome.digest or "", "manifest", "invalid_manifest", 200, None, "no config or layers")
            )
            return
        described: list[tuple[Kind, dict[str, Any]]] = [("config", config)]
        described += [("layer", layer) for layer in layers]
        checks = []
        for kind, descriptor in described:
            bad = _bad_descriptor(descriptor)
            if bad:
                outcome.problems.append(Problem(outcome.digest or "", "manifest", "invalid_manifest", 200, None, bad))
                continue
            if kind == "layer" and lives_elsewhere(descriptor):
                continue  # a foreign layer with `urls` lives elsewhere by design
            key = (name, "blob", str(descriptor["digest"]))
            checks.append(self._cached(key, _bind_blob(self, name, kind, descriptor)))
        for blob in await asyncio.gather(*checks):
            outcome.absorb(blob, None)

    async def _blob(self, name: str, kind: Kind, descriptor: dict[str, Any]) -> Outcome:
        digest = str(descriptor["digest"])
        finding = await self.blobs.check(name, kind, descriptor)
        # A layer's finding is shared by every repository that links it: each outcome gets its own copies.
        return Outcome(list(finding.problems), {digest}, digest, verified=dict(finding.verified))


def _bind_blob(checker: IntegrityChecker, name: str, kind: Kind, descriptor: dict[str, Any]) -> Any:
    return lambda: checker._blob(name, kind, descriptor)


def _kind_of(descriptor: dict[str, Any]) -> Kind:
    return "index" if descriptor.get("mediaType") in INDEX_TYPES else "manifest"


def _bad_descriptor(descriptor: Any) -> str:
    """Why a descriptor cannot be followed, or '' when it can."""
    if not isinstance(descriptor, dict):
        return "a descriptor is not an object"
    digest = descriptor.get("digest")
    if not isinstance(digest, str):
        return "a descriptor has no digest"
    try:
        validate_digest(digest)
    except Exception:
        return "a descriptor's digest is malformed"
    size = descriptor.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        return f"descriptor {digest[:19]} has an invalid size"
    return ""


def _parse_manifest(body: bytes, content_type: str) -> tuple[dict[str, Any], str, str]:
    """(document, media type, why it is invalid or '')."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}, "", "not valid JSON"
    if not isinstance(document, dict):
        return {}, "", "not a JSON object"
    media_type = document.get("mediaType") or content_type.split(";", 1)[0].strip()
    if media_type not in INDEX_TYPES | MANIFEST_TYPES:
        if document.get("schemaVersion") == 1:
            return document, str(media_type), "a Docker schema 1 manifest (unsupported, deprecated)"
        if "manifests" in document:
            media_type = OCI_INDEX
        elif "config" in document and "layers" in document:
            media_type = OCI_MANIFEST
        else:
            return document, str(media_type), f"unknown media type '{str(media_type)[:80]}'"
    if document.get("schemaVersion") != 2:
        return document, str(media_type), "schemaVersion is not 2"
    return document, str(media_type), ""


def _error_code(response: Any) -> str:
    """The registry's error code (MANIFEST_UNKNOWN, ...) when it sent one."""
    try:
        errors = response.json().get("errors") or []
        return str(errors[0].get("code", ""))[:40] if errors else ""
    except Exception:
        return ""


def _with_pull_impact(problems: list[Problem], is_index: bool) -> list[Problem]:
    """Problems that all lie under an index's attestation manifests leave every platform's pull working."""
    if not (is_index and problems and all(p.platform == "attestation" for p in problems)):
        return problems
    return [dataclasses.replace(p, pull_impact="none") for p in problems]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for problem in problems:
        key = (problem.digest, problem.kind, problem.reason, problem.platform)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique
