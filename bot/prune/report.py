"""`registry-bot prune`: read the arguments, run the prune, print the plan (one line per version, with totals)
or what the apply did and the verdict of every tag left; or one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import json

from bot.config import Settings, load_settings
from bot.errors import UserFacingError
from bot.prune.model import Outcome, Policy
from bot.registry.registries import RegistryConfig
from bot.secrets import SecretResolver

GC_NOTE = (
    "Blobs of deleted manifests stay on disk until the registry's garbage collection runs "
    "(`registry garbage-collect <config>`, never with --delete-untagged, which deletes index children)."
)


def prune_command(args: argparse.Namespace) -> int:
    from bot.prune import run_prune
    from bot.refs import valid_repository_name

    policy = Policy.parse(args.keep, args.keep_tags, args.older_than, args.repository)
    if args.repository is not None and not valid_repository_name(args.repository):
        raise UserFacingError(f"--repository '{args.repository[:100]}' is not a repository name (owner/name).")
    settings = load_settings()
    entry = choose_registry(settings, args.registry)
    if args.apply:
        outcome = asyncio.run(_audited_apply(settings, SecretResolver(settings), entry, policy))
    else:
        outcome = asyncio.run(run_prune(settings, SecretResolver(settings), entry, policy, apply=False))
    if args.json:
        print(json.dumps(outcome.to_json()))
    else:
        print_outcome(outcome, entry)
    return outcome.exit_code


async def _audited_apply(settings: Settings, secrets: SecretResolver, entry: RegistryConfig, policy: Policy) -> Outcome:
    """`--apply` as Slack's does it: every deletion and skip in the bot's audit log (DATABASE_URL), under the
    operating-system user who ran it. A database that cannot take the first record stops it before any delete."""
    import getpass

    from bot.incidents.store import Store
    from bot.prune import Hooks, run_prune
    from bot.prune.model import Deleted, Skipped

    user = f"cli:{getpass.getuser()}"
    store = Store(settings.database)
    try:
        store.migrate()
        store.audit("prune_apply", "started", user=user, detail=f"{entry.host}: {policy.describe()}")

        async def deleted(item: Deleted) -> None:
            what = f"{entry.host} {item.repository}@{item.digest} tags {','.join(item.tags) or '-'}"
            await asyncio.to_thread(store.audit, "prune_delete", item.outcome, user=user, detail=what)

        async def skipped(item: Skipped) -> None:
            what = f"{item.repository}@{item.digest}: {item.reason}"
            await asyncio.to_thread(store.audit, "prune_skip", "kept", user=user, detail=what)

        outcome = await run_prune(
            settings, secrets, entry, policy, apply=True, hooks=Hooks(deleted=deleted, skipped=skipped)
        )
        store.audit(
            "prune_apply",
            f"exit {outcome.exit_code}",
            user=user,
            detail=f"{entry.host}: {len(outcome.deleted)} deleted",
        )
        return outcome
    finally:
        store.close()


def choose_registry(settings: Settings, host: str | None) -> RegistryConfig:
    """The registry `--registry HOST` names, else the first one; UserFacingError (one line) for none."""
    from bot.registry.multiscan import select_registries
    from bot.registry.registries import registry_list

    if not registry_list(settings):
        settings.require("registry_url")
    return select_registries(settings, [host] if host else None)[0]


def print_outcome(outcome: Outcome, entry: RegistryConfig) -> None:
    plan = outcome.plan
    if plan is None:
        print(f"COULD NOT PRUNE {outcome.registry}: {outcome.error}")
        return
    if not outcome.applied:
        print(
            f"PLAN prune of {outcome.registry}: delete {len(plan.deletions)} of "
            f"{len(plan.deletions) + plan.kept_count} versions in {len(plan.repositories)} repositories "
            f"({outcome.policy.describe()})."
        )
        for decision in plan.deletions:
            print(f"  {decision.line()}")
        for repository, count, kept in plan.counts():
            print(f"{repository}: delete {count}, keep {kept}")
        for note in plan.notes:
            print(f"Note: {note}")
        print(f"Dry run: nothing was deleted; run with --apply to delete these {len(plan.deletions)} versions.")
        return
    for deleted in outcome.deleted:
        tags = ",".join(deleted.tags) or "-"
        print(f"{deleted.outcome.upper()} {deleted.repository}  {deleted.digest}  {tags}")
    for skipped in outcome.skipped:
        print(f"KEPT {skipped.repository}  {skipped.digest}  ({skipped.reason})")
    verified = outcome.verified
    kept_tags = verified.intact + len(verified.broken) + len(verified.errors)
    head = "BROKEN" if verified.broken else ("INTACT" if not outcome.error and not verified.errors else "INCOMPLETE")
    print(
        f"{head} after the prune of {outcome.registry}: deleted {len(outcome.deleted)} of {len(plan.deletions)} "
        f"planned versions; {verified.intact} of {kept_tags} kept tags intact, {len(verified.broken)} broken, "
        f"{len(verified.errors)} not checked."
    )
    if outcome.error:
        print(f"  Stopped: {outcome.error}")
    for result in [*verified.broken, *verified.errors]:
        print(f"  {result.verdict()}")
    if entry.kind == "distribution" and outcome.deleted:
        print(GC_NOTE)
