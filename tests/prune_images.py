"""Images for the prune tests, pushed over the distribution API as CI would: platform manifests whose configs
carry `created`, indexes that share children or nest, and referrers (a signature by the `sha256-<hex>.sig`
tag schema, an untagged one by its `subject`). `stamp` sets the stored links' times to those `created`, which
is when GHCR's and Forgejo's stand-ins say each version was pushed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.peers.registry import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, ImagePusher, Registry, sha256


def day(n: int) -> datetime:
    return datetime(2026, 1, n, tzinfo=UTC)


@dataclass
class Builder:
    pusher: ImagePusher
    registry: Registry
    created: dict[str, datetime] = field(default_factory=dict)  # digest -> when it was built
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest, as pushed

    def manifest(
        self, name: str, label: str, when: datetime, subject: dict[str, Any] | None = None, tag: str | None = None
    ) -> dict[str, Any]:
        """A linux/amd64 image manifest (pushed by digest, or by `tag`); its descriptor."""
        layer = self.pusher.push_blob(name, f"{name} {label} layer".encode() * 32)
        config = json.dumps(
            {
                "created": when.strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer]},
                "config": {"Labels": {"label": label}},
            }
        ).encode()
        config_digest = self.pusher.push_blob(name, config)
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": len(f"{name} {label} layer") * 32}],
        }
        if subject is not None:
            document["subject"] = {k: subject[k] for k in ("mediaType", "digest", "size")}
        body = json.dumps(document, indent=2).encode()
        digest = self.pusher.push_manifest(name, tag or sha256(body), document, OCI_MANIFEST)
        self.created[digest] = when
        if tag:
            self.tags[tag] = digest
        return {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(body),
            "platform": {"os": "linux", "architecture": label},
        }

    def index(self, name: str, tag: str | None, children: list[dict[str, Any]], when: datetime) -> dict[str, Any]:
        """An OCI index of `children` (manifests or indexes), pushed by `tag` (or by digest); its descriptor."""
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        body = json.dumps(document, indent=2).encode()
        digest = self.pusher.push_manifest(name, tag or sha256(body), document, OCI_INDEX)
        self.created[digest] = when
        if tag:
            self.tags[tag] = digest
        return {"mediaType": OCI_INDEX, "digest": digest, "size": len(body)}

    def tag(self, name: str, tag: str, descriptor: dict[str, Any]) -> None:
        """Point `tag` at an existing manifest (as `crane tag` does)."""
        body = self.registry_get(name, descriptor["digest"])
        response = self.pusher.http.put(
            f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": descriptor["mediaType"]}
        )
        assert response.status_code == 201, response.text
        self.tags[tag] = descriptor["digest"]

    def registry_get(self, name: str, digest: str) -> bytes:
        response = self.pusher.http.get(
            f"/v2/{name}/manifests/{digest}", headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
        )
        response.raise_for_status()
        return response.content

    def stamp(self, name: str) -> None:
        """Set every stored link's time to when its manifest was built (what the stand-ins report as created)."""
        manifests = self.registry.repo_dir(name) / "_manifests"
        for link in manifests.glob("revisions/*/*/link"):
            digest = f"{link.parent.parent.name}:{link.parent.name}"
            if digest in self.created:
                stamp = self.created[digest].timestamp()
                os.utime(link, (stamp, stamp))
        for link in manifests.glob("tags/*/current/link"):
            digest = link.read_text().strip()
            if digest in self.created:
                stamp = self.created[digest].timestamp()
                os.utime(link, (stamp, stamp))


@dataclass
class Story:
    """One repository with every case a retention must survive (see `build`)."""

    name: str
    keep: dict[str, dict[str, Any]]  # what must stay
    gone: dict[str, dict[str, Any]]  # what the plan deletes
    untagged_referrer: dict[str, Any]


def build(pusher: ImagePusher, registry: Registry, name: str) -> Story:
    """keep=2 and the default --keep-tags keep: `latest` (a nested index: an index of an index), `v3` (the two
    newest tagged), `buildcache` (matches .*cache.*), every child of theirs (`shared` also in v1 and v2, which go),
    v3's signature (tag sha256-<hex>.sig) and its untagged SBOM (by `subject`). v1 and v2 go, with the children
    only they list and v1's signature."""
    b = Builder(pusher, registry)
    shared = b.manifest(name, "arm64", day(1))
    a1, a2, a3 = (b.manifest(name, f"amd64-{n}", day(n)) for n in (1, 2, 3))
    v1 = b.index(name, "v1", [a1, shared], day(1))
    v2 = b.index(name, "v2", [a2, shared], day(2))
    v3 = b.index(name, "v3", [a3, shared], day(3))
    x1, x2 = b.manifest(name, "inner-amd64", day(4)), b.manifest(name, "inner-arm64", day(4))
    inner = b.index(name, None, [x1, x2], day(4))
    latest = b.index(name, "latest", [inner], day(4))
    c0 = b.manifest(name, "cache", datetime(2025, 12, 1, tzinfo=UTC))
    cache = b.index(name, "buildcache", [c0], datetime(2025, 12, 1, tzinfo=UTC))
    sig3 = b.manifest(name, "sig-v3", day(3), tag=f"sha256-{v3['digest'].split(':')[1]}.sig")
    sig1 = b.manifest(name, "sig-v1", day(1), tag=f"sha256-{v1['digest'].split(':')[1]}.sig")
    sbom3 = b.manifest(name, "sbom-v3", day(3), subject=v3)
    b.stamp(name)
    keep = {
        "latest": latest, "inner": inner, "x1": x1, "x2": x2, "v3": v3, "a3": a3, "shared": shared,
        "buildcache": cache, "c0": c0, "sig3": sig3,
    }  # fmt: skip
    gone = {"v1": v1, "v2": v2, "a1": a1, "a2": a2, "sig1": sig1}
    return Story(name, keep, gone, sbom3)
