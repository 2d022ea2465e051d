"""Shared fixtures: real peers started once per session, and a way to run the real command line."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.peers.registry import ImagePusher, Registry

_names = itertools.count(1)

# Every Slack stand-in of the session is kept, so the leak test can read every payload the bot sent.
OBSERVED_SLACK: list[Any] = []


def _observe_slack() -> None:
    from tests.peers.slack_api import SlackStandIn

    original = SlackStandIn.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        OBSERVED_SLACK.append(self)

    SlackStandIn.__init__ = init  # type: ignore[method-assign]


_observe_slack()


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    with Registry(username="cluster-puller", password="pull-token-s3cret") as reg:
        yield reg


@pytest.fixture
def pusher(registry: Registry) -> Iterator[ImagePusher]:
    p = ImagePusher(registry.url)
    yield p
    p.close()


@pytest.fixture
def repo_name() -> str:
    """A repository name no other test uses, so tests can share one registry."""
    return f"viktor/app{next(_names)}-{os.getpid()}"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    """Run `registry-bot` as a person would, in a clean environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "VAULT_", "SLACK_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from tests.peers.postgres import Postgres

    with Postgres() as server:
        yield server


@pytest.fixture
def world() -> Iterator[Any]:
    from tests.world import make_world

    with make_world() as w:
        yield w
