"""What the rebuild phase needs from any CI backend, and the HTTP plumbing the CI clients share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from bot.errors import UserFacingError


class CIError(UserFacingError):
    """A CI server refused or failed a request; the message says which and what to do."""


TERMINAL_OK = {"success"}


@dataclass
class CIStep:
    name: str
    state: str  # Woodpecker's states; GitHub's are mapped onto them
    workflow: str = ""
    step_id: int | None = None


@dataclass
class CIRun:
    """A pipeline (Woodpecker) or workflow run (GitHub) as the rebuild phase follows it."""

    number: int
    status: str
    url: str
    finished: bool
    steps: list[CIStep] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.finished and self.status in TERMINAL_OK


class CIBackend(Protocol):
    """One image's build in one CI (Woodpecker, GitHub Actions): chosen once, then driven the same way."""

    description: str  # e.g. "Woodpecker viktor/app on main", for progress lines

    async def prepare(self) -> None:
        """Check the build can be started (the repository exists); raises CIError."""

    async def start(self) -> CIRun:
        """Start the build; raises CIError (with what to do) when the CI refuses or filters it out."""

    async def poll(self, run: CIRun) -> CIRun:
        """The run as it is now; raises CIError when the CI does not answer."""

    async def log_tail(self, run: CIRun, step: CIStep) -> list[str]:
        """The last lines of a step's log; [] when there is none to read."""

    async def aclose(self) -> None: ...


async def request(http: httpx.AsyncClient, service: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request with errors turned into one sentence naming the service."""
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise CIError(f"{service} did not answer in time ({method} {httpx.URL(url).path}).") from None
    except httpx.HTTPError as exc:
        raise CIError(f"{service} is unreachable ({type(exc).__name__}); check its URL and that it is up.") from None
    if response.status_code == 401:
        raise CIError(f"{service} refused the bot's token (HTTP 401); check the token setting or its Vault secret.")
    if response.status_code == 403:
        raise CIError(f"{service} says the bot's token may not do that (HTTP 403).")
    if response.status_code >= 500:
        raise CIError(f"{service} failed with HTTP {response.status_code} on {method} {httpx.URL(url).path}.")
    return response
