"""Ack latency: how fast `registry-bot serve` answers Slack's HTTP request, beside the floor of its HTTP stack.

Slack waits 3 s for the HTTP answer to a slash command or a button click (the "ack") and then shows the
user an error; the bot acks at once and does the work in the background. This measures the time from
sending a request to having read the whole answer, on loopback, for:
  - GET /healthz: the floor of the HTTP stack (uvicorn + Starlette) on this machine;
  - signed slash commands: `/registry help`, and `/registry check viktor/api:v1` (an intact image, so each
    check really runs in the background: registry requests, an audit row, a chat.postMessage);
  - signed button clicks: `registry_diagnose` on the root message of a real incident (a pushed and
    broken viktor/app:latest), so each click really claims a delivery, audits and starts or refuses a
    diagnosis in the background.
Each series is measured one at a time (N=300 after a warm-up of 30; per round one request of each series,
in a shuffled order) and then 20 at a time (N=600; per round a burst of 100 requests of each series, 20 in
flight, bursts in a shuffled order), so that machine noise hits all series alike. The bot's background work
competes for the CPU with the acks, as it does in production; the last line says how long it took to drain.
Targets: one at a time, the p50 of commands and clicks within 5 ms of /healthz's; 20 at a time, their p99
within 1.5x of /healthz's p99. Each ack is far below Slack's 3 s either way; the absolute max is printed.

The bot is the real process (tests.harness.BotProcess) wired to the Slack stand-in and a real
docker-registry, all on 127.0.0.1. The measuring client (aiohttp, the cheapest async client here, the same
for every series) runs in its own process: the Slack stand-in serves the bot's Web API calls from threads
of this process, and sharing a GIL with it would add up to 5 ms (the GIL switch interval) to measurements.
Request bodies are built and signed fresh per request (current timestamps), outside the timed span.

Usage: .venv/bin/python benchmarks/ack.py [--seq 300] [--conc 600] [--warmup 30] [--width 20] [--burst 100]
Needs docker-registry (apt-get install docker-registry). Takes 20-40 s on 2 CPUs; Ctrl-C stops everything.
Run it on an otherwise idle machine: the load average it prints first tells whether it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import CHANNEL, SIGNING_SECRET, VIEWER, BotProcess, roots
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.slack_requests import block_action, slash_command

SERIES = ("healthz", "help", "check", "click")
LABEL = {
    "healthz": "GET /healthz",
    "help": "/registry help",
    "check": "/registry check",
    "click": "click diagnose",
}
BROKEN, INTACT = ("viktor/app", "latest"), ("viktor/api", "v1")
SLACK_TIMEOUT_MS = 3000.0
P50_MARGIN_MS = 5.0
P99_FACTOR = 1.5


# --- the measuring client (its own process) ------------------------------------------------------------


def build_request(series: str, cfg: dict[str, Any]) -> tuple[str, str, bytes | None, dict[str, str] | None]:
    if series == "healthz":
        return "GET", "/healthz", None, None
    if series == "help":
        body, headers = slash_command(SIGNING_SECRET, "help", user_id=VIEWER, channel_id=CHANNEL)
    elif series == "check":
        body, headers = slash_command(SIGNING_SECRET, f"check {cfg['check_ref']}", user_id=VIEWER, channel_id=CHANNEL)
    else:
        body, headers = block_action(
            SIGNING_SECRET, "registry_diagnose", user_id=VIEWER, channel_id=CHANNEL, message=cfg["click_message"]
        )
    return "POST", "/slack/events", body, headers


async def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(cfg["seed"])
    width = cfg["width"]
    samples: dict[str, dict[str, list[float]]] = {s: {"seq": [], "conc": []} for s in SERIES}
    errors: dict[str, dict[str, list[str]]] = {s: {"warmup": [], "seq": [], "conc": []} for s in SERIES}
    sent = dict.fromkeys(SERIES, 0)
    connector = aiohttp.TCPConnector(limit=width)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def one(series: str, mode: str, into: list[float] | None) -> None:
            method, path, body, headers = build_request(series, cfg)
            sent[series] += 1
            ok_text = "ok\n" if series == "healthz" else ("Checking" if series == "check" else "")
            start = time.perf_counter()
            try:
                async with session.request(method, cfg["url"] + path, data=body, headers=headers) as response:
                    text = (await response.read()).decode(errors="replace")
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                text, status = repr(exc), 0
            elapsed = (time.perf_counter() - start) * 1000
            if status != 200 or ok_text not in text:
                errors[series][mode].append(f"{status} {text[:120]}")
            if into is not None:
                into.append(elapsed)

        async def run(series: str, mode: str, count: int, in_flight: int, into: list[float] | None) -> None:
            todo = iter(range(count))

            async def worker() -> None:
                for _ in todo:
                    await one(series, mode, into)

            await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))

        # Warm-up: imports, code paths and caches in the bot, then the client's pool opened to `width`.
        for _ in range(cfg["warmup"]):
            for series in rng.sample(SERIES, len(SERIES)):
                await one(series, "warmup", None)
        for series in SERIES:
            await run(series, "warmup", width, width, None)

        gc.collect()
        gc.disable()  # the client's own collections would land in the timed spans
        started = time.monotonic()
        # One at a time: one request of each series per round, in a shuffled order.
        for _ in range(cfg["seq"]):
            for series in rng.sample(SERIES, len(SERIES)):
                await one(series, "seq", samples[series]["seq"])
        seq_seconds = time.monotonic() - started
        gc.collect()
        # 20 at a time: per round, a burst of `burst` requests of each series (shuffled), `width` in flight.
        burst = cfg["burst"]
        started = time.monotonic()
        for _ in range(cfg["conc"] // burst):
            for series in rng.sample(SERIES, len(SERIES)):
                await run(series, "conc", burst, width, samples[series]["conc"])
            gc.collect()
        conc_seconds = time.monotonic() - started
        gc.enable()
    return {
        "samples": samples,
        "errors": errors,
        "sent": sent,
        "seq_seconds": seq_seconds,
        "conc_seconds": conc_seconds,
    }


def client_main() -> int:
    cfg = json.loads(sys.stdin.read())
    try:
        result = asyncio.run(measure(cfg))
    except KeyboardInterrupt:
        return 130
    json.dump(result, sys.stdout)
    return 0


# --- the report ------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def report(result: dict[str, Any], cfg: dict[str, Any]) -> None:
    samples = result["samples"]
    mode_label = {"seq": "1 at a time", "conc": f"{cfg['width']} at a time"}
    print(f"\n{'series':<17}{'mode':<14}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    for mode in ("seq", "conc"):
        for series in SERIES:
            values = samples[series][mode]
            print(
                f"{LABEL[series]:<17}{mode_label[mode]:<14}{len(values):>5}{percentile(values, 50):>9.2f}"
                f"{percentile(values, 99):>9.2f}{max(values):>9.2f}{len(result['errors'][series][mode]):>8}"
            )
    errors = {f"{s} {m}": e for s, by_mode in result["errors"].items() for m, e in by_mode.items() if e}
    print(
        f"(one at a time: {result['seq_seconds']:.1f} s; {cfg['width']} at a time: {result['conc_seconds']:.1f} s; "
        f"requests sent incl. warm-up: {sum(result['sent'].values())}; "
        f"errors: {', '.join(f'{s} {len(e)}' for s, e in errors.items()) or 'none'})"
    )
    for where, lines in errors.items():
        print(f"  {where} errors, first: {lines[0]}")

    floor50 = percentile(samples["healthz"]["seq"], 50)
    print(f"\none at a time: p50 of clicks/commands within {P50_MARGIN_MS:.0f} ms of /healthz (p50 {floor50:.2f} ms)")
    for series in SERIES[1:]:
        p50 = percentile(samples[series]["seq"], 50)
        verdict = "PASS" if p50 - floor50 <= P50_MARGIN_MS else "MISS"
        print(f"  {verdict}  {LABEL[series]:<16} p50 {p50:7.2f} ms  ({p50 - floor50:+.2f} ms)")
    floor99 = percentile(samples["healthz"]["conc"], 99)
    print(
        f"{cfg['width']} at a time: p99 within {P99_FACTOR}x of /healthz's p99 "
        f"(p99 {floor99:.2f} ms, limit {floor99 * P99_FACTOR:.2f} ms)"
    )
    for series in SERIES[1:]:
        p99 = percentile(samples[series]["conc"], 99)
        verdict = "PASS" if p99 <= floor99 * P99_FACTOR else "MISS"
        print(f"  {verdict}  {LABEL[series]:<16} p99 {p99:7.2f} ms  ({p99 / floor99:.2f}x)")
    worst = max(((v, s, m) for s in SERIES for m in ("seq", "conc") for v in samples[s][m]), key=lambda item: item[0])
    print(
        f"\nabsolute max of {sum(len(samples[s][m]) for s in SERIES for m in samples[s])} timed acks: "
        f"{worst[0]:.2f} ms ({LABEL[worst[1]]}, {mode_label[worst[2]]}); Slack gives up at {SLACK_TIMEOUT_MS:.0f} ms."
    )


# --- orchestration -------------------------------------------------------------------------------------


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seq", type=int, default=300, help="timed requests per series, one at a time")
    parser.add_argument("--conc", type=int, default=600, help="timed requests per series, --width at a time")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per series first")
    parser.add_argument("--width", type=int, default=20, help="requests in flight in the concurrent mode")
    parser.add_argument("--burst", type=int, default=100, help="requests per series per concurrent round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main()

    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    client: subprocess.Popen[bytes] | None = None
    workdir = Path(tempfile.mkdtemp(prefix="ack-bench-"))
    stack = contextlib.ExitStack()
    try:
        # Each stop is registered before its start, so that an interrupted start is cleaned up too.
        registry = Registry()
        stack.callback(registry.stop)
        registry.start()
        pusher = ImagePusher(registry.url)
        stack.callback(pusher.close)
        broken = pusher.push_image(*BROKEN)
        registry.break_manifest_link(broken.name, broken.children["linux/amd64"])
        intact = pusher.push_single(*INTACT)
        slack = SlackStandIn(channels={CHANNEL: "alerts"}, users={VIEWER: "viewer"})
        stack.callback(slack.stop)
        slack.start()
        # One simulated user sends every command: lift the per-user limit, which would refuse most of them.
        env = {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution", "CHECKS_PER_USER": "100000"}
        bot = BotProcess(slack, env, workdir=workdir)
        stack.callback(bot.http.close)
        stack.callback(bot.stop)
        bot.start()
        print(
            f"registry, Slack stand-in and bot up in {time.monotonic() - began:.1f} s; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews every figure)"
        )

        # A real incident to click on: its root message, once its first diagnosis has finished.
        assert bot.command(f"check {broken.reference}").status_code == 200
        root = slack.wait_for(
            lambda s: next((m for m in roots(s) if broken.reference in (m.get("text") or "")), None), timeout=20
        )
        slack.wait_for(lambda s: len(s.thread(CHANNEL, root["ts"])) >= 2, timeout=20)
        root = slack.message(CHANNEL, root["ts"])
        verdicts_before = _intact_posts(slack, intact.reference)

        cfg = {
            "url": bot.url,
            "check_ref": intact.reference,
            "click_message": root,
            "seq": args.seq,
            "conc": args.conc - args.conc % args.burst,
            "burst": args.burst,
            "warmup": args.warmup,
            "width": args.width,
            "seed": args.seed,
        }
        print(
            f"measuring: {cfg['warmup']} warm-up + {cfg['seq']} one at a time + {cfg['conc']} "
            f"{cfg['width']} at a time, per series, client aiohttp in its own process…",
            flush=True,
        )
        client = subprocess.Popen([sys.executable, __file__, "--client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = client.communicate(json.dumps(cfg).encode())
        if client.returncode != 0:
            print(f"the measuring client failed with {client.returncode}", file=sys.stderr)
            return 1
        finished = time.monotonic()
        result = json.loads(out)
        report(result, cfg)

        # The work the acks did not wait for: every check posts its verdict to the channel.
        checks = result["sent"]["check"]
        with contextlib.suppress(AssertionError):
            slack.wait_for(lambda s: _intact_posts(s, intact.reference) - verdicts_before >= checks, timeout=20)
        done = _intact_posts(slack, intact.reference) - verdicts_before
        print(
            f"background: {done}/{checks} checks had posted their verdict "
            f"{time.monotonic() - finished:.1f} s after the last ack; bot log errors: {_log_errors(bot)}"
        )
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the bot, the Slack stand-in and the registry", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up half-way
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if client is not None and client.poll() is None:
            client.terminate()
            client.wait(5)
        stack.close()  # the bot, then the Slack stand-in, then the registry
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"total {time.monotonic() - began:.1f} s")
    return 0


def _intact_posts(slack: SlackStandIn, reference: str) -> int:
    return sum(1 for m in slack.messages(CHANNEL) if (m.get("text") or "").startswith(f"INTACT {reference}"))


def _log_errors(bot: BotProcess) -> int:
    return sum(1 for r in bot.log_records() if r.get("level") in ("error", "critical"))


if __name__ == "__main__":
    sys.exit(main())
