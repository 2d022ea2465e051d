"""Prune in Slack, driven from outside as people would: only approvers may ask for a plan; the plan shows
counts per repository and the first deletions with an Apply button; under the two-person rule a second,
different approver must approve; the apply reports in the thread and every deletion is audited. A scheduled
plan is posted and waits: it is never applied on its own."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx

from tests.conftest import run_cli
from tests.harness import APPROVER, APPROVER2, CHANNEL, VIEWER, buttons, message_text, roots
from tests.peers.registry import ImagePusher
from tests.prune_images import Builder, build, day
from tests.world import make_world

NAME = "viktor/prune-app"


def _plans(slack):
    return [m for m in roots(slack) if "Prune plan #" in (m.get("text") or "")]


def test_prune_in_slack_approvers_only_two_people_progress_and_audit():
    with make_world() as world:
        pusher = ImagePusher(world.registry.url)
        story = build(pusher, world.registry, NAME)
        pusher.close()
        bot = world.bot(TWO_PERSON_RULE="true", SCAN_INTERVAL="0")
        bot.start()
        bot.command("prune keep=2", user=VIEWER)
        world.slack.wait_for(lambda s: any(e["user"] == VIEWER and "Only approvers" in e["text"] for e in s.ephemeral))
        assert not _plans(world.slack)
        bot.command("prune keep=2", user=APPROVER)
        plan = world.slack.wait_for(lambda s: next(iter(_plans(s)), None), timeout=30)
        text = message_text(plan)
        assert f"Prune plan #1 for {world.forgejo.host}: delete 5 of" in text
        assert f"{NAME}`: delete 5, keep" in text and "tagged, not among the 2 newest" in text
        assert buttons(plan) == ["registry_prune_apply"]
        # Pushed after the plan was posted, listing a1, which the plan deletes: the fresh plan at apply time
        # deletes v0 too, but nobody approved that, so v0 stays, and so does a1, which v0 now needs.
        pusher = ImagePusher(world.registry.url)
        late = Builder(pusher, world.registry)
        v0 = late.index(NAME, "v0", [story.gone["a1"]], day(1))
        late.stamp(NAME)
        pusher.close()
        bot.click("registry_prune_apply", plan, user=VIEWER)
        world.slack.wait_for(lambda s: any(e["user"] == VIEWER and "Only approvers" in e["text"] for e in s.ephemeral))
        bot.click("registry_prune_apply", plan, user=APPROVER)
        ask = world.slack.wait_for(
            lambda s: next((m for m in world.thread(plan) if "registry_prune_approve" in buttons(m)), None)
        )
        assert "A different approver must approve it" in message_text(ask)
        assert "Apply by" in message_text(world.current(plan)) and not buttons(world.current(plan))
        bot.click("registry_prune_approve", ask, user=APPROVER)
        world.slack.wait_for(lambda s: any("different approver must approve" in e["text"] for e in s.ephemeral))
        for digest in (e["digest"] for e in story.gone.values()):
            assert _present(world, digest), "nothing is deleted before the second approver"
        bot.click("registry_prune_approve", ask, user=APPROVER2)
        done = world.slack.wait_for(
            lambda s: next((m for m in world.thread(plan) if "deleted 4 of 6 planned" in (m.get("text") or "")), None),
            timeout=60,
        )
        assert "kept tags 5 intact, 0 broken" in done["text"] and done["text"].startswith("✅")  # and v0
        progress = next(m for m in world.thread(plan) if "Applying prune plan #1" in message_text(m))
        assert "approved by" in message_text(progress)
        assert progress["text"].count("not in the plan that was approved") == 1
        assert "now listed by kept index" in progress["text"]
        assert _present(world, v0["digest"]) and _present(world, story.gone["a1"]["digest"])
        for name in ("v1", "v2", "a2", "sig1"):
            assert not _present(world, story.gone[name]["digest"])
        for digest in (e["digest"] for e in story.keep.values()):
            assert _present(world, digest)
        audit = run_cli("audit", "--json", env={"DATABASE_URL": bot.env["DATABASE_URL"]})
        rows = audit.json()
        deletions = [r for r in rows if r["action"] == "prune_delete"]
        assert len(deletions) == 4 and {r["user"] for r in deletions} == {APPROVER2}
        assert all(NAME in r["detail"] and "sha256:" in r["detail"] for r in deletions)
        assert any(r["action"] == "approve" and r["user"] == APPROVER2 for r in rows)
        assert any(r["action"] == "refuse" and r["user"] == VIEWER for r in rows)
        bot.click("registry_prune_approve", ask, user=APPROVER2)
        world.slack.wait_for(lambda s: any("already" in e["text"] and e["user"] == APPROVER2 for e in s.ephemeral))


def test_a_scheduled_plan_is_posted_and_never_applied_on_its_own():
    with make_world() as world:
        pusher = ImagePusher(world.registry.url)
        story = build(pusher, world.registry, NAME)
        newer = Builder(pusher, world.registry)
        for n in range(1, 11):  # ten newer tags: the default keep of 10 lets v1..v3 go
            newer.manifest(NAME, f"extra-{n}", datetime(2026, 2, n, tzinfo=UTC), tag=f"r{n}")
        pusher.close()
        world.bot(PRUNE_SCHEDULE="* * * * *", LEADER_LEASE_SECONDS="3").start()
        plan = world.slack.wait_for(lambda s: next(iter(_plans(s)), None), timeout=90)
        assert "(scheduled: PRUNE_SCHEDULE)" in message_text(
            plan
        ) and "tagged, not among the 10 newest" in message_text(plan)
        assert buttons(plan) == ["registry_prune_apply"]
        time.sleep(3)  # the leader goes on leading: nothing applies the plan
        for digest in (e["digest"] for e in story.gone.values()):
            assert _present(world, digest)
        assert not [m for m, _, _ in world.forgejo.requests if m == "DELETE"]


def test_a_bad_prune_command_is_one_line(tmp_path):
    with make_world() as world:
        bot = world.bot()
        bot.start()
        for text, fragment in (
            ("prune keep=lots", "keep must be a whole number"),
            ("prune nowhere.example", "none of"),
        ):
            answer = bot.command(text, user=APPROVER)
            assert answer.status_code == 200 and fragment in answer.json()["text"]
        assert not _plans(world.slack) and CHANNEL


def _present(world, digest: str) -> bool:
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
    status = httpx.get(f"{world.registry.url}/v2/{NAME}/manifests/{digest}", headers={"Accept": accept}).status_code
    return status == 200


def test_one_apply_at_a_time_on_a_registry(tmp_path):
    """Two plans on one registry: while one applies, the other is refused (each would plan around the other's
    deletions); an apply whose replica died long ago no longer holds the registry; another registry is free."""
    from datetime import timedelta

    from sqlalchemy import update

    from bot.incidents.lifecycle import PruneStatus
    from bot.incidents.models import PrunePlan
    from bot.incidents.prune_records import APPLY_HOLDS
    from bot.incidents.store import Store

    store = Store(f"sqlite:///{tmp_path}/bot.db")
    store.migrate()
    hour = timedelta(hours=1)
    first, second, elsewhere = (
        store.create_prune_plan(host, "{}", "command", APPROVER, CHANNEL, hour)
        for host in ("forgejo.example", "forgejo.example", "ghcr.io")
    )
    assert store.ask_prune(first.id, APPROVER, two_people=False).changed
    refused = store.ask_prune(second.id, APPROVER2, two_people=False)
    assert not refused.changed and f"prune plan #{first.id} is being applied on forgejo.example" in refused.reason
    assert store.get_prune_plan(second.id).status == PruneStatus.PENDING  # refused: nothing moved
    assert store.ask_prune(elsewhere.id, APPROVER2, two_people=False).changed
    with store._tx() as session:  # the first apply's replica died hours ago
        long_ago = datetime.now(UTC) - APPLY_HOLDS - hour
        session.execute(update(PrunePlan).where(PrunePlan.id == first.id).values(answered_at=long_ago))
    assert store.ask_prune(second.id, APPROVER2, two_people=False).changed
    store.close()
