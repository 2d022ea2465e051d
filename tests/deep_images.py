"""Images for the content-verification tests, pushed over the real registry's HTTP API: blobs of any size
(streamed, never held), sha512 digests, non-distributable layers, and stored bytes changed in place."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.peers.registry import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Registry

NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str = OCI_LAYER
    urls: list[str] = field(default_factory=list)

    def descriptor(self) -> dict[str, Any]:
        found: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            found["urls"] = self.urls
        return found


class Pusher:
    """Pushes blobs (streamed in chunks, sha256 or sha512) and OCI manifests to a real registry."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=url, auth=auth, timeout=120)

    def close(self) -> None:
        self.http.close()

    def blob(self, name: str, data: bytes, algorithm: str = "sha256", media_type: str = OCI_LAYER) -> Blob:
        return self.stream(name, iter([data]), algorithm, media_type)

    def random_blob(self, name: str, size: int, algorithm: str = "sha256") -> Blob:
        """`size` random bytes, made and sent a MiB at a time."""

        def pieces() -> Iterator[bytes]:
            left = size
            while left:
                piece = os.urandom(min(left, 1 << 20))
                left -= len(piece)
                yield piece

        return self.stream(name, pieces(), algorithm)

    def stream(self, name: str, pieces: Iterator[bytes], algorithm: str, media_type: str = OCI_LAYER) -> Blob:
        hasher = hashlib.new(algorithm)
        size = 0
        start = self.http.post(f"/v2/{name}/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["Location"]

        def counted() -> Iterator[bytes]:
            nonlocal size
            for piece in pieces:
                hasher.update(piece)
                size += len(piece)
                yield piece

        patch = self.http.patch(location, content=counted(), headers={"Content-Type": "application/octet-stream"})
        patch.raise_for_status()
        location = patch.headers["Location"]
        digest = f"{algorithm}:{hasher.hexdigest()}"
        separator = "&" if "?" in location else "?"
        put = self.http.put(f"{location}{separator}digest={digest}")
        put.raise_for_status()
        return Blob(digest, size, media_type)

    def image(
        self, name: str, tag: str, layers: list[Blob], *, config: bytes | None = None, algorithm: str = "sha256"
    ) -> dict[str, Any]:
        """An OCI image manifest over `layers`; returns {"digest", "config": Blob, "layers": [Blob]}."""
        config = (
            config
            or json.dumps(
                {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "tag": tag}
            ).encode()
        )
        config_blob = self.blob(name, config, algorithm, OCI_CONFIG)
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
        body = json.dumps(document).encode()
        put = self.http.put(f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
        if put.status_code != 201:
            raise RuntimeError(f"manifest push failed: {put.status_code} {put.text}")
        return {"digest": digest_of(body), "config": config_blob, "layers": layers}


def change_bytes_in_place(registry: Registry, digest: str, old: bytes, new: bytes) -> None:
    """Stored bytes changed under the registry, same length (disk rot, a half-finished migration)."""
    assert len(old) == len(new)
    path = registry.blob_data(digest)
    data = path.read_bytes()
    assert old in data, f"{old!r} is not in {digest}"
    path.write_bytes(data.replace(old, new, 1))


def flip_middle_byte(registry: Registry, digest: str) -> None:
    path = registry.blob_data(digest)
    with open(path, "r+b") as handle:
        middle = path.stat().st_size // 2
        handle.seek(middle)
        byte = handle.read(1)
        handle.seek(middle)
        handle.write(bytes([byte[0] ^ 0xFF]))


# A fresh, small interpreter runs the command and reports its child's peak RSS. Measured from the caller
# directly, ru_maxrss would start at the caller's own size: Linux folds the forked image into the child's
# high-water mark at exec, so a big test process would make the bot look big.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stderr=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_with_peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """(exit code, stdout, peak RSS in MiB) of `command`, its RSS its own."""
    process = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], env=env, capture_output=True, text=True, check=False
    )
    return process.returncode, process.stdout, int(process.stderr.split()[-1]) / 1024
