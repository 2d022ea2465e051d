"""The whole runbook on real peers (see tests/story.py): every message, every step, the audit trail, and
that the bot connected to no host it was not configured with."""

from __future__ import annotations

import shutil

from tests.harness import APPROVER, VIEWER, buttons, message_text
from tests.story import run_story


def test_the_whole_story_from_alert_to_resolved():
    story = run_story(trace_connections=True)

    root = story.root
    assert "✅ Resolved" in message_text(root)
    assert "*Verdict*\\nintact" in message_text(root)
    assert buttons(root) == []

    expected_thread = [
        (
            "Diagnose (attempt 1)",
            [
                "FAIL: viktor/payslip-ingest:latest index child",
                "Used by 1 workload",
                "ImagePullBackOff) on k8s-node2",
                "linux/amd64",
            ],
        ),
        ("Confirmed broken", []),
        (f"Diagnose (attempt 2) — requested by <@{VIEWER}>", []),
        ("Confirmed broken", []),
        (
            f"Rebuild (attempt 1) — requested by <@{APPROVER}>",
            ["Broken version `viktor/payslip-ingest:latest` deleted", "build-and-push: success", "is intact"],
        ),
        ("Rebuilt and intact", []),
        (
            f"Restart consumers (attempt 1) — requested by <@{APPROVER}>",
            ["deployment/payslip-ingest in payroll`: rolled out", "No pod of the image is failing to pull"],
        ),
        ("rolled out. Verification is scheduled", []),
        ("Verification at", []),
    ]
    texts = [m["text"] for m in story.thread]
    position = 0
    for head, details in expected_thread:
        while position < len(texts) and head not in texts[position]:
            position += 1
        assert position < len(texts), f"missing in order: {head}\n{story.transcript}"
        for detail in details:
            assert detail in texts[position], f"{head} lacks {detail}"
        position += 1
    verify = next(t for t in texts if "Verify (attempt 1)" in t)
    for part in ("Probe metric: 0 failures", "Full check: intact", "Consumers: 1 workload(s) healthy"):
        assert part in verify
    assert any("Resolved: the registry is whole again" in t for t in texts)
    assert any("RegistryManifestIntegrityFailure resolved" in t for t in texts)

    trail = [(row["action"], row["phase"], row["user"]) for row in story.audit]
    for entry in [
        ("open", None, None),
        ("start", "diagnose", None),
        ("start", "diagnose", VIEWER),
        ("request", "rebuild", APPROVER),
        ("start", "rebuild", APPROVER),
        ("step", "rebuild", APPROVER),
        ("finish", "rebuild", APPROVER),
        ("start", "restart", APPROVER),
        ("finish", "restart", APPROVER),
        ("schedule", "verify", None),
        ("start", "verify", None),
        ("finish", "verify", None),
    ]:
        assert entry in trail, entry

    if shutil.which("strace"):
        assert story.connections, "strace recorded no connection at all"
        stray = {c for c in story.connections if c not in story.allowed}
        assert stray == set(), f"the bot connected to hosts it was not configured with: {stray}"
