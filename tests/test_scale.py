"""Scale (issue 17): a scan streams its results in bounded memory, and `scan --jsonl` shows them as they come.

Memory is tested by its structure, never by time or by a byte count: what a scan holds while it runs must
not grow with the number of repositories or tags (benchmarks/scan.py --scale measures the bytes)."""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import itertools
import json
import math
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bot.config import Settings
from bot.engine.scans import Scans
from bot.registry import scan as scan_module
from bot.registry.client import RegistryClient
from bot.registry.integrity import IntegrityChecker
from bot.registry.model import CheckResult
from bot.registry.pace import MIN_SPREAD_RATE, TokenBucket, spread_rate
from bot.registry.scan import ScanResult, keep_problems, scan_registry
from bot.secrets import SecretResolver
from tests.conftest import run_cli
from tests.harness import CHANNEL, VIEWER, BotProcess, roots
from tests.peers.forgejo import ForgejoStandIn
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.test_deep import conforms
from tests.test_scan import PULL

REPOS, TAGS = 40, 3


@pytest.fixture(scope="module")
def many() -> Iterator[Registry]:
    """REPOS repositories of TAGS tags each, sharing a base layer; one tag broken."""
    with Registry(access_log=True) as registry:
        base = (b"shared base " * 200,)

        def push(repo: int) -> None:
            pusher = ImagePusher(registry.url)
            for tag in range(TAGS):
                pusher.push_single(f"viktor/svc-{repo:02d}", f"v{tag}", base_layers=base, layers=1)
            pusher.close()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(push, range(REPOS)))
        pusher = ImagePusher(registry.url)
        broken = pusher.push_single("viktor/svc-07", "v1", base_layers=base, layers=1)
        pusher.close()
        registry.break_layer_link("viktor/svc-07", broken.layers["linux/amd64"][-1])
        yield registry


def test_memory_stays_flat_across_repositories(many, monkeypatch):
    """Walks in flight are bounded by TAGS_IN_FLIGHT, not by the tags; a repository's shared objects are
    dropped when its last tag is done; only what incidents need is kept."""
    monkeypatch.setattr(scan_module, "TAGS_IN_FLIGHT", 4)
    seen: list[tuple[int, int]] = []  # at each result: repositories whose shared objects are held, tasks

    async def scan() -> tuple[ScanResult, IntegrityChecker]:
        async with RegistryClient(Settings(registry_url=many.url, registry_kind="distribution")) as client:
            checker = IntegrityChecker(client)

            def watch(_: CheckResult) -> None:
                seen.append((len(checker._cache), len(asyncio.all_tasks())))

            return await scan_registry(client, checker=checker, on_result=watch, keep=keep_problems), checker

    scanned, checker = asyncio.run(scan())
    assert scanned.summary()["tags"] == REPOS * TAGS and scanned.summary()["broken"] == 1
    assert [r.reference for r in scanned.results] == ["viktor/svc-07:v1"], "intact tags were kept"
    assert len(seen) == REPOS * TAGS
    open_repositories = max(open_ for open_, _ in seen)
    tasks = max(running for _, running in seen)
    # Four walkers over repositories of three tags: at most a walker's worth of repositories is open at once
    # (each walker's current one, plus the one whose tags the walkers are finishing).
    assert open_repositories <= 4 + 1, open_repositories
    # The main task, four listers, four walkers, and the shared walks of at most four tags in flight (a
    # manifest, its config and two layers each): never one task per tag or per repository.
    assert tasks <= 1 + scan_module.LISTINGS_IN_FLIGHT + 4 + 4 * 4, tasks
    assert checker._cache == {}, "a repository's shared objects outlived the scan"
    assert checker.blobs.layer_sizes == {}, "a repository's layer sizes outlived the scan"


def scan_process(url: str, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
    """`registry-bot scan ...` as a person runs it, its output read as it comes."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "VAULT_", "SLACK_"))}
    settings = {"REGISTRY_URL": url, "REGISTRY_KIND": "distribution", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "bot", "scan", *args], env={**base, **settings}, text=True, **popen)


def test_jsonl_lines_arrive_while_the_scan_runs_and_every_tag_has_one(many):
    with ForgejoStandIn(many) as front:
        # One repository answers slowly: every other tag's line must be out long before the scan ends.
        front.tamper("GET", r"^/v2/viktor/svc-39/manifests/", delay=3.0)
        scan = scan_process(front.url, "--jsonl", env=PULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert scan.stdout is not None
        lines = [(time.monotonic(), line) for line in scan.stdout]
        assert scan.wait(60) == 1, scan.stderr.read() if scan.stderr else ""
    assert scan.stderr is not None and scan.stderr.read() == "", "progress went somewhere it must not"
    objects = [json.loads(line) for _, line in lines]
    *results, end = objects
    for result in results:
        conforms(result, "check")
    conforms(end, "scan_end")
    references = [r["reference"] for r in results]
    assert len(references) == len(set(references)) == REPOS * TAGS
    assert set(references) == {f"viktor/svc-{repo:02d}:v{tag}" for repo in range(REPOS) for tag in range(TAGS)}
    assert end["summary"]["tags"] == REPOS * TAGS and end["summary"]["broken"] == 1
    finished = lines[-1][0]
    timed = zip(lines, results, strict=False)  # the last line is the summary
    early = [at for (at, _), result in timed if not result["reference"].startswith("viktor/svc-39:")]
    assert finished - max(early) >= 2.0, "the lines waited for the end of the scan"


def test_json_keeps_its_one_document_and_jsonl_cannot_go_with_it(many):
    run = run_cli("scan", "--json", env={"REGISTRY_URL": many.url, "REGISTRY_KIND": "distribution"})
    conforms(run.json(), "scan")
    references = [r["reference"] for r in run.json()["results"]]
    assert references == sorted(references) and len(references) == REPOS * TAGS
    both = run_cli("scan", "--json", "--jsonl", env={"REGISTRY_URL": many.url})
    assert both.code == 2 and both.stdout == ""
    assert "not allowed with" in both.stderr.splitlines()[-1]


def test_the_rate_limit_holds_on_the_real_registry(many):
    """--rate 40: the registry's own access log, counted by the second, shows 40 requests a second, never the
    ~1,000 a second this registry answers unpaced. The bucket holds one second of tokens, so any k seconds
    see at most 40 x (k + 1): a minute is held within 2% of the rate."""
    rate = 40
    started = math.ceil(time.time())  # the log counts whole seconds: begin on a fresh one, after the last test's
    time.sleep(started - time.time())
    env = {"REGISTRY_URL": many.url, "REGISTRY_KIND": "distribution"}
    run = run_cli("scan", "--json", "--rate", str(rate), env=env)
    assert run.code == 1 and run.json()["summary"]["tags"] == REPOS * TAGS
    seconds = [at for at, _, _ in many.requests_logged() if at >= started]
    first, last = int(min(seconds)), int(max(seconds))
    per_second = [seconds.count(float(second)) for second in range(first, last + 1)]
    assert last - first >= 8, per_second  # ~440 requests: about 11 s at 40 a second
    for width in range(1, len(per_second) + 1):
        for start in range(len(per_second) - width + 1):
            assert sum(per_second[start : start + width]) <= rate * (width + 1) + 1, (width, per_second)
    steady = per_second[2:-1]  # after the first seconds (the bucket's burst), before the last (partial) one
    assert abs(sum(steady) / len(steady) - rate) <= rate * 0.1, per_second


def test_a_bad_rate_is_refused_in_one_line(many):
    for bad in ("-1", "nan", "inf"):
        run = run_cli("scan", "--rate", bad, env={"REGISTRY_URL": many.url})
        assert run.code == 2 and run.stdout == ""
        assert run.stderr.splitlines() == [
            "registry-bot: --rate must be a number of requests per second, 0 (unlimited) or more."
        ]
    run = run_cli("scan", env={"REGISTRY_URL": many.url, "SCAN_RATE_LIMIT": "-5"})
    assert run.code == 2 and "SCAN_RATE_LIMIT must be 0" in run.stderr and "Traceback" not in run.stderr


def test_the_probe_is_spread_by_the_last_scans_requests_and_metrics_show_the_load(many):
    """SCAN_INTERVAL 6: the first probe runs unpaced; the next ones are held to the first one's requests over
    three seconds (half the interval), and /metrics says what each scan sent, took and was held to. The bucket
    starts with one second of tokens, so a spread scan lasts at least two seconds; unpaced it takes under one."""
    with SlackStandIn(channels={CHANNEL: "alerts"}) as slack:
        env = {"REGISTRY_URL": many.url, "REGISTRY_KIND": "distribution", "SCAN_INTERVAL": "6",
               "LEADER_ELECTION": "database", "REGISTRY_INSTANCE": "registry.example"}  # fmt: skip
        with BotProcess(slack, env) as bot:
            labels = '{instance="registry.example",kind="scan"}'

            def figures() -> dict[str, float] | None:
                found = {}
                for line in bot.http.get("/metrics").text.splitlines():
                    for name in ("requests", "seconds", "rate_limit"):
                        if line.startswith(f"registry_bot_scan_{name}{labels} "):
                            found[name] = float(line.split()[-1])
                return found if found.get("rate_limit") else None

            shown = slack.wait_for(lambda _: figures(), timeout=60)
    requests = shown["requests"]
    assert requests > REPOS * TAGS * 3, shown  # a manifest, a config and a layer a tag at least
    assert shown["rate_limit"] == max(requests / 3.0, 10.0), shown  # the same registry: the same count
    assert shown["seconds"] >= 1.8, shown  # spread: one second's burst, then two seconds at the rate


def test_the_bucket_holds_any_minute_within_two_percent_and_the_spread_has_a_floor():
    for rate in (0.5, 3.0, 40.0, 900.0):
        bucket, sent, now = TokenBucket(rate), [], 0.0
        while now < 180:  # demand far above the rate: every request goes as soon as the bucket lets it
            now += bucket.reserve(now)
            sent.append(now)
        for start in range(0, 120, 7):
            in_minute = bisect.bisect_left(sent, start + 60) - bisect.bisect_left(sent, start)
            assert in_minute <= rate * 60 + max(rate, 1.0), (rate, start, in_minute)
            assert in_minute >= rate * 60 - 1, (rate, start, in_minute)
    assert TokenBucket(0).reserve(5.0) == 0.0
    assert spread_rate(None, 900) == 0.0 and spread_rate(5000, 0) == 0.0
    assert spread_rate(45_000, 900) == 100.0 and spread_rate(50, 900) == MIN_SPREAD_RATE


@pytest.mark.parametrize("size", [(40, 132), None], ids=["sized terminal", "bare pty"])
def test_progress_goes_to_a_terminals_stderr_only(many, size):
    """stderr a pty (a person at a terminal), stdout a pipe: the line is drawn on the terminal with the tags,
    the broken, the requests per second and the ETA; stdout holds only the JSON lines."""
    controller, terminal = pty.openpty()
    if size is not None:  # as a terminal emulator or tmux sets it
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    scan = scan_process(many.url, "--jsonl", "--rate", "100", stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        drawn += chunk
    assert scan.stdout is not None
    out = scan.stdout.read()
    assert scan.wait(60) == 1
    os.close(controller)
    lines = out.splitlines()
    assert len(lines) == REPOS * TAGS + 1 and all(json.loads(line) for line in lines)
    assert "\r" not in out and "requests/s" not in out
    shown = drawn.decode(errors="replace")
    assert f"/{REPOS * TAGS} tags" in shown and "1 broken" in shown and "requests/s" in shown, shown[-500:]
    assert "<00:0" in shown, "no ETA was drawn"


def test_slack_scan_messages_edit_themselves_with_progress_and_end_with_the_summary(many):
    """`/registry scan` and the leader's deep scan, held to 60 requests a second (about 8 s each): each posts
    one message, edits it with the figures at most every 5 s, and ends it with its summary."""
    with SlackStandIn(channels={CHANNEL: "alerts"}) as slack:
        env = {"REGISTRY_URL": many.url, "REGISTRY_KIND": "distribution", "SCAN_RATE_LIMIT": "60",
               "DEEP_SCAN_INTERVAL": "3", "LEADER_ELECTION": "database"}  # fmt: skip
        with BotProcess(slack, env) as bot:
            assert "Scanning" in bot.command("scan", user=VIEWER).json()["text"]
            scanned = slack.wait_for(lambda s: _ended(s, "🔎 Scanning", "🔴 Scan of"), timeout=60)
            deep = slack.wait_for(lambda s: _ended(s, "🔎 Deep scan of", "🔴 Deep scan of"), timeout=60)
        updates = slack.calls_to("chat.update")
    for message, ending in ((scanned, "🔴 Scan of"), (deep, "🔴 Deep scan of")):
        shown = [edit["text"] for edit in message["edits"]]
        progress = [text for text in shown if f"of {REPOS * TAGS} tags" in text]
        assert progress, shown
        assert all("broken" in text and "requests/s" in text and "ETA" in text for text in progress), progress
        assert message["text"].startswith(ending), message["text"]
        assert f"{REPOS * TAGS} tags in {REPOS} repositories, 1 broken" in message["text"]
        edited = sorted(c.time for c in updates if c.params.get("ts") == message["ts"])
        gaps = [later - earlier for earlier, later in itertools.pairwise(edited[:-1])]
        assert all(gap >= 4.5 for gap in gaps), gaps  # every 5 s; only the summary may come sooner
    assert "viktor/svc-07:v1" in scanned["text"]  # the deep scan's broken tags get their own incidents
    assert "hashed" in deep["text"] and "viktor/svc-07:v1" not in deep["text"]


def _ended(slack: SlackStandIn, heading: str, summary: str) -> dict[str, Any] | None:
    """The root message that began with `heading` once it ends with `summary`."""
    for message in roots(slack):
        first = message["edits"][0]["text"] if message["edits"] else message["text"]
        if first.startswith(heading) and message["text"].startswith(summary):
            return message
    return None


def test_a_scan_someone_waits_for_lifts_the_spread_of_the_probe_it_joins(many):
    """The second probe is spread (10 requests a second here: ~45 s); `/registry scan` joining it after a
    second makes it run unpaced, and both get the same result within seconds."""
    settings = Settings(registry_url=many.url, registry_kind="distribution", scan_interval=200)
    scans = Scans(settings, SecretResolver(settings))

    async def probe_then_join() -> tuple[ScanResult, ScanResult, ScanResult, float]:
        (first,) = await scans.scan(spread=True)  # nothing to go by yet: unpaced
        probe = asyncio.ensure_future(scans.scan(spread=True))
        await asyncio.sleep(1.0)
        started = time.monotonic()
        (joined,) = await scans.scan()
        (probed,) = await probe
        return first, probed, joined, time.monotonic() - started

    first, probe, joined, waited = asyncio.run(probe_then_join())
    assert first.rate_limit == 0 and probe.rate_limit == MIN_SPREAD_RATE
    assert joined is probe and probe.tally.tags == REPOS * TAGS
    assert waited < 20, f"the joined scan kept the probe's pace ({waited:.0f} s)"


def test_a_reader_that_goes_away_ends_the_scan_quietly(many):
    """`scan --jsonl | head -1`: the first line, then an exit without a word (no traceback, no 'internal error')."""
    scan = scan_process(many.url, "--jsonl", "--rate", "200", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert scan.stdout is not None and scan.stderr is not None
    first = json.loads(scan.stdout.readline())
    scan.stdout.close()
    assert scan.wait(60) == 2
    assert first["reference"].startswith("viktor/svc-") and scan.stderr.read() == ""


def test_a_catalog_that_lists_a_repository_twice_walks_it_twice_and_forgets_it_once(many):
    with ForgejoStandIn(many) as front:
        twice = json.dumps({"repositories": ["viktor/svc-01", "viktor/svc-01", "viktor/svc-02"]}).encode()
        front.tamper("GET", r"^/v2/_catalog", status=200, body=twice)
        run = run_cli("scan", "--json", env={"REGISTRY_URL": front.url, "REGISTRY_KIND": "distribution", **PULL})
    assert run.code == 0, run.stderr
    references = [r["reference"] for r in run.json()["results"]]
    assert len(references) == 3 * TAGS and len(set(references)) == 2 * TAGS
