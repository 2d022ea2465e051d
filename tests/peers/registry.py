"""A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on a free loopback port.

`Registry` starts it (with delete enabled, optionally with htpasswd auth); `ImagePusher` pushes OCI- and
Docker-typed images over the HTTP API; the `break_*` methods damage the stored files the ways the
post-mortems describe (a child manifest's file gone, a layer gone, a config gone, stored bytes changed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


_ACCESS = re.compile(r'\[(\d+/\w+/\d+:\d+:\d+:\d+ [+-]\d+)\] "(\w+) (\S+) HTTP')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if not path:
        raise RuntimeError(f"{name} is not installed: apt-get install {package} (the tests need the real server).")
    return path


class Registry:
    """docker-registry on 127.0.0.1:<free port>. Use as a context manager."""

    def __init__(self, *, username: str | None = None, password: str | None = None, access_log: bool = False) -> None:
        self.username = username
        self.password = password
        self.access_log = access_log  # each request logged, with its second: see `requests_logged`
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._dir = Path(tempfile.mkdtemp(prefix="registry-"))
        self.root = self._dir / "storage"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        binary = find_binary("docker-registry", "docker-registry")
        auth = ""
        if self.username:
            import bcrypt

            hashed = bcrypt.hashpw((self.password or "").encode(), bcrypt.gensalt(rounds=4)).decode()
            (self._dir / "htpasswd").write_text(f"{self.username}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {self._dir / 'htpasswd'}\n"
        config = (
            "version: 0.1\n"
            f"log:\n  level: error\n  accesslog:\n    disabled: {'false' if self.access_log else 'true'}\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root}\n  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            # Foreign (Windows base) layers carry URLs; distribution refuses them unless allowed.
            "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"{auth}"
        )
        (self._dir / "config.yml").write_text(config)
        log = open(self._dir / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
        self._process = subprocess.Popen(
            [binary, "serve", str(self._dir / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self._dir / 'registry.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start within 20 s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def requests_logged(self) -> list[tuple[float, str, str]]:
        """(Unix second, method, path) of every request the registry logged (with `access_log`)."""
        from datetime import datetime

        logged = []
        for line in (self._dir / "registry.log").read_text(errors="replace").splitlines():
            match = _ACCESS.search(line)
            if match:
                at = datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()
                logged.append((at, match.group(2), match.group(3)))
        return logged

    def restart(self) -> None:
        """Stop and start on the same port and storage (clears the registry's in-memory caches)."""
        if self._process:
            self._process.terminate()
            self._process.wait(5)
        self.start()

    # --- the storage layout of distribution's filesystem driver ---------------------------------------

    def blob_data(self, digest: str) -> Path:
        algorithm, hex_part = digest.split(":", 1)
        return self.root / "docker/registry/v2/blobs" / algorithm / hex_part[:2] / hex_part / "data"

    def repo_dir(self, name: str) -> Path:
        return self.root / "docker/registry/v2/repositories" / name

    def break_blob_file(self, digest: str) -> None:
        """The stored file of a blob or manifest gone (disk cleanup, PVC loss)."""
        self.blob_data(digest).unlink()

    def break_manifest_link(self, name: str, digest: str) -> None:
        """The per-repository link of a manifest gone (the 2026-04-19 post-mortem)."""
        algorithm, hex_part = digest.split(":", 1)
        (self.repo_dir(name) / "_manifests/revisions" / algorithm / hex_part / "link").unlink()

    def break_layer_link(self, name: str, digest: str) -> None:
        algorithm, hex_part = digest.split(":", 1)
        (self.repo_dir(name) / "_layers" / algorithm / hex_part / "link").unlink()

    def corrupt_blob_file(self, digest: str, *, same_size: bool = False) -> None:
        """Stored bytes changed under the registry."""
        path = self.blob_data(digest)
        data = bytearray(path.read_bytes())
        if same_size and data:
            data[-1] ^= 0xFF
        else:
            data += b" "
        path.write_bytes(bytes(data))


@dataclass
class PushedImage:
    name: str
    tag: str
    digest: str  # the top-level manifest or index
    media_type: str
    children: dict[str, str] = field(default_factory=dict)  # platform -> child manifest digest
    configs: dict[str, str] = field(default_factory=dict)  # platform -> config digest
    layers: dict[str, list[str]] = field(default_factory=dict)  # platform -> layer digests

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.tag}"


class ImagePusher:
    """Pushes images over the distribution HTTP API, as a CI job's `docker buildx --push` would."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=url, auth=auth, timeout=30)

    def close(self) -> None:
        self.http.close()

    def push_blob(self, name: str, data: bytes) -> str:
        digest = sha256(data)
        if self.http.head(f"/v2/{name}/blobs/{digest}").status_code == 200:
            return digest
        start = self.http.post(f"/v2/{name}/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["Location"]
        separator = "&" if "?" in location else "?"
        put = self.http.put(
            f"{location}{separator}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        put.raise_for_status()
        return digest

    def push_manifest(self, name: str, reference: str, document: dict[str, Any], media_type: str) -> str:
        body = json.dumps(document, indent=2).encode()
        response = self.http.put(
            f"/v2/{name}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )
        if response.status_code != 201:
            raise RuntimeError(f"manifest push failed: {response.status_code} {response.text}")
        return sha256(body)

    def push_image(
        self,
        name: str,
        tag: str,
        *,
        platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
        docker: bool = False,
        layers: int = 2,
        base_layers: tuple[bytes, ...] = (),
        salt: str = "",
        foreign_layer: bool = False,
        attestation: bool = False,
    ) -> PushedImage:
        """A multi-arch index (or, with one platform and `platforms=("linux/amd64",)`, still an index;
        use `push_single` for a plain manifest)."""
        manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        index_type = DOCKER_LIST if docker else OCI_INDEX
        image = PushedImage(name=name, tag=tag, digest="", media_type=index_type)
        descriptors = []
        for platform in platforms:
            digest, body = self._image_manifest(
                name,
                platform,
                docker=docker,
                layers=layers,
                base_layers=base_layers,
                salt=salt + tag,
                image=image,
                foreign_layer=foreign_layer,
            )
            os_name, arch, *variant = platform.split("/")
            descriptor: dict[str, Any] = {
                "mediaType": manifest_type,
                "digest": digest,
                "size": len(body),
                "platform": {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})},
            }
            descriptors.append(descriptor)
            image.children[platform] = digest
        if attestation:
            digest, body = self._image_manifest(
                name,
                "unknown/unknown",
                docker=False,
                layers=1,
                base_layers=(),
                salt=salt + tag + "att",
                image=image,
                foreign_layer=False,
            )
            descriptors.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(body),
                    "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {
                        "vnd.docker.reference.type": "attestation-manifest",
                        "vnd.docker.reference.digest": descriptors[0]["digest"],
                    },
                }
            )
            image.children["attestation"] = digest
        index = {"schemaVersion": 2, "mediaType": index_type, "manifests": descriptors}
        image.digest = self.push_manifest(name, tag, index, index_type)
        return image

    def push_single(
        self,
        name: str,
        tag: str,
        *,
        docker: bool = False,
        layers: int = 2,
        base_layers: tuple[bytes, ...] = (),
        salt: str = "",
        foreign_layer: bool = False,
    ) -> PushedImage:
        """A single-platform image: one image manifest, no index."""
        manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        image = PushedImage(name=name, tag=tag, digest="", media_type=manifest_type)
        document = self._image_document(
            name,
            "linux/amd64",
            docker=docker,
            layers=layers,
            base_layers=base_layers,
            salt=salt + tag,
            image=image,
            foreign_layer=foreign_layer,
        )
        image.digest = self.push_manifest(name, tag, document, manifest_type)
        image.children["linux/amd64"] = image.digest
        return image

    def _image_manifest(self, name: str, platform: str, **kwargs: Any) -> tuple[str, bytes]:
        docker = kwargs["docker"]
        document = self._image_document(name, platform, **kwargs)
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        body = json.dumps(document, indent=2).encode()
        digest = self.push_manifest(name, sha256(body), document, media_type)
        return digest, body

    def _image_document(
        self,
        name: str,
        platform: str,
        *,
        docker: bool,
        layers: int,
        base_layers: tuple[bytes, ...],
        salt: str,
        image: PushedImage,
        foreign_layer: bool,
    ) -> dict[str, Any]:
        layer_type = DOCKER_LAYER if docker else OCI_LAYER
        descriptors = []
        layer_digests = []
        contents = [*base_layers, *(f"{name} {platform} {salt} layer {i}".encode() * 64 for i in range(layers))]
        for content in contents:
            digest = self.push_blob(name, content)
            descriptors.append({"mediaType": layer_type, "digest": digest, "size": len(content)})
            layer_digests.append(digest)
        if foreign_layer:
            # A Windows base layer: lives on another server, never pushed, never to be checked.
            descriptors.append(
                {
                    "mediaType": FOREIGN_LAYER,
                    "digest": sha256(b"foreign " + salt.encode()),
                    "size": 12345,
                    "urls": ["https://mcr.example.invalid/layer"],
                }
            )
        os_name, arch = platform.split("/")[:2]
        config = json.dumps(
            {
                "architecture": arch,
                "os": os_name,
                "rootfs": {"type": "layers", "diff_ids": layer_digests},
                "config": {"Labels": {"salt": salt}},
            }
        ).encode()
        config_digest = self.push_blob(name, config)
        image.configs[platform] = config_digest
        image.layers[platform] = layer_digests
        return {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": descriptors,
        }
