"""`registry-bot prune` on each kind of registry (a real docker-registry; Forgejo's and GHCR's stand-ins in front
of one): the plan keeps every child a kept index needs however deep, the referrers of kept images and the
subjects of kept referrers, and deletes the rest; a dry run deletes nothing; --apply deletes exactly the plan
and every kept tag is intact afterwards; versions come in pages; a refused delete is one sentence naming the
scope; a tag pushed between plan and apply protects its digest."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.peers.forgejo import ForgejoStandIn, ForgejoUser
from tests.peers.ghcr import GhcrStandIn, GhcrUser
from tests.peers.registry import ImagePusher, Registry
from tests.prune_images import Builder, Story, build, day

PAT, READ_PAT = "ghcr-pat-s3cret", "ghcr-read-s3cret"
ACCEPT = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"


@dataclass
class Target:
    kind: str
    registry: Registry  # the real registry holding the bytes
    host: str
    env: dict[str, str]
    name: str  # the repository the story is in
    stand_in: ForgejoStandIn | GhcrStandIn | None = None

    def present(self, digest: str) -> bool:
        status = httpx.get(
            f"{self.registry.url}/v2/{self.name}/manifests/{digest}", headers={"Accept": ACCEPT}
        ).status_code
        assert status in (200, 404)
        return status == 200

    def prune(self, *args: str, env: dict[str, str] | None = None) -> object:
        return run_cli("prune", *args, env={**self.env, **(env or {})}, timeout=120)


def _distribution(tmp: Path) -> Iterator[Target]:
    with Registry() as registry:
        env = {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution", "DATABASE_URL": f"sqlite:///{tmp}/b.db"}
        yield Target("distribution", registry, registry.host, env, "team/prune-app")


def _forgejo(tmp: Path, cleanup: str = "cleanup-token-s3cret") -> Iterator[Target]:
    users = {
        "cluster-puller": ForgejoUser("pull-token-s3cret", {"read:package"}),
        "viktor": ForgejoUser("cleanup-token-s3cret", {"read:package", "write:package"}),
        "weak": ForgejoUser("weak-token", {"read:package"}),
    }
    with Registry() as registry, ForgejoStandIn(registry, users) as forgejo:
        forgejo.max_response_items = 3  # Forgejo clamps `limit`: the bot must follow the pages
        env = {
            "REGISTRY_URL": forgejo.url,
            "REGISTRY_USERNAME": "cluster-puller",
            "REGISTRY_PASSWORD": "pull-token-s3cret",
            "FORGEJO_CLEANUP_TOKEN": cleanup,
            "DATABASE_URL": f"sqlite:///{tmp}/b.db",
        }
        yield Target("forgejo", registry, forgejo.host, env, "viktor/prune-app", forgejo)


def _ghcr(tmp: Path, pat: str = PAT) -> Iterator[Target]:
    users = {
        "viktorbarzin": GhcrUser(PAT, {"read:packages", "write:packages", "delete:packages"}),
        "reader": GhcrUser(READ_PAT, {"read:packages"}),
    }
    with Registry() as registry, GhcrStandIn(registry, users=users, default_per_page=2, max_per_page=2) as ghcr:
        user = "viktorbarzin" if pat == PAT else "reader"
        config = tmp / "bot.yaml"
        config.write_text(
            "registries:\n"
            f"  - {{url: {ghcr.url}, kind: ghcr, owner: viktorbarzin, username: {user}, password_env: GHCR_PAT,"
            f" github_api_url: {ghcr.api_url}}}\n"
        )
        env = {"REGISTRY_BOT_CONFIG": str(config), "GHCR_PAT": pat, "DATABASE_URL": f"sqlite:///{tmp}/b.db"}
        yield Target("ghcr", registry, ghcr.host, env, "viktorbarzin/prune-app", ghcr)


KINDS = {"distribution": _distribution, "forgejo": _forgejo, "ghcr": _ghcr}


@pytest.fixture(params=sorted(KINDS))
def target(request, tmp_path) -> Iterator[Target]:
    yield from KINDS[request.param](tmp_path)


def story(target: Target) -> Story:
    pusher = ImagePusher(target.registry.url)
    try:
        return build(pusher, target.registry, target.name)
    finally:
        pusher.close()


def digests(entries: dict[str, dict]) -> set[str]:
    return {e["digest"] for e in entries.values()}


def test_the_plan_keeps_what_kept_images_need_and_a_dry_run_deletes_nothing(target):
    s = story(target)
    run = target.prune("--keep", "2", "--json")
    assert run.code == 0, run.stdout + run.stderr
    body = run.json()
    assert (body["registry"], body["keep"], body["applied"], body["deleted"]) == (target.host, 2, False, [])
    planned = {p["digest"]: p for p in body["plan"]}
    assert set(planned) == digests(s.gone)  # the shared child, the nested index's, the kept signature stay
    assert planned[s.gone["v1"]["digest"]]["tags"] == ["v1"]
    assert planned[s.gone["v2"]["digest"]]["reason"] == "tagged, not among the 2 newest"
    assert "referrer of" in planned[s.gone["sig1"]["digest"]]["reason"]
    order = [p["digest"] for p in body["plan"]]
    for index, child in (("v1", "a1"), ("v2", "a2")):
        assert order.index(s.gone[index]["digest"]) < order.index(s.gone[child]["digest"]), "indexes first"
    for digest in digests(s.keep) | digests(s.gone) | {s.untagged_referrer["digest"]}:
        assert target.present(digest)
    text = target.prune("--keep", "2")
    assert text.code == 0
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"PLAN prune of {target.host}: delete 5 of ")
    assert sum(1 for line in lines if line.startswith(f"  {target.name}  sha256:")) == 5
    assert f"{target.name}: delete 5, keep " in text.stdout
    assert lines[-1] == "Dry run: nothing was deleted; run with --apply to delete these 5 versions."
    if isinstance(target.stand_in, GhcrStandIn):  # two versions a page: the Link pages were followed
        pages = [x.path for x in target.stand_in.seen if "/versions" in x.path and x.side == "api"]
        assert len(pages) > 5 and not target.stand_in.deleted
    if isinstance(target.stand_in, ForgejoStandIn):
        assert len(target.stand_in.paths("/api/v1/packages/viktor")) >= 5  # three versions a page
        assert not [m for m, _, _ in target.stand_in.requests if m == "DELETE"]


def test_apply_deletes_exactly_the_plan_and_every_kept_tag_is_intact(target):
    s = story(target)
    planned = {p["digest"] for p in target.prune("--keep", "2", "--json").json()["plan"]}
    run = target.prune("--keep", "2", "--apply", "--json")
    assert run.code == 0, run.stdout + run.stderr
    body = run.json()
    assert body["applied"] is True and body["skipped"] == []
    assert {d["digest"] for d in body["deleted"]} == planned == digests(s.gone)
    assert body["verified"] == {"intact": 4, "broken": 0, "errors": 0}  # latest, v3, buildcache, v3's signature
    audit = run_cli("audit", "--json", env=target.env).json()
    deletions = [row for row in audit if row["action"] == "prune_delete"]
    assert len(deletions) == len(planned) and all(row["user"].startswith("cli:") for row in deletions)
    assert {row["action"] for row in audit} >= {"prune_apply"}
    for digest in digests(s.gone):
        assert not target.present(digest)
    for digest in digests(s.keep) | {s.untagged_referrer["digest"]}:
        assert target.present(digest)
    scan = run_cli("scan", "--json", env=target.env)
    assert scan.code == 0, scan.stdout
    assert {r["reference"].split(":")[1] for r in scan.json()["results"]} >= {"latest", "v3", "buildcache"}
    again = target.prune("--keep", "2", "--apply")
    assert again.code == 0 and again.stdout.startswith(f"INTACT after the prune of {target.host}: deleted 0 of 0")


def test_older_than_and_keep_tags_protect_and_a_bad_argument_is_one_line(tmp_path):
    for target in _distribution(tmp_path):
        s = story(target)
        young = target.prune("--keep", "0", "--keep-tags", "^v1$", "--older-than", "36500d", "--json")
        assert young.code == 0 and young.json()["plan"] == []
        by_tag = target.prune("--keep", "0", "--keep-tags", "^v1$", "--json").json()["plan"]
        gone = {p["digest"] for p in by_tag}
        assert s.gone["v1"]["digest"] not in gone and s.gone["a1"]["digest"] not in gone
        assert s.keep["latest"]["digest"] in gone and s.keep["shared"]["digest"] not in gone  # v1 still lists it
        for args, fragment in (
            (("--keep-tags", "(unclosed"), "is not a regular expression"),
            (("--older-than", "soon"), "is not a duration"),
            (("--older-than=-3d",), "is not a duration"),
            (("--keep", "-1"), "keep must be between 0 and 100000"),
            (("--keep", "many"), "keep must be a whole number"),
            (("--registry", "elsewhere.example"), "is none of this bot's registries"),
            (("--repository", "Bad Name"), "is not a repository name"),
        ):
            bad = target.prune(*args)
            assert bad.code == 2 and bad.stdout == "", (args, bad.stdout)
            assert fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.parametrize("kind", ["forgejo", "ghcr"])
def test_a_refused_delete_is_one_sentence_naming_the_scope_and_deletes_nothing(kind, tmp_path):
    weak = _forgejo(tmp_path, cleanup="weak-token") if kind == "forgejo" else _ghcr(tmp_path, pat=READ_PAT)
    for target in weak:
        s = story(target)
        run = target.prune("--keep", "2", "--apply", "--json")
        assert run.code == 2, run.stdout
        error = run.json()["error"]
        scope = "write:package" if kind == "forgejo" else "delete:packages"
        assert scope in error and error.count(". ") == 0 and error.endswith("nothing more was deleted.")
        assert run.json()["deleted"] == [] and run.json()["verified"]["broken"] == 0
        for digest in digests(s.gone):
            assert target.present(digest)
        text = target.prune("--keep", "2", "--apply")
        assert text.code == 2 and f"  Stopped: {error}" in text.stdout


def test_a_tag_pushed_between_plan_and_apply_protects_its_digest(tmp_path):
    for target in _forgejo(tmp_path):
        s = story(target)
        forgejo = target.stand_in
        assert isinstance(forgejo, ForgejoStandIn)
        forgejo.tamper("DELETE", r"^/api/v1/packages/", delay=2.0, times=1)  # the first delete takes a while
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "prune", "--keep", "2", "--apply", "--json"],
            env={**_clean_env(), **target.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not [m for m, _, _ in forgejo.requests if m == "DELETE"] and time.monotonic() < deadline:
            time.sleep(0.05)
        pusher = ImagePusher(target.registry.url)
        b = Builder(pusher, target.registry)
        b.tag(target.name, "hotfix", s.gone["a2"])  # someone tags an image the plan deletes
        b.index(target.name, "v4", [s.gone["a1"]], day(5))  # and pushes an index that lists another
        pusher.close()
        out, err = process.communicate(timeout=90)
        assert process.returncode == 0, out.decode() + err.decode()
        import json

        body = json.loads(out)
        skipped = {x["digest"]: x["reason"] for x in body["skipped"]}
        assert skipped[s.gone["a2"]["digest"]] == "tag hotfix points at it now"
        assert skipped[s.gone["a1"]["digest"]].startswith("now listed by kept index sha256:")
        assert target.present(s.gone["a1"]["digest"]) and target.present(s.gone["a2"]["digest"])
        assert not target.present(s.gone["v1"]["digest"])
        assert body["verified"] == {"intact": 6, "broken": 0, "errors": 0}


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "VAULT_", "SLACK_"))}


def test_a_tag_it_cannot_look_up_stops_the_plan_and_a_signature_kept_elsewhere_stays(tmp_path):
    """A lookup answered 429 might hide a tag on a version the plan would delete: exit 2, nothing deleted. A
    signature whose image lives in another repository (cosign's COSIGN_REPOSITORY) is never planned."""
    for target in _forgejo(tmp_path):
        s = story(target)
        pusher = ImagePusher(target.registry.url)
        signatures = "viktor/prune-sigs"
        hexes = (s.keep["v3"]["digest"].split(":")[1], s.gone["v1"]["digest"].split(":")[1])
        foreign = [Builder(pusher, target.registry).manifest(signatures, f"sig-{h[:6]}", day(1), tag=f"sha256-{h}.sig")
                   for h in hexes]  # fmt: skip
        pusher.close()
        body = target.prune("--keep", "2", "--json").json()
        planned = {p["digest"] for p in body["plan"]}
        assert not planned & {sig["digest"] for sig in foreign}  # kept: their images are not in that repository
        assert digests(s.gone) <= planned
        forgejo = target.stand_in
        assert isinstance(forgejo, ForgejoStandIn)
        forgejo.tamper("HEAD", rf"^/v2/{target.name}/manifests/v3$", status=429)
        run = target.prune("--keep", "2", "--apply", "--json")
        assert run.code == 2, run.stdout + run.stderr
        assert f"Could not look up {target.name}:v3 (HTTP 429), so nothing was deleted." in run.json()["error"]
        assert not [m for m, _, _ in forgejo.requests if m == "DELETE"]
        for digest in digests(s.gone):
            assert target.present(digest)


def test_an_apply_that_cannot_be_audited_deletes_nothing(tmp_path):
    for target in _distribution(tmp_path):
        s = story(target)
        run = target.prune("--keep", "2", "--apply", env={"DATABASE_URL": "postgresql+psycopg://u:p@127.0.0.1:9/none"})
        assert run.code == 2 and "Traceback" not in run.stderr
        assert len((run.stdout + run.stderr).strip().splitlines()) == 1, run.stdout + run.stderr
        for digest in digests(s.gone):
            assert target.present(digest)
