"""Runs last (file order): no secret value the suite configured reached a Slack payload or a bot log line."""

from __future__ import annotations

import json

from tests.conftest import OBSERVED_SLACK
from tests.harness import OBSERVED_BOTS, SECRETS


def test_no_secret_reached_a_slack_message_or_a_log_line():
    assert OBSERVED_BOTS, "run the whole suite: this test reads what the others left"
    leaks = []
    for bot in OBSERVED_BOTS:
        text = bot.logs()
        leaks += [f"{bot.log_path}: {secret}" for secret in SECRETS if secret in text]
    payloads = 0
    for slack in OBSERVED_SLACK:
        for call in slack.calls:
            payloads += 1
            body = json.dumps(call.params, default=str)
            leaks += [f"Slack {call.method}: {secret}" for secret in SECRETS if secret in body]
        for entry in slack.ephemeral:
            leaks += [f"ephemeral: {secret}" for secret in SECRETS if secret in json.dumps(entry, default=str)]
    assert payloads > 100
    assert leaks == []
