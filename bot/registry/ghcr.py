"""GitHub's container registry (ghcr.io): packages are listed, and versions deleted, through GitHub's REST
API with githubkit, which is generated from GitHub's own OpenAPI description, so every answer is read by
GitHub's schema (an answer GitHub would not give is "could not check", never guessed at).

- `/v2/_catalog` is not supported: a scan lists `GET /users/{owner}/packages?package_type=container` (or
  `/orgs/{owner}/...`; without `owner_type` the user first, then the organisation), following `Link`
  pagination, and only on the API's own origin (the token goes nowhere else).
- GitHub keeps one package version per manifest digest; an index's children are untagged versions. A
  version's tags are its `metadata.container.tags`; it is deleted by id (`delete:packages`).
- A package name with slashes (`tools/cli`) is URL-encoded in REST paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

from bot.errors import CouldNotCheck
from bot.registry.client import RegistryClient, host_of
from bot.registry.model import CheckResult
from bot.registry.registries import RegistryConfig, github_token_of, registry_list

if TYPE_CHECKING:
    from githubkit import GitHub
    from githubkit.response import Response

log = logging.getLogger(__name__)
PER_PAGE = 100
MAX_PAGES = 1000
RETENTION_HINT = (
    "On GHCR an index's children are untagged package versions: a retention job that deletes untagged versions "
    "breaks multi-arch images this way (as Forgejo's retention did on 2026-06-10)."
)


def retention_hint(kind: str, result: CheckResult) -> str | None:
    """What to say when a ghcr image lost an index child: the usual culprit is an untagged-version cleanup."""
    if kind != "ghcr" or not result.is_index:
        return None
    lost_child = any(p.reason == "missing" and p.kind in ("manifest", "index") for p in result.problems)
    return RETENTION_HINT if lost_child else None


@dataclass(frozen=True)
class Version:
    """One package version: a manifest digest, its id in GitHub's API, and the tags pointing at it."""

    id: int
    digest: str
    tags: tuple[str, ...]
    created: datetime | None = None  # the version's created_at (when it was pushed)


class GhcrPackages:
    """GitHub's packages API for one ghcr registry entry. Use as `async with GhcrPackages(entry, token):`."""

    def __init__(self, entry: RegistryConfig, token: str, timeout: float = 15.0) -> None:
        from githubkit import GitHub

        self.entry = entry
        self.owner = entry.owner
        self._api = entry.github_api_url.rstrip("/")
        self._owner_type = entry.owner_type  # "" until the user/org probe has answered
        self._github: GitHub[Any] = GitHub(
            token,
            base_url=self._api + "/",
            user_agent="registry-bot",
            follow_redirects=False,  # the token never follows a redirect
            timeout=timeout,
            http_cache=False,
            auto_retry=False,
        )

    async def __aenter__(self) -> GhcrPackages:
        await self._github.__aenter__()  # type: ignore[no-untyped-call]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._github.__aexit__(*exc)

    # --- reads ---------------------------------------------------------------------------------------------

    async def repositories(self) -> list[str]:
        """owner/name of every container package the owner holds."""
        from githubkit_schemas.latest.models import Package

        rest = self._github.rest.packages
        owner = self.owner

        async def as_user() -> Response[Any]:
            return await rest.async_list_packages_for_user(owner, package_type="container", per_page=PER_PAGE)

        async def as_org() -> Response[Any]:
            return await rest.async_list_packages_for_organization(owner, package_type="container", per_page=PER_PAGE)

        pages = await self._pages(as_user, as_org, list[Package], f"listing {owner}'s packages")
        names = [f"{owner}/{package.name}" for page in pages for package in page]
        return sorted(dict.fromkeys(names))

    async def versions(self, name: str) -> list[Version]:
        """Every version of the package `name` (without the owner), tagged or not."""
        from githubkit_schemas.latest.models import PackageVersion

        rest = self._github.rest.packages
        owner, package = self.owner, quote(name, safe="")

        async def as_user() -> Response[Any]:
            # GitHub's description gives this one no page size nor state: its pages come by `Link`.
            return await rest.async_get_all_package_versions_for_package_owned_by_user("container", package, owner)

        async def as_org() -> Response[Any]:
            return await rest.async_get_all_package_versions_for_package_owned_by_org(
                "container", package, owner, per_page=PER_PAGE, state="active"
            )

        pages = await self._pages(as_user, as_org, list[PackageVersion], f"listing the versions of {owner}/{name}")
        return [_version(item) for page in pages for item in page]

    async def delete_version(self, name: str, version_id: int) -> int:
        """DELETE one version by id; the HTTP status (204 deleted, 404 gone, 403 the token lacks delete:packages)."""
        from githubkit.exception import RequestFailed

        rest = self._github.rest.packages
        package = quote(name, safe="")
        try:
            if await self._is_org():
                answer = await rest.async_delete_package_version_for_org("container", package, self.owner, version_id)
            else:
                answer = await rest.async_delete_package_version_for_user("container", package, self.owner, version_id)
        except RequestFailed as exc:
            return int(exc.response.status_code)
        except Exception as exc:
            raise self._failure(exc, f"deleting version {version_id} of {self.owner}/{name}") from None
        return int(answer.status_code)

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _is_org(self) -> bool:
        if not self._owner_type:
            await self.repositories()  # finds out which, on the first page
        return self._owner_type == "org"

    async def _pages(self, as_user: Any, as_org: Any, model: Any, doing: str) -> list[list[Any]]:
        """The first page (as the user, else the organisation), then every `Link: rel="next"` page on the API."""
        from githubkit.exception import RequestFailed

        try:
            first = await self._first(as_user, as_org)
            pages = [first.parsed_data]
            link = _next_link(first)
            while link and len(pages) < MAX_PAGES:
                url = urljoin(self._api + "/", link)
                if _origin(url) != _origin(self._api):
                    raise CouldNotCheck(
                        f"GitHub's API put the next page of {doing} on {host_of(url)}, another host; the bot sends "
                        "its token only to the API itself, so it could not list it."
                    )
                answer = await self._github.arequest("GET", url, response_model=model)
                pages.append(answer.parsed_data)
                link = _next_link(answer)
            if link:  # a listing cut short would pass for the whole one
                raise CouldNotCheck(f"GitHub's API listed {doing} over more than {MAX_PAGES} pages; the bot stopped.")
        except CouldNotCheck:
            raise
        except RequestFailed as exc:
            raise self._refused(int(exc.response.status_code), doing) from None
        except Exception as exc:
            raise self._failure(exc, doing) from None
        return pages

    async def _first(self, as_user: Any, as_org: Any) -> Response[Any]:
        from githubkit.exception import RequestFailed

        if self._owner_type == "org":
            return await as_org()  # type: ignore[no-any-return]
        try:
            answer = await as_user()
        except RequestFailed as exc:
            if self._owner_type or exc.response.status_code != 404:
                raise
            answer = await as_org()  # not a user: an organisation, perhaps
            self._owner_type = "org"
            return answer  # type: ignore[no-any-return]
        self._owner_type = self._owner_type or "user"
        return answer  # type: ignore[no-any-return]

    def _refused(self, status: int, doing: str) -> CouldNotCheck:
        api = host_of(self._api)
        if status == 401:
            return CouldNotCheck(f"GitHub's API ({api}) refused the token while {doing} (HTTP 401); it may be revoked.")
        if status == 403:
            return CouldNotCheck(
                f"GitHub's API ({api}) refused {doing} (HTTP 403): the token needs read:packages, or the rate "
                "limit is spent."
            )
        if status == 404:
            return CouldNotCheck(f"GitHub's API ({api}) knows no such package or owner while {doing} (HTTP 404).")
        return CouldNotCheck(f"GitHub's API ({api}) answered HTTP {status} while {doing}; try again later.")

    def _failure(self, exc: Exception, doing: str) -> CouldNotCheck:
        from githubkit.exception import RequestTimeout
        from pydantic import ValidationError

        api = host_of(self._api)
        if isinstance(exc, RequestTimeout):
            return CouldNotCheck(f"GitHub's API ({api}) did not answer in time while {doing}.")
        if isinstance(exc, ValidationError | ValueError):
            log.warning("GitHub's answer while %s does not fit GitHub's schema: %s", doing, str(exc)[:300])
            return CouldNotCheck(f"GitHub's API ({api}) answered {doing} with something that is not GitHub's schema.")
        return CouldNotCheck(f"GitHub's API ({api}) is unreachable while {doing} ({type(exc).__name__}).")


def _version(item: Any) -> Version:
    metadata = item.metadata or None
    container = getattr(metadata, "container", None) if metadata else None
    tags = tuple(container.tags) if container else ()
    created = item.created_at if isinstance(item.created_at, datetime) else None
    return Version(int(item.id), str(item.name), tags, created)


def _next_link(answer: Response[Any]) -> str | None:
    header = str(answer.headers.get("link", ""))
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return target.strip().strip("<>")
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


async def list_repositories(client: RegistryClient) -> list[str]:
    """Every repository of a ghcr registry client's entry, through GitHub's packages API."""
    (entry,) = registry_list(client.settings)[:1]
    secrets = getattr(client, "secrets", None)
    token = await github_token_of(entry, secrets) if secrets is not None else client.password
    async with GhcrPackages(entry, token, timeout=max(client.settings.registry_timeout, 15.0)) as packages:
        return await packages.repositories()
