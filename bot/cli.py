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

    settings: Settings | None = None
    ref: ImageRef | None = None
    try:
        settings = load_settings()
        try:
            ref = parse_reference(args.reference, settings.all_registry_hosts)
        except BadReference:
            if settings.registry_url:
                raise
            # Without a registry, a host prefix cannot be judged: the missing setting is the thing to fix.
        settings.require("registry_url")
        assert ref is not None
        result = asyncio.run(_check_one(settings, ref, args.deep))
    except UserFacingError as exc:
        result = CheckResult(
            reference=str(ref) if ref else args.reference[:200],
            registry=settings.registry_host if settings else "",
            status="error",
            error=str(exc),
        )
    _clear_progress_line(args.deep)
    if ref is not None and ref.implied_note:
        result.note = ref.implied_note
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.verdict())
        for problem in result.problems:
            print(f"  {problem.summary()}")
    return result.exit_code


async def _check_one(settings: Settings, ref: ImageRef, deep: bool) -> CheckResult:
    from bot.registry.integrity import IntegrityChecker
    from bot.registry.session import open_registry
    from bot.secrets import SecretResolver

    async with open_registry(settings, SecretResolver(settings)) as client:
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
    settings = load_settings()
    settings.require("registry_url")
    if args.tags_per_repo is not None and args.tags_per_repo < 0:
        print("registry-bot: --tags-per-repo must be 0 or more.", file=sys.stderr)
        return EXIT_ERROR
    rate = settings.scan_rate_limit if args.rate is None else args.rate
    if not 0 <= rate < float("inf"):
        print("registry-bot: --rate must be a number of requests per second, 0 (unlimited) or more.", file=sys.stderr)
        return EXIT_ERROR
    collected: list[tuple[str, str]] = []  # --json: (reference, the result's JSON), not the results themselves

    def collect(result: CheckResult) -> None:
        collected.append((result.reference, json.dumps(result.to_json())))

    def line(result: CheckResult) -> None:  # --jsonl: out as soon as it is done
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        sys.stdout.flush()

    on_result = collect if args.json else line if args.jsonl else None
    try:
        scan = asyncio.run(_scan_all(settings, args.tags_per_repo, args.deep, rate, on_result))
    except UserFacingError as exc:
        summary = {"registry": settings.registry_host, "status": "error", "error": str(exc)}
        if args.json:
            print(json.dumps({"results": [], "summary": summary}))
        elif args.jsonl:
            print(json.dumps({"summary": summary}))
        else:
            print(f"COULD NOT SCAN {settings.registry_host}: {exc}")
        return EXIT_ERROR
    if args.json:
        results = ", ".join(text for _, text in sorted(collected))
        print(f'{{"results": [{results}], "summary": {json.dumps(scan.summary())}}}')
    elif args.jsonl:
        print(json.dumps({"summary": scan.summary()}))
    else:
        _print_scan(scan)
    return scan.exit_code


def _print_scan(scan: ScanResult) -> None:
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
        print(result.verdict())
        for problem in result.problems:
            print(f"  {problem.summary()}")


async def _scan_all(
    settings: Settings,
    tags_per_repo: int | None,
    deep: bool,
    rate: float,
    on_result: Callable[[CheckResult], None] | None,
) -> ScanResult:
    from bot.registry.integrity import IntegrityChecker
    from bot.registry.progress import ScanProgress
    from bot.registry.scan import keep_problems, scan_registry
    from bot.registry.session import open_registry
    from bot.secrets import SecretResolver
    from bot.terminal import ProgressLine

    async with open_registry(settings, SecretResolver(settings)) as client:
        client.slots.limit(rate)
        progress = ScanProgress()
        line = ProgressLine.on_terminal(progress)  # stderr only, and only on a terminal
        try:
            return await scan_registry(
                client,
                tags_per_repo=tags_per_repo,
                checker=IntegrityChecker(client, deep=deep),
                on_result=on_result,
                keep=keep_problems,
                progress=progress,
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
        if f.name == "images":
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
    return 0


def _show(value: Any, markdown: bool = True) -> str:
    from bot.config import Secret

    if isinstance(value, Secret):
        text = "(set)" if value else ""
    else:
        text = ",".join(value) if isinstance(value, tuple) else str(value)
    if markdown:
        return f"`{text}`" if text else "—"
    return text
