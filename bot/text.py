"""Text that goes to people: Slack's mrkdwn escapes, shared by the phases and the Slack adapter."""

from __future__ import annotations


def escape(text: str) -> str:
    """Slack's three control characters; anything from outside (tags, log lines) goes through this."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
