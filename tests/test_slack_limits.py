"""Every message builder fits Slack's limits, whatever it is given: names up to the grammar's limits, any
number of problems, nodes, steps and log lines, and text full of Slack's control characters. Checked by the
bot's own validator and, independently, by the Slack stand-in's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import Settings
from bot.incidents.lifecycle import ApprovalStatus, Phase, State, StepState
from bot.incidents.models import ApprovalRequest, PhaseRun
from bot.registry.model import CheckResult, Problem
from bot.registry.scan import ScanResult
from bot.runbook.base import Link, Step
from bot.slack import blocks, limits
from tests.peers.slack_api import validate_blocks
from tests.world import unsaved_incident

NOW = datetime(2026, 12, 2, 14, 2, tzinfo=UTC)
hostile = st.lists(st.sampled_from(["<!channel>", "<@U1>", "&", "<", ">", "|", "x" * 500]), max_size=40).map("".join)
long_text = st.text(max_size=3000) | hostile
component = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=30)
names = st.lists(component, min_size=2, max_size=8).map("/".join).map(lambda n: n[:255])
tags = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=128).map(lambda t: "v" + t[1:])
nodes = st.lists(st.text(alphabet="abcdefghij0123456789-.", min_size=1, max_size=253), max_size=20)
users = st.sampled_from(["U0APPROVER", "U0VIEWER", "W012ABC", "<!here>", ""])
problems = st.lists(
    st.builds(
        Problem,
        digest=st.just("sha256:" + "ab" * 32),
        kind=st.sampled_from(["manifest", "index", "config", "layer"]),
        reason=st.sampled_from(["missing", "digest_mismatch", "unexpected_status"]),
        http_status=st.sampled_from([404, 500, None]),
        platform=st.sampled_from(["linux/amd64", None]),
        detail=long_text,
    ),
    max_size=200,
)


def fits(text: str, message: list | None) -> None:
    assert limits.problems(text, message) == []
    if message is not None:
        assert validate_blocks(message) == []


def incident(name: str, tag: str, found: list[Problem], state: State, note: str) -> object:
    return unsaved_incident(
        "forgejo.example",
        f"{name}:{tag}",
        "sha256:" + "cd" * 32,
        state=state,
        problems=json.dumps([p.to_json() for p in found]),
        objects_checked=len(found) + 3,
        status_note=note,
        failure_reason=note * 3,
        first_seen=NOW,
        last_seen=NOW,
        seen_count=7,
        verdict="broken",
        clicked=json.dumps({Phase.REBUILD: "U0APPROVER"}),
        root_ts="1.2",
        channel="C1",
    )


def run(phase: Phase, target: str | None, user: str) -> PhaseRun:
    return PhaseRun(
        id=3, incident_id=1, phase=phase, attempt=12, status="running", target=target,
        requested_by=user or None, approved_by="U0OTHER", started_at=NOW, heartbeat_at=NOW,
    )  # fmt: skip


HEALTH = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HEALTH
@given(names, tags, problems, st.sampled_from(list(State)), long_text, st.sampled_from(list(Phase)), users)
def test_the_root_message_fits(name, tag, found, state, note, phase, user):
    fits(*blocks.incident_message(incident(name, tag, found, state, note), run(phase, None, user)))


@HEALTH
@given(
    st.lists(st.tuples(long_text, st.sampled_from(list(StepState)), st.booleans()), max_size=200),
    st.sampled_from(list(Phase)),
    nodes,
    long_text,
)
def test_a_progress_message_fits_and_keeps_its_newest_steps(steps, phase, targets, footer):
    shown = [
        Step(f"s{i}", text, state, Link("https://ci.example/p/1", "#1") if linked else None)
        for i, (text, state, linked) in enumerate(steps)
    ]
    heading = blocks.run_heading(run(phase, targets[0] if targets else None, "U0APPROVER"))
    text, message = blocks.progress_message(heading, shown, blocks.escape(footer[:200]))
    fits(text, message)
    if shown:
        assert blocks.escape(shown[-1].text[:100])[:20] in message[0]["text"]["text"]


@HEALTH
@given(st.booleans(), long_text, st.lists(long_text, max_size=60), st.sampled_from(list(Phase)))
def test_a_runs_end_fits_and_a_log_keeps_its_tail(ok, summary, details, phase):
    text, message = blocks.run_reply(run(phase, None, "U0X"), ok, summary, details, Link("https://ci/1", "#1"))
    fits(text, message)
    if details and details[-1].strip():
        assert blocks.escape(details[-1][:40]).rstrip()[:10] in message[-1]["text"]["text"]


@HEALTH
@given(nodes.filter(bool), st.integers(min_value=1, max_value=10**9))
def test_the_node_offer_fits_with_many_and_long_node_names(targets, incident_id):
    fits(*blocks.node_offer(incident_id, targets))


@HEALTH
@given(st.lists(st.tuples(names, tags, st.sampled_from(list(State))), max_size=400))
def test_registry_status_fits_with_hundreds_of_incidents(rows):
    found = [
        unsaved_incident("r", f"{n}:{t}", None, id=i, state=s, first_seen=NOW, root_ts="1.2", channel="C1")
        for i, (n, t, s) in enumerate(rows)
    ]
    text = blocks.status_list(found, lambda channel, ts: f"https://x.slack.com/archives/{channel}/p{ts}")
    fits(text, None)
    assert len(text) <= blocks.STATUS_TEXT + 200


@HEALTH
@given(names, tags, problems, long_text, st.lists(st.tuples(names, tags), max_size=300), long_text, users)
def test_checks_scans_alerts_and_approvals_fit(name, tag, found, error, broken, summary, user):
    result = CheckResult(f"{name}:{tag}", "forgejo.example", "broken", problems=found, error=error)
    fits(*blocks.check_message(result, user))
    scan = ScanResult("forgejo.example", error=error or None)
    scan.results = [CheckResult(f"{n}:{t}", "r", "broken") for n, t in broken]
    fits(*blocks.scan_summary([scan], user))
    fits(*blocks.scan_summary([scan] * 60, user))  # one section each, as many registries as a message holds
    fits(*blocks.info_alert("RegistryIntegrityProbeStale", name, summary))
    request = ApprovalRequest(
        id=5, incident_id=1, phase=Phase.NODE, target=name, requested_by=user or "U1", requested_at=NOW,
        expires_at=NOW + timedelta(minutes=30), status=ApprovalStatus.PENDING,
    )  # fmt: skip
    fits(*blocks.approval_message(request))
    request.status, request.answered_by = ApprovalStatus.APPROVED, "U2"
    fits(*blocks.approval_answered(request))
    fits(*blocks.run_again(incident(name, tag, [], State.FAILED, ""), run(Phase.NODE, name, user), error))
    fits(blocks.approvers_text(Settings(approvers=("U1",) * 30)), None)


def test_the_gateways_last_line_cuts_what_a_builder_left_over():
    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000}}] * 60
    text, fixed = limits.enforce("y" * 50_000, too_long)
    assert limits.problems(text, fixed) == [] and validate_blocks(fixed) == []


@HEALTH
@given(
    st.lists(st.tuples(names, st.lists(tags, max_size=30), long_text), max_size=400), st.lists(long_text, max_size=20)
)
def test_prune_messages_fit(deletions, notes):
    from bot.prune.model import Decision, Deleted, Outcome, Plan, Policy, RepositoryPlan, Skipped
    from bot.slack import prune_blocks

    plan = Plan("forgejo.example", "distribution", Policy(), notes=notes)
    for i, (name, its_tags, why) in enumerate(deletions):
        digest = f"sha256:{i:064x}"
        decision = Decision(name, digest, tuple(its_tags), why)
        plan.repositories.append(RepositoryPlan(name, {}, {}, {digest: why}, [decision]))
    outcome = Outcome(plan, "forgejo.example", Policy(), applied=True, error=notes[0] if notes else None)
    outcome.deleted = [Deleted(d.repository, d.digest, d.tags, "deleted") for d in plan.deletions]
    outcome.skipped = [Skipped(d.repository, d.digest, d.reason) for d in plan.deletions]
    fits(*prune_blocks.prune_plan(7, outcome, "schedule", None))
    fits(*prune_blocks.prune_plan(7, outcome, "command", "<!here>"))
    fits(*prune_blocks.prune_applied(7, outcome))
    fits(*prune_blocks.prune_approval(7, "forgejo.example", "U0APPROVER", NOW))
    fits(*prune_blocks.prune_answered(7, "U0APPROVER", "applying", "U0APPROVER2"))
    fits(prune_blocks.prune_not_planned("forgejo.example", notes[0] if notes else "", "U0VIEWER"), None)
