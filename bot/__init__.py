"""registry-bot: finds, fixes and verifies broken images on an OCI registry, from Slack."""

__version__ = "0.1.0"
