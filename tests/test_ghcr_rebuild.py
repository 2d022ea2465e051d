"""Rebuild on GHCR, for real: the broken version deleted by id through GitHub's packages API (never one whose
digest another tag still uses; 403 without delete:packages), the image's GitHub Actions workflow dispatched,
its run pushing a fresh image through GHCR's token flow, and the full check confirming it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bot.config import Secret, Settings
from bot.incidents.lifecycle import Outcome
from bot.registry.registries import RegistryConfig
from bot.runbook.base import PhaseContext, PhaseResult, RecordingProgress
from bot.runbook.diagnose import diagnose
from bot.runbook.rebuild import rebuild
from bot.runbook.verify import verify
from bot.secrets import SecretResolver
from tests.peers.ghcr import ChallengeAuth, GhcrStandIn
from tests.peers.github_actions import GitHubActionsStandIn
from tests.peers.registry import ImagePusher, PushedImage, Registry
from tests.world import unsaved_incident

PAT, READ_PAT = "ghcr-pat-s3cret", "ghcr-read-s3cret"


@dataclass
class Peers:
    ghcr: GhcrStandIn
    github: GitHubActionsStandIn

    def push(self, name: str, tag: str, **options: object) -> PushedImage:
        pusher = ImagePusher(self.ghcr.url, auth=ChallengeAuth("viktorbarzin", PAT))  # type: ignore[arg-type]
        image = pusher.push_image(name, tag, **options)  # type: ignore[arg-type]
        pusher.close()
        return image

    def broken(self, name: str, tag: str) -> PushedImage:
        image = self.push(name, tag)
        self.ghcr.registry.break_manifest_link(name, image.children["linux/amd64"])  # a retention job's doing
        return image

    def settings(self, pat: str = PAT) -> Settings:
        entry = RegistryConfig(
            url=self.ghcr.url,
            kind="ghcr",
            owner="viktorbarzin",
            username="viktorbarzin" if pat == PAT else "reader",
            password=Secret(pat),
            github_api_url=self.ghcr.api_url,
        )
        base = Settings(
            github_api_url=self.github.url,
            github_token=Secret("gh-token"),
            ci_branch="main",
            ci_poll_interval=0.1,
            kube_enabled="false",
            registries=(entry,),
            images={"viktorbarzin/tools/cli": {"repo": "viktorbarzin/tools"}},
        )
        return entry.view(base)


@pytest.fixture
def peers() -> Iterator[Peers]:
    with Registry() as backing, GhcrStandIn(backing) as ghcr:
        auth = ChallengeAuth("viktorbarzin", PAT)
        with GitHubActionsStandIn(registry_url=ghcr.url, registry_auth=auth) as github:  # type: ignore[arg-type]
            github.add_workflow("viktorbarzin", "app", image=("viktorbarzin/app", "latest"))
            github.add_workflow("viktorbarzin", "tools", image=("viktorbarzin/tools/cli", "v1"))
            yield Peers(ghcr, github)


def run(
    fn, peers: Peers, image: PushedImage, settings: Settings | None = None
) -> tuple[PhaseResult, RecordingProgress]:
    settings = settings or peers.settings()
    incident = unsaved_incident(peers.ghcr.host, image.reference, image.digest)
    ctx = PhaseContext(settings, incident, SecretResolver(settings), None, actor="U0APPROVER")
    progress = RecordingProgress()
    return asyncio.run(fn(ctx, progress)), progress


@pytest.mark.parametrize("name, tag", [("viktorbarzin/app", "latest"), ("viktorbarzin/tools/cli", "v1")])
def test_a_ghcr_rebuild_deletes_the_version_dispatches_and_confirms(peers, name, tag):
    image = peers.broken(name, tag)
    _diagnosed, steps = run(diagnose, peers, image)
    assert "a retention job that deletes untagged versions" in steps.steps["retention"].text
    result, progress = run(rebuild, peers, image)
    assert result.outcome is Outcome.SUCCEEDED, progress.history
    assert peers.ghcr.deleted == [(name, image.digest)]
    (pushed,) = peers.github.pushed
    assert (pushed.name, pushed.tag) == (name, tag) and pushed.digest != image.digest
    assert result.check is not None and result.check.status == "intact" and result.check.digest == pushed.digest
    assert progress.steps["delete"].state == "done" and "deleted" in progress.steps["delete"].text
    assert progress.steps["confirm"].state == "done"
    verified, checks = run(verify, peers, image)  # no Prometheus, no cluster: the full check decides
    assert verified.outcome is Outcome.SUCCEEDED and checks.steps["check"].state == "done"


def test_without_delete_packages_it_is_one_sentence_and_nothing_happens(peers):
    image = peers.broken("viktorbarzin/app", "latest")
    result, _progress = run(rebuild, peers, image, peers.settings(READ_PAT))
    assert result.outcome is Outcome.FAILED
    assert result.summary == (
        "The GitHub token lacks the delete:packages scope, so GitHub refused to delete the version; "
        "nothing was deleted or rebuilt."
    )
    assert peers.ghcr.deleted == [] and peers.github.runs() == []


def test_a_version_another_tag_still_uses_is_never_deleted(peers):
    image = peers.push("viktorbarzin/app", "latest")
    pusher = ImagePusher(peers.ghcr.url, auth=ChallengeAuth("viktorbarzin", PAT))  # type: ignore[arg-type]
    index = pusher.http.get(
        f"/v2/viktorbarzin/app/manifests/{image.digest}", headers={"Accept": image.media_type}
    ).content
    put = pusher.http.put(
        "/v2/viktorbarzin/app/manifests/stable", content=index, headers={"Content-Type": image.media_type}
    )
    pusher.close()
    assert put.status_code == 201
    peers.ghcr.registry.break_manifest_link("viktorbarzin/app", image.children["linux/amd64"])
    result, _progress = run(rebuild, peers, image)
    assert result.outcome is Outcome.FAILED
    assert "would also delete viktorbarzin/app:stable; nothing was deleted" in result.summary
    assert peers.ghcr.deleted == [] and peers.github.runs() == []
