"""What a prune works with: the policy, the versions a registry holds, the manifests that tie them together,
and the plan (what is deleted, what is kept, and why), with its JSON shape (the `--json` contract)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.errors import UserFacingError

DEFAULT_KEEP = 10
DEFAULT_KEEP_TAGS = r"^(latest|.*cache.*)$"  # the cluster's forgejo-cleanup CronJob keeps these
# A tag that names a subject by digest: cosign's `sha256-<hex>.sig|.att|.sbom`, and the OCI 1.1 referrers tag
# schema `sha256-<hex>` (an index of the subject's referrers), for registries without the referrers API.
REFERRER_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})(\..{1,100})?$")


class PlanError(UserFacingError):
    """The plan could not be made completely: nothing is deleted."""


class DeleteRefused(UserFacingError):
    """The registry refused a delete (a missing scope, deletes turned off): the apply stops there."""


def referrer_subject(tag: str) -> str | None:
    """The subject digest a referrer tag names (`sha256-<hex>.sig` -> `sha256:<hex>`), else None."""
    match = REFERRER_TAG.match(tag)
    return f"{match[1]}:{match[2]}" if match else None


def parse_age(text: str) -> float:
    """Seconds in `90s`, `30m`, `24h`, `7d` (a bare number is seconds); one line when it is not one."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    try:
        seconds = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise UserFacingError(f"'{text[:20]}' is not a duration: use 90s, 30m, 24h or 7d.")
    return seconds


@dataclass(frozen=True)
class Policy:
    """Per repository keep: the `keep` newest tagged versions, every tag matching `keep_tags`, everything newer
    than `older_than` seconds (None: age protects nothing); and whatever a kept version needs."""

    keep: int = DEFAULT_KEEP
    keep_tags: str = DEFAULT_KEEP_TAGS
    older_than: float | None = None
    repository: str | None = None

    @classmethod
    def parse(
        cls, keep: int | str | None, keep_tags: str | None, older_than: str | None, repository: str | None = None
    ) -> Policy:
        """A policy from a person's words; UserFacingError (one line) for anything wrong."""
        count = DEFAULT_KEEP
        if keep is not None:
            try:
                count = int(keep)
            except ValueError:
                raise UserFacingError(f"keep must be a whole number, not '{str(keep)[:20]}'.") from None
            if not 0 <= count <= 100_000:
                raise UserFacingError("keep must be between 0 and 100000.")
        pattern = DEFAULT_KEEP_TAGS if keep_tags is None else keep_tags
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserFacingError(f"--keep-tags '{pattern[:60]}' is not a regular expression: {exc}.") from None
        age = parse_age(older_than) if older_than is not None else None
        return cls(count, pattern, age, repository)

    def keeps_tag(self, tag: str) -> bool:
        return re.search(self.keep_tags, tag) is not None

    def describe(self) -> str:
        age = f"everything newer than {age_text(self.older_than)}" if self.older_than is not None else "nothing by age"
        return f"keep the {self.keep} newest tagged, tags matching {self.keep_tags}, {age}"

    def to_json(self) -> dict[str, Any]:
        return {"keep": self.keep, "keep_tags": self.keep_tags, "older_than": self.older_than}


def age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass
class Version:
    """One manifest of a repository: what the registry lists (GHCR's and Forgejo's versions) or what a tag or
    an index reaches (distribution, which lists only tags)."""

    repository: str
    digest: str
    tags: set[str] = field(default_factory=set)  # image tags pointing at it
    referrer_tags: set[str] = field(default_factory=set)  # `sha256-<hex>...` tags pointing at it
    created: datetime | None = None
    ids: list[str] = field(default_factory=list)  # GHCR: the version id; Forgejo: its version names
    listed: bool = True  # the registry lists it as a version of its own

    @property
    def all_tags(self) -> list[str]:
        return sorted(self.tags | self.referrer_tags)


@dataclass(frozen=True)
class Manifest:
    """A manifest's ties: an index's children, a referrer's subject, a config (for its `created`)."""

    digest: str
    is_index: bool = False
    children: tuple[str, ...] = ()
    subject: str | None = None
    config: str | None = None
    created: datetime | None = None  # the index's org.opencontainers.image.created
    missing: bool = False  # the registry answered 404


@dataclass(frozen=True)
class Decision:
    repository: str
    digest: str
    tags: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "digest": self.digest, "tags": list(self.tags), "reason": self.reason}

    def line(self) -> str:
        tags = ",".join(self.tags) or "-"
        return f"{self.repository}  {self.digest}  {tags}  {self.reason}"


@dataclass
class RepositoryPlan:
    repository: str
    versions: dict[str, Version]
    manifests: dict[str, Manifest]
    kept: dict[str, str]  # digest -> why
    deleted: list[Decision]  # in the order they are deleted: indexes and referrers before what they point at


@dataclass
class Plan:
    registry: str
    kind: str
    policy: Policy
    repositories: list[RepositoryPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things a person should know (a missing child, ...)

    @property
    def deletions(self) -> list[Decision]:
        return [d for repo in self.repositories for d in repo.deleted]

    @property
    def kept_count(self) -> int:
        return sum(len(repo.kept) for repo in self.repositories)

    def counts(self) -> list[tuple[str, int, int]]:
        """(repository, to delete, to keep) for each repository with anything to delete, most deletions first."""
        rows = [(r.repository, len(r.deleted), len(r.kept)) for r in self.repositories if r.deleted]
        return sorted(rows, key=lambda row: (-row[1], row[0]))


@dataclass
class Deleted:
    repository: str
    digest: str
    tags: tuple[str, ...]
    outcome: str  # "deleted", or "gone" (already deleted by someone else)

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "digest": self.digest, "tags": list(self.tags), "outcome": self.outcome}


@dataclass
class Skipped:
    repository: str
    digest: str
    reason: str


@dataclass
class Verified:
    intact: int = 0
    broken: list[Any] = field(default_factory=list)  # CheckResult of each broken kept tag
    errors: list[Any] = field(default_factory=list)  # CheckResult of each tag that could not be checked

    def to_json(self) -> dict[str, Any]:
        return {"intact": self.intact, "broken": len(self.broken), "errors": len(self.errors)}


@dataclass
class Outcome:
    """What a prune did: the plan, and with --apply what it deleted, skipped and found afterwards."""

    plan: Plan | None
    registry: str
    policy: Policy
    applied: bool = False
    deleted: list[Deleted] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    verified: Verified = field(default_factory=Verified)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """0: planned, or applied and every kept tag intact; 1: something kept is broken; 2: could not."""
        if self.verified.broken:
            return 1
        if self.error or self.verified.errors:
            return 2
        return 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "registry": self.registry,
            "keep": self.policy.keep,
            "keep_tags": self.policy.keep_tags,
            "older_than": self.policy.older_than,
            "plan": [d.to_json() for d in self.plan.deletions] if self.plan else [],
            "kept": self.plan.kept_count if self.plan else 0,
            "applied": self.applied,
            "deleted": [d.to_json() for d in self.deleted],
            "skipped": [{"repository": s.repository, "digest": s.digest, "reason": s.reason} for s in self.skipped],
            "verified": self.verified.to_json(),
        }
        if self.error is not None:
            data["error"] = self.error
        return data
