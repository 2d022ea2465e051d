"""A retention the registry survives: `registry-bot prune` plans which versions to delete, keeping everything a
kept version needs (index children however deep, referrers and their subjects), and applies the plan
through the registry's own API, then walks every tag that is left."""

from __future__ import annotations

from bot.config import Settings
from bot.errors import UserFacingError
from bot.prune.apply import Hooks, apply_prune
from bot.prune.model import Outcome, Policy
from bot.registry.registries import RegistryConfig
from bot.registry.session import RegistryObserver, open_registry
from bot.secrets import SecretResolver

__all__ = ["Hooks", "Outcome", "Policy", "run_prune"]


async def run_prune(
    settings: Settings,
    secrets: SecretResolver,
    entry: RegistryConfig,
    policy: Policy,
    *,
    apply: bool,
    hooks: Hooks | None = None,
    observer: RegistryObserver | None = None,
) -> Outcome:
    """A dry run (the plan) or an apply, on one registry. Never raises a UserFacingError: it is the outcome's
    `error` (exit 2)."""
    from bot.prune.plan import make_plan
    from bot.prune.sources import open_source

    outcome = Outcome(None, entry.host, policy)
    try:
        async with (
            open_registry(settings, secrets, observer, entry) as client,
            open_source(client, entry, secrets) as source,
        ):
            if apply:
                await apply_prune(client, source, outcome, hooks)
            else:
                outcome.plan = await make_plan(client, source, policy)
    except UserFacingError as exc:
        outcome.error = str(exc)
    return outcome
