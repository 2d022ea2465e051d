"""The `registry-bot` command line: check, scan, serve, audit.

check and scan import only what they need (no Slack, no Kubernetes), so they start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bot.config import Settings, load_settings
from bot.errors import UserFacingError

if TYPE_CHECKING:
    from bot.refs import ImageRef
    from bot.registry.blobs import DeepProgress
    from bot.registry.model import CheckResult
    from bot.registry.registries import RegistryConfig
    from bot.registry.scan import ScanResult

EXIT_INTACT, EXIT_BROKEN, EXIT_ERROR = 0, 1, 2
DEEP_HELP = "also read and hash every layer, as a pull would (DEEP_CONCURRENCY, DEEP_RATE_LIMIT)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 with usage: keep that, one line of reason
        self.print_usage(sys.stderr)
        print(f"registry-bot: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    from bot import __version__

    parser = _Parser(prog="registry-bot", description="Find, fix and verify broken images on an OCI registry.")
    parser.add_argument("--version", action="version", version=f"registry-bot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests and retries to stderr")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = commands.add_parser("check", help="check one image, down to every blob")
    check.add_argument(
        "reference", help="owner/name[:tag] (default :latest) or owner/name@sha256:<digest>, optionally host-prefixed"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--deep", action="store_true", help=DEEP_HELP)

    scan = commands.add_parser("scan", help="check every tag of every repository")
    shape = scan.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print one JSON object")
    shape.add_argument("--jsonl", action="store_true", help="one JSON line per tag as it is done, then the summary")
    scan.add_argument("--deep", action="store_true", help=DEEP_HELP)
    scan.add_argument("--tags-per-repo", type=int, metavar="N", help="only the last N tags of each repository")
    scan.add_argument(
        "--rate", type=float, metavar="N", help="at most N registry requests a second (default: SCAN_RATE_LIMIT)"
    )
    scan.add_argument(
        "--registry", action="append", metavar="HOST", help="only this registry (by host; may be repeated)"
    )

    prune = commands.add_parser("prune", help="plan (and with --apply, make) a retention that keeps what images need")
    prune.add_argument("--registry", metavar="HOST", help="the registry (by host; default: the first one)")
    prune.add_argument("--keep", metavar="N", help="keep the N newest tagged versions of each repository (10)")
    prune.add_argument("--keep-tags", metavar="REGEX", help="keep every tag matching it (^(latest|.*cache.*)$)")
    prune.add_argument("--older-than", metavar="DURATION", help="keep everything newer than this (90s, 30m, 24h, 7d)")
    prune.add_argument("--repository", metavar="NAME", help="only this repository (owner/name)")
    prune.add_argument("--apply", action="store_true", help="delete what the plan says, then check every tag left")
    prune.add_argument("--json", action="store_true", help="print one JSON object")

    commands.add_parser("serve", help="run the Slack bot")

    shown = commands.add_parser("settings", help="print every setting: its value here (secrets masked), or a table")
    shown.add_argument("--markdown", action="store_true", help="the README's configuration table")

    audit = commands.add_parser("audit", help="print the audit trail")
    audit.add_argument("--since", default="24h", help="how far back: 90s, 30m, 24h, 7d (default 24h)")
    audit.add_argument("--incident", type=int, help="only this incident")
    audit.add_argument("--json", action="store_true", help="print a JSON list")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "scan":
            return _scan(args)
        if args.command == "prune":
            from bot.prune.report import prune_command

            return prune_command(args)
        if args.command == "settings":
            return _settings(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "serve":
            from bot.serve import serve

            code: int = serve(load_settings())
            return code
    except UserFacingError as exc:
        print(f"registry-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`scan --jsonl | head`): nothing more to say, to no one
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail
        return EXIT_ERROR
    except Exception as exc:  # the last guard: a person never sees a traceback
        logging.getLogger("bot").debug("unexpected failure", exc_info=True)
        print(
            f"registry-bot: internal error ({type(exc).__name__}); run with -v to log details.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_ERROR


def _check(args: argparse.Namespace) -> int:
    from bot.errors import BadReference
    from bot.refs import parse_reference
    from bot.registry.model import CheckResult
    from bot.registry.registries import all_hosts, for_host, registry_list

    settings: Settings | None = None
    ref: ImageRef | None = None
    entry: RegistryConfig | None = None
    try:
        settings = load_settings()
        try:
            ref = parse_reference(args.reference, all_hosts(settings))
        except BadReference:
            if registry_list(settings):
                raise
            # Without a registry, a host prefix cannot be judged: the missing setting is the thing to fix.
        if not registry_list(settings):
            settings.require("registry_url")
        assert ref is not None
        entry = for_host(settings, ref.host)  # the reference's host names it: parse_reference refused others
        assert entry is not None
        result = asyncio.run(_check_one(settings, entry, ref, args.deep))
    except UserFacingError as exc:
        result = CheckResult(
            reference=str(ref) if ref else args.reference[:200],
            registry=entry.host if entry else "",
            status="error",
            error=str(exc),
        )
    _clear_progress_line(args.deep)
    if ref is not None and ref.implied_note:
        result.note = ref.implied_note
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        _print_verdict(result, entry)
    return result.exit_code


def _print_verdict(result: CheckResult, entry: RegistryConfig | None) -> None:
    from bot.registry.ghcr import retention_hint

    print(result.verdict())
    for problem in result.problems:
        print(f"  {problem.summary()}")
    if entry is not None and (hint := retention_hint(entry.kind, result)):
        print(f"  {hint}")


async def _check_one(settings: Settings, entry: RegistryConfig, ref: ImageRef, deep: bool) -> CheckResult:
    from bot.registry.integrity import IntegrityChecker
    from bot.registry.session import open_registry
    from bot.secrets import SecretResolver

    async with open_registry(settings, SecretResolver(settings), registry=entry) as client:
        return await IntegrityChecker(client, deep=deep, on_progress=_progress_line(deep)).check(ref)


def _progress_line(deep: bool) -> Callable[[DeepProgress], None] | None:
    """On a terminal, a deep check shows how far it got on stderr, one line rewritten in place."""
    if not deep or not sys.stderr.isatty():
        return None
    from bot.registry.model import human_bytes

    def show(progress: DeepProgress) -> None:
        planned = f" of {human_bytes(progress.bytes_planned)}" if progress.bytes_planned else ""
        rate = f"{human_bytes(round(progress.rate))}/s"
        print(f"\rhashed {human_bytes(progress.bytes_verified)}{planned}, {rate}  ", end="", file=sys.stderr)

    return show


def _clear_progress_line(deep: bool) -> None:
    if deep and sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)


def _scan(args: argparse.Namespace) -> int:
    from bot.registry.multiscan import exit_code, json_document, select_registries, summary_of

    settings = load_settings()
    if args.tags_per_repo is not None and args.tags_per_repo < 0:
        print("registry-bot: --tags-per-repo must be 0 or more.", file=sys.stderr)
        return EXIT_ERROR
    if args.rate is not None and not 0 <= args.rate < float("inf"):
        print("registry-bot: --rate must be a number of requests per second, 0 (unlimited) or more.", file=sys.stderr)
        return EXIT_ERROR
    entries = select_registries(settings, args.registry)
    if not entries:
        settings.require("registry_url")
    order = {entry.host: index for index, entry in enumerate(entries)}
    collected: list[tuple[int, str, str]] = []  # --json: (registry, reference, the result's JSON), not results

    def collect(result: CheckResult) -> None:
        collected.append((order.get(result.registry, 0), result.reference, json.dumps(result.to_json())))

    def line(result: CheckResult) -> None:  # --jsonl: out as soon as it is done
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        sys.stdout.flush()

    on_result = collect if args.json else line if args.jsonl else None
    try:
        scans = asyncio.run(_scan_all(settings, entries, args.tags_per_repo, args.deep, args.rate, on_result))
    except UserFacingError as exc:
        hosts = ",".join(entry.host for entry in entries)
        summary = {"registry": hosts, "status": "error", "error": str(exc)}
        if args.json:
            print(json.dumps({"results": [], "summary": summary}))
        elif args.jsonl:
            print(json.dumps({"summary": summary}))
        else:
            print(f"COULD NOT SCAN {hosts}: {exc}")
        return EXIT_ERROR
    if args.json:
        print(json_document(scans, [text for _, _, text in sorted(collected)]))
    elif args.jsonl:
        print(json.dumps(summary_of(scans)))
    else:
        for scan, entry in zip(scans, entries, strict=True):
            _print_scan(scan, entry)
    return exit_code(scans)


def _print_scan(scan: ScanResult, entry: RegistryConfig) -> None:
    from bot.registry.model import human_bytes

    if scan.error:
        print(f"COULD NOT SCAN {scan.registry}: {scan.error}")
        return
    summary = scan.summary()
    hashed = f", {human_bytes(scan.bytes_verified)} hashed" if scan.deep else ""
    print(
        f"{'BROKEN' if summary['broken'] else 'INTACT'} {scan.registry}: {summary['tags']} tags in "
        f"{summary['repositories']} repositories, {summary['broken']} broken, {summary['errors']} not checked "
        f"({summary['objects_checked']} objects{hashed}, {summary['elapsed_ms']} ms, listed by {scan.listed_by})."
    )
    for result in sorted(scan.results, key=lambda r: r.reference):  # only what is not intact was kept
        _print_verdict(result, entry)


async def _scan_all(
    settings: Settings,
    entries: tuple[RegistryConfig, ...],
    tags_per_repo: int | None,
    deep: bool,
    rate: float | None,
    on_result: Callable[[CheckResult], None] | None,
) -> list[ScanResult]:
    from bot.registry.multiscan import configured_rate, scan_registries
    from bot.registry.progress import ScanProgress
    from bot.registry.scan import keep_problems
    from bot.secrets import SecretResolver
    from bot.terminal import ProgressLine

    progress = ScanProgress()
    line = ProgressLine.on_terminal(progress)  # stderr only, and only on a terminal
    try:
        return await scan_registries(
            settings,
            SecretResolver(settings),
            entries,
            tags_per_repo=tags_per_repo,
            deep=deep,
            on_result=on_result,
            keep=keep_problems,
            progress=progress,
            rate_of=configured_rate(settings) if rate is None else lambda entry: rate,
        )
    finally:
        if line is not None:
            await line.close()


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `30m`, `24h`, `7d` (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise UserFacingError(f"'{text[:20]}' is not a duration: use 90s, 30m, 24h or 7d.") from None


def _audit(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from bot.incidents.store import Store

    settings = load_settings()
    since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
    store = Store(settings.database)
    try:
        store.migrate()
        events = store.audit_events(since=since, incident_id=args.incident)
    finally:
        store.close()
    rows = [
        {
            "at": e.at.isoformat(timespec="seconds"),
            "user": e.user,
            "incident": e.incident_id,
            "phase": e.phase,
            "action": e.action,
            "outcome": e.outcome,
            "detail": e.detail,
        }
        for e in events
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"No audit events since {since:%Y-%m-%d %H:%M} UTC.")
    for row in rows:
        incident = f"#{row['incident']}" if row["incident"] is not None else "-"
        print(
            f"{row['at']}  {row['user'] or 'bot':<12} {incident:<5} {row['phase'] or '-':<9} "
            f"{row['action']:<11} {row['outcome']:<15} {row['detail']}"
        )
    return 0


def _settings(args: argparse.Namespace) -> int:
    from bot.config import Settings, setting_fields

    defaults = Settings()
    current = defaults if args.markdown else load_settings()
    if args.markdown:
        print("| Setting | Default | Meaning |")
        print("|---|---|---|")
    for f in setting_fields():
        if f.name in ("images", "registries"):
            continue
        doc = str(f.metadata.get("doc", ""))
        if args.markdown:
            default = _show(getattr(defaults, f.name))
            source = ""
            if f.metadata.get("secret"):
                vault = str(f.metadata.get("vault", ""))
                source = (
                    " Secret: environment, or Vault"
                    + (f" (default `{vault}`)" if vault else f" via `{f.name.upper()}_VAULT`")
                    + "."
                )
            print(f"| `{f.name.upper()}` | {default} | {doc}{source} |")
        else:
            print(f"{f.name.upper()}={_show(getattr(current, f.name), markdown=False)}")
    _show_registries(current, args.markdown)
    return 0


def _show_registries(current: Settings, markdown: bool) -> None:
    """The registries: each entry's keys (markdown: the table of keys an entry of `registries:` may have)."""
    from bot.registry.registries import KEYS, registry_list

    if markdown:
        print()
        print("| `registries:` key | Meaning |")
        print("|---|---|")
        for key, meaning in KEYS.items():
            print(f"| `{key}` | {meaning}. |")
        return
    entries = registry_list(current)
    source = "the config file's registries" if current.registries else "REGISTRY_URL and its friends"
    print(f"REGISTRIES={len(entries)} ({source}; the first is the default for references without a host)")
    for index, entry in enumerate(entries, start=1):
        print(f"REGISTRIES[{index}]={entry.describe()}")


def _show(value: Any, markdown: bool = True) -> str:
    from bot.config import Secret

    if isinstance(value, Secret):
        text = "(set)" if value else ""
    else:
        text = ",".join(value) if isinstance(value, tuple) else str(value)
    if markdown:
        return f"`{text}`" if text else "—"
    return text
