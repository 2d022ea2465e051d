"""What a check finds: problems and results, and their JSON shape (the `--json` contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["index", "manifest", "config", "layer"]
Reason = Literal["missing", "digest_mismatch", "size_mismatch", "too_large", "unexpected_status", "invalid_manifest"]
Status = Literal["intact", "broken", "error"]
# What a problem does to `docker pull`: "fails", or "none" when every problem of an index lies under its
# attestation manifests, which no platform's pull fetches.
PullImpact = Literal["fails", "none"]
ATTESTATION_ONLY = "pulls still work; only the attestation is gone"


@dataclass(frozen=True)
class Problem:
    digest: str
    kind: Kind
    reason: Reason
    http_status: int | None = None
    platform: str | None = None
    detail: str = ""
    pull_impact: PullImpact = "fails"

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "kind": self.kind,
            "platform": self.platform,
            "http_status": self.http_status,
            "reason": self.reason,
            "detail": self.detail,
            "pull_impact": self.pull_impact,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Problem:
        return cls(
            digest=data["digest"],
            kind=data["kind"],
            reason=data["reason"],
            http_status=data.get("http_status"),
            platform=data.get("platform"),
            detail=data.get("detail", ""),
            pull_impact=data.get("pull_impact", "fails"),
        )

    def summary(self) -> str:
        """One line for a person: `manifest  linux/amd64  sha256:ab12cd34ef56  404  missing (MANIFEST_UNKNOWN)`."""
        status = str(self.http_status) if self.http_status is not None else "-"
        line = f"{self.kind:<8}  {self.platform or '-':<12}  {short_digest(self.digest)}  {status:>3}  {self.reason}"
        return f"{line} ({self.detail})" if self.detail else line


@dataclass
class CheckResult:
    reference: str
    registry: str
    status: Status
    digest: str | None = None
    problems: list[Problem] = field(default_factory=list)
    objects_checked: int = 0
    elapsed_ms: int = 0
    error: str | None = None
    is_index: bool = False
    deep: bool = False  # every layer's bytes were hashed, not only asked for
    bytes_verified: int = 0  # bytes of config and layer blobs that hashed to their digests
    note: str | None = None  # said after the verdict, e.g. that a bare name was checked as :latest

    @property
    def exit_code(self) -> int:
        return {"intact": 0, "broken": 1, "error": 2}[self.status]

    @property
    def pulls_still_work(self) -> bool:
        """Broken, but only under attestation manifests: every platform still pulls."""
        return bool(self.problems) and all(p.pull_impact == "none" for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reference": self.reference,
            "registry": self.registry,
            "digest": self.digest,
            "status": self.status,
            "problems": [p.to_json() for p in self.problems],
            "objects_checked": self.objects_checked,
            "bytes_verified": self.bytes_verified,
            "deep": self.deep,
            "elapsed_ms": self.elapsed_ms,
        }
        if self.error is not None:
            data["error"] = self.error
        if self.note is not None:
            data["note"] = self.note
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            reference=data["reference"],
            registry=data["registry"],
            status=data["status"],
            digest=data.get("digest"),
            problems=[Problem.from_json(p) for p in data.get("problems", [])],
            objects_checked=data.get("objects_checked", 0),
            elapsed_ms=data.get("elapsed_ms", 0),
            error=data.get("error"),
            deep=data.get("deep", False),
            bytes_verified=data.get("bytes_verified", 0),
            note=data.get("note"),
        )

    def verdict(self) -> str:
        """The one-line verdict a person reads first."""
        where = self.reference + (f" ({self.note})" if self.note else "")
        if self.registry:  # no "on" before an empty name when no registry is configured
            where += f" on {self.registry}"
        if self.status == "error":
            return f"COULD NOT CHECK {where}: {self.error}"
        digest = f" ({short_digest(self.digest)})" if self.digest else ""
        hashed = f"; {human_bytes(self.bytes_verified)} of layers and configs hashed" if self.deep else ""
        if self.status == "intact":
            return f"INTACT {where}{digest}: all {self.objects_checked} objects present and matching{hashed}."
        bad = len({p.digest for p in self.problems})
        impact = f"; {ATTESTATION_ONLY}" if self.pulls_still_work else ""
        return f"BROKEN {where}{digest}: {bad} of {self.objects_checked} objects have problems{impact}{hashed}."


def short_digest(digest: str | None) -> str:
    if not digest:
        return "-"
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if hex_part else digest


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'; for people, never for JSON."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
