"""The runbook's phases as plain async functions that know nothing about Slack.

Each takes a `PhaseContext` (the clients it needs) and a `Progress` sink, and returns a `PhaseResult`.
Slack is one sink (it edits a thread message), the command line and tests are others.
"""
