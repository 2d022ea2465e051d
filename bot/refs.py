"""Image references: the distribution reference grammar, restricted to the configured registry.

Validation happens before any network request, so a malformed or foreign reference costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote

from bot.errors import BadReference

# From distribution/reference's grammar (reference/regexp.go).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
# ASCII only, as in distribution: Python's `\w` would also take Unicode letters and digits.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", re.ASCII)
_DIGEST = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$"
)
MAX_NAME_LENGTH = 255
MAX_REFERENCE_LENGTH = 512
DEFAULT_TAG = "latest"
IMPLIED_TAG_NOTE = f"no tag given; checked :{DEFAULT_TAG}"


@dataclass(frozen=True)
class ImageRef:
    """A repository on the configured registry, with a tag, a digest, or both (the digest wins)."""

    name: str
    tag: str | None = None
    digest: str | None = None
    # True when the text named no tag nor digest and `latest` was taken, as docker and skopeo do.
    tag_implied: bool = field(default=False, compare=False)
    # The registry host the text named (lower case); None for the default registry.
    host: str | None = field(default=None, compare=False)

    @property
    def implied_note(self) -> str | None:
        """What a verdict should add when the tag was not given but implied."""
        return IMPLIED_TAG_NOTE if self.tag_implied else None

    @property
    def reference(self) -> str:
        """What to put after /manifests/: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def owner(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def short_name(self) -> str:
        """The name without its owner (Forgejo's package name)."""
        return self.name.split("/", 1)[1] if "/" in self.name else self.name

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def valid_repository_name(name: str) -> bool:
    """Whether `name` fits the repository grammar (so it is safe in a /v2/<name>/... path)."""
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def valid_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


def valid_digest(digest: str) -> bool:
    match = _DIGEST.fullmatch(digest)
    return match is not None and len(match.group(2)) == _DIGEST_HEX_LENGTH[match.group(1)]


def manifest_path(name: str, reference: str) -> str:
    """`/v2/<name>/manifests/<tag or digest>`, refusing anything that is not one (a registry's answer may lie)."""
    if not valid_repository_name(name):
        raise BadReference(f"'{_clip(name)}' is not a valid repository name; it was not put in a request.")
    if not (valid_digest(reference) or valid_tag(reference)):
        raise BadReference(f"'{_clip(reference)}' is not a digest nor a tag; it was not put in a request.")
    return f"/v2/{quote(name, safe='/')}/manifests/{quote(reference, safe=':')}"


def validate_digest(digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise BadReference(f"'{_clip(digest)}' is not a digest: expected sha256:<64 hex> or sha512:<128 hex>.")
    algorithm, hex_part = match.groups()
    if len(hex_part) != _DIGEST_HEX_LENGTH[algorithm]:
        raise BadReference(
            f"'{_clip(digest)}' is not a well-formed {algorithm} digest: "
            f"it needs {_DIGEST_HEX_LENGTH[algorithm]} hex digits, not {len(hex_part)}."
        )
    return digest


def parse_reference(text: str, registry_hosts: tuple[str, ...] = ()) -> ImageRef:
    """Parse `[host[:port]/]owner/name[:tag][@digest]`; with neither tag nor digest the tag is `latest`.

    `registry_hosts` are the host[:port] names of the configured registry; a reference naming any other
    host is refused, since the bot holds credentials for its own registry only.
    """
    raw = text.strip(" \t\r\n")  # ASCII white space only: a trailing NEL (\x85) is part of the text, and refused
    if not raw:
        raise BadReference("No image given: expected owner/name:tag or owner/name@sha256:<digest>.")
    if len(raw) > MAX_REFERENCE_LENGTH:
        raise BadReference(f"The reference is {len(raw)} characters long; at most {MAX_REFERENCE_LENGTH} make sense.")
    if any(c.isspace() for c in raw):
        raise BadReference(f"'{_clip(raw)}' contains white space; an image reference has none.")

    remainder, digest = raw, None
    if "@" in raw:
        remainder, digest = raw.split("@", 1)
        validate_digest(digest)

    # The first component is a host when it has a dot or a port, or is localhost (the distribution rule).
    first, sep, rest = remainder.partition("/")
    host = None
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, remainder = first, rest
        if not _HOST.fullmatch(host):
            raise BadReference(f"'{_clip(host)}' is not a valid registry host.")
        allowed = {h.lower() for h in registry_hosts}
        if host.lower() not in allowed:
            named = ", ".join(sorted(allowed)) or "none configured"
            raise BadReference(f"'{host}' is not this bot's registry ({named}); it checks only its own registry.")
        host = host.lower()

    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise BadReference(
                f"'{_clip(tag)}' is not a valid tag: up to 128 ASCII letters, digits, '_', '.', '-', "
                "not starting with '.' or '-'."
            )

    name = remainder
    if not name:
        raise BadReference(f"'{_clip(raw)}' names no repository: expected owner/name:tag.")
    if name != name.lower() and _NAME.fullmatch(name.lower()):
        raise BadReference(f"'{_clip(name)}' has capital letters; repository names are lowercase.")
    if not _NAME.fullmatch(name):
        raise BadReference(
            f"'{_clip(name)}' is not a valid repository name: lowercase letters and digits in components "
            "separated by '/', joined inside by '.', '_', '__' or '-'."
        )
    if len(name) > MAX_NAME_LENGTH:
        raise BadReference(f"The repository name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}.")
    if tag is None and digest is None:
        return ImageRef(name=name, tag=DEFAULT_TAG, tag_implied=True, host=host)
    return ImageRef(name=name, tag=tag, digest=digest, host=host)


def _clip(text: str, limit: int = 80) -> str:
    """Echo user input back without letting it flood a message or a log line."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


@dataclass(frozen=True)
class ContainerImage:
    """A pod spec's `image:` string, split the way the container runtime reads it."""

    host: str
    name: str
    tag: str | None
    digest: str | None


def parse_container_image(image: str) -> ContainerImage | None:
    """Split `host/name:tag@digest` as containerd does (docker.io and :latest implied). None if malformed."""
    text = image.strip()
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, remainder = first.lower(), rest
    else:
        host, remainder = "docker.io", text
    tag = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
    if not remainder or not _NAME.fullmatch(remainder):
        return None
    if tag is None and digest is None:
        tag = "latest"
    return ContainerImage(host=host, name=remainder, tag=tag, digest=digest)


def image_matches(
    container_image: str, hosts: tuple[str, ...], name: str, tag: str, digests: frozenset[str] = frozenset()
) -> bool:
    """Whether a container runs `name:tag` of our registry: by tag, or pinned to one of the image's digests."""
    parsed = parse_container_image(container_image)
    if parsed is None or parsed.host not in {h.lower() for h in hosts} or parsed.name != name:
        return False
    if parsed.digest:
        return parsed.digest in digests
    return parsed.tag == tag
