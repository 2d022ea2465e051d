"""Forgejo's packages API (/api/v1/packages): list container packages, see and delete a version.

Auth is `Authorization: token <PAT>`; a container package's "version" is its tag (or digest when pushed
by digest).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bot.errors import CouldNotCheck
from bot.registry.client import RegistryClient, RegistryResponse

PAGE_LIMIT = 50
MAX_PAGES = 1000


class ForgejoPackages:
    def __init__(self, registry: RegistryClient, token: str | None = None) -> None:
        self._registry = registry
        self._token = token if token is not None else registry.password
        self.host = registry.settings.registry_host

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token}", "Accept": "application/json"} if self._token else {}

    async def _get(self, path: str, params: dict[str, str] | None = None) -> RegistryResponse:
        return await self._registry.request_plain("GET", path, headers=self._headers(), params=params)

    async def container_repositories(self, owners: tuple[str, ...]) -> list[str]:
        """owner/name of every container package the owners hold, from the packages listing."""
        names: dict[str, None] = {}
        for owner in owners:
            for package in await self.list_container_versions(owner):
                names[f"{owner}/{package['name']}"] = None
        return sorted(names)

    async def list_container_versions(self, owner: str) -> list[dict[str, Any]]:
        versions: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self._get(
                f"/api/v1/packages/{quote(owner, safe='')}",
                {"type": "container", "page": str(page), "limit": str(PAGE_LIMIT)},
            )
            if response.status_code != 200:
                raise CouldNotCheck(
                    f"Forgejo's packages API on {self.host} answered HTTP {response.status_code} listing "
                    f"{owner}'s packages; the registry cannot be listed."
                )
            try:
                batch = response.json()
            except ValueError:
                raise CouldNotCheck(f"Forgejo's packages API on {self.host} did not answer JSON.") from None
            if not isinstance(batch, list) or not batch:
                break
            versions.extend(item for item in batch if isinstance(item, dict) and item.get("name"))
            # Forgejo clamps `limit` to its MAX_RESPONSE_ITEMS: a short page ends the list only when the total
            # is not given.
            total = response.headers.get("X-Total-Count")
            if total and total.isdigit():
                if len(versions) >= int(total):
                    break
            elif len(batch) < PAGE_LIMIT:
                break
        else:  # a listing cut short would pass for the whole one
            raise CouldNotCheck(f"Forgejo's packages API on {self.host} listed {owner}'s packages over more than "
                                f"{MAX_PAGES} pages; the bot stopped.")  # fmt: skip
        return versions

    async def version_exists(self, owner: str, name: str, version: str) -> bool:
        response = await self._get(self._version_path(owner, name, version))
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise CouldNotCheck(f"Forgejo's packages API on {self.host} answered HTTP {response.status_code}.")

    async def delete_version(self, owner: str, name: str, version: str) -> int:
        """DELETE a version; returns the HTTP status (204 deleted, 404 already gone, 403 token too weak)."""
        response = await self._registry.request_plain(
            "DELETE", self._version_path(owner, name, version), headers=self._headers()
        )
        return response.status_code

    @staticmethod
    def _version_path(owner: str, name: str, version: str) -> str:
        return f"/api/v1/packages/{quote(owner, safe='')}/container/{quote(name, safe='')}/{quote(version, safe='')}"
