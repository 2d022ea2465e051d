"""Scan speed: `registry-bot scan` beside the runbook's way and a ceiling, on one real registry.

Builds a docker-registry on loopback with REPOS repositories sharing base layers (multi-arch indexes and
single manifests), then prints, in one run:
  - registry-bot scan: the real command, a new process, start-up included;
  - the runbook's way: one curl process per request, one after another, over the same full walk
    (manifests, index children, every config and layer blob, as a shell loop would);
  - the ceiling: a minimal script making the fewest requests (each blob once per repository), async over
    one connection pool, also a new process with its start-up. Like the bot, it reads and hashes each config
    (a GET in place of a HEAD); the ceiling as it was before configs were read (HEADs only) is printed too.

Usage: python benchmarks/scan.py [--repos 320] [--curl-sample 60] [--runs 3]
The curl way is timed on a sample of repositories and scaled to all of them (it takes minutes otherwise);
--curl-sample 0 times it on every repository.

With --scale [--sizes 300,1000,3000] it fills one registry to each size in turn (TAGS_PER_REPO tags a
repository, pushed concurrently) and prints, at each size, the time of `scan` (best of --runs, interleaved
with the ceiling), its ratio to the ceiling, and the peak RSS of `scan`, `scan --jsonl` and `scan --json`;
then the time per tag and the peak-RSS slope per tag (least squares over the sizes), which is what a
registry ten or a hundred times larger would add. The ceiling holds everything it meets; it is the speed
to match, not the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers.registry import ImagePusher, Registry

ACCEPT = (
    "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,"
    "application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.docker.distribution.manifest.v2+json"
)

# The ceiling is written on aiohttp: on this machine httpx's async pool spends ~2 ms of CPU a request,
# aiohttp ~0.25 ms, and a ceiling must be the fastest plain client, not the one the bot happens to use.
CEILING = r"""
import asyncio, hashlib, sys, aiohttp
BASE, ACCEPT, CONFIGS = sys.argv[1], sys.argv[2], sys.argv[3]
async def main():
    async with aiohttp.ClientSession(BASE, connector=aiohttp.TCPConnector(limit=32), auto_decompress=False) as c:
        async def get(path, **kw):
            async with c.get(path, **kw) as r:
                return await r.json(content_type=None)
        async def head(path):
            async with c.head(path) as r:
                return r.status
        async def read(path, digest):
            async with c.get(path) as r:
                assert hashlib.sha256(await r.read()).hexdigest() == digest[7:]
        repos = (await get("/v2/_catalog", params={"n": "1000"}))["repositories"]
        async def repo(name):
            tags = (await get(f"/v2/{name}/tags/list"))["tags"]
            blobs, configs = set(), set()
            async def manifest(ref):
                doc = await get(f"/v2/{name}/manifests/{ref}", headers={"Accept": ACCEPT})
                if "manifests" in doc:
                    await asyncio.gather(*(manifest(m["digest"]) for m in doc["manifests"]))
                elif CONFIGS == "get":
                    blobs.update(d["digest"] for d in doc["layers"])
                    config = doc["config"]["digest"]
                    if config not in configs:  # read as soon as it is known, each once per repository
                        configs.add(config)
                        await read(f"/v2/{name}/blobs/{config}", config)
                else:
                    blobs.update(d["digest"] for d in [doc["config"], *doc["layers"]])
            await asyncio.gather(*(manifest(t) for t in tags))
            await asyncio.gather(*(head(f"/v2/{name}/blobs/{b}") for b in blobs))
        await asyncio.gather(*(repo(n) for n in repos))
asyncio.run(main())
"""


def build(registry: Registry, repos: int) -> None:
    base = (b"debian bookworm base layer " * 4096, b"python 3.11 runtime layer " * 2048)
    pusher_pool = [ImagePusher(registry.url) for _ in range(8)]

    def push(i: int) -> None:
        pusher = pusher_pool[i % len(pusher_pool)]
        name = f"viktor/service-{i:03d}"
        if i % 4 == 3:
            pusher.push_single(name, "v1", base_layers=base, layers=1)
        else:
            pusher.push_image(name, "latest", base_layers=base, layers=1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(push, range(repos)))
    for pusher in pusher_pool:
        pusher.close()


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-s", *args], capture_output=True, check=True).stdout


def curl_walk(base: str, names: list[str]) -> int:
    """The runbook's way: a shell loop of curl processes, one request each, no reuse of anything."""
    requests = 0
    for name in names:
        tags = json.loads(curl(f"{base}/v2/{name}/tags/list"))["tags"]
        requests += 1
        for tag in tags:
            pending = [tag]
            while pending:
                ref = pending.pop()
                doc = json.loads(curl("-H", f"Accept: {ACCEPT}", f"{base}/v2/{name}/manifests/{ref}"))
                requests += 1
                if "manifests" in doc:
                    pending += [m["digest"] for m in doc["manifests"]]
                    continue
                for descriptor in [doc["config"], *doc["layers"]]:
                    curl(
                        "-I", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/v2/{name}/blobs/{descriptor['digest']}"
                    )
                    requests += 1
    return requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repos", type=int, default=320)
    parser.add_argument("--curl-sample", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3, help="runs of each timed process (the best counts)")
    parser.add_argument("--scale", action="store_true", help="time and memory per tag at growing sizes")
    parser.add_argument("--sizes", default="300,1000,3000", help="tag counts for --scale")
    args = parser.parse_args()
    if args.scale:
        scale([int(size) for size in args.sizes.split(",")], args.runs)
        return
    python = str(Path(sys.prefix) / "bin" / "python")
    with Registry() as registry:
        started = time.perf_counter()
        build(registry, args.repos)
        print(f"built {args.repos} repositories in {time.perf_counter() - started:.1f} s")
        env = {**os.environ, "REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution"}

        subprocess.run([python, "-m", "bot", "scan"], env=env, capture_output=True)  # warm the page cache
        started = time.perf_counter()
        scan = subprocess.run([python, "-m", "bot", "scan", "--json"], env=env, capture_output=True, text=True)
        bot_seconds = time.perf_counter() - started
        summary = json.loads(scan.stdout)["summary"]
        assert summary["tags"] == args.repos and summary["broken"] == 0, summary

        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
            script.write(CEILING)
        bot_runs, ceiling_runs, heads_runs = [bot_seconds], [], []

        def timed(command: list[str], runs: list[float]) -> None:
            started = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=True)
            runs.append(time.perf_counter() - started)

        for _ in range(args.runs):  # interleaved, so a noisy moment on the machine hits all three alike
            timed([python, script.name, registry.url, ACCEPT, "get"], ceiling_runs)
            timed([python, script.name, registry.url, ACCEPT, "head"], heads_runs)
            if len(bot_runs) < args.runs:
                timed([python, "-m", "bot", "scan", "--json"], bot_runs)
        bot_seconds, ceiling_seconds, heads_seconds = min(bot_runs), min(ceiling_runs), min(heads_runs)
        os.unlink(script.name)

        catalog = json.loads(curl(f"{registry.url}/v2/_catalog?n=1000"))["repositories"]
        sample = catalog if args.curl_sample <= 0 else catalog[: args.curl_sample]
        started = time.perf_counter()
        requests = curl_walk(registry.url, sample)
        curl_seconds = (time.perf_counter() - started) * len(catalog) / len(sample)
        scaled = "" if len(sample) == len(catalog) else f", timed on {len(sample)} repos and scaled"

    print(f"registry: {args.repos} repositories, {summary['tags']} tags, {summary['objects_checked']} objects")
    print(f"registry-bot scan        {bot_seconds:7.2f} s  (best of {len(bot_runs)}, start-up included)")
    print(f"runbook curl loop        {curl_seconds:7.2f} s  ({requests} curl processes{scaled})")
    print(f"ceiling (fewest, async)  {ceiling_seconds:7.2f} s  (best of {len(ceiling_runs)}, start-up included)")
    print(f"  ... configs HEADed     {heads_seconds:7.2f} s  (the ceiling before configs were read and hashed)")
    print(f"speed-up over curl: {curl_seconds / bot_seconds:.1f}x (target >= 4x)")
    print(f"ratio to ceiling:   {bot_seconds / ceiling_seconds:.2f}x (target <= 1.3x)")


TAGS_PER_REPO = 10


def fill(registry: Registry, start: int, stop: int) -> None:
    """Tags start..stop-1, TAGS_PER_REPO to a repository: three in four multi-arch indexes, sharing base layers,
    each with its own layer and config per platform. Pushed by 12 threads (one by one manages ~240 a minute)."""
    base = (b"debian bookworm base layer " * 4096, b"python 3.11 runtime layer " * 2048)
    pushers = [ImagePusher(registry.url) for _ in range(12)]

    def push(repo: int) -> None:  # one thread a repository: its tags share base layers
        pusher = pushers[repo % len(pushers)]
        for i in range(max(start, repo * TAGS_PER_REPO), min(stop, (repo + 1) * TAGS_PER_REPO)):
            name, tag = f"viktor/app-{repo:04d}", f"v{i % TAGS_PER_REPO}"
            if i % 4 == 3:
                pusher.push_single(name, tag, base_layers=base, layers=1)
            else:
                pusher.push_image(name, tag, base_layers=base, layers=1)

    repos = range(start // TAGS_PER_REPO, (stop + TAGS_PER_REPO - 1) // TAGS_PER_REPO)
    with ThreadPoolExecutor(len(pushers)) as pool:
        list(pool.map(push, repos))
    for pusher in pushers:
        pusher.close()


# The child reports its own peak: ru_maxrss from wait4 would also count the benchmark's own pages, which the
# child shares until it execs (the kernel folds the pre-exec high-water mark into it).
PEAK = (
    "import atexit, runpy, sys\n"
    "path, module = sys.argv[1:3]\n"
    "def peak():\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "    open(path, 'w').write(hwm)\n"
    "atexit.register(peak)\n"
    "sys.argv = [module, *sys.argv[3:]]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def measured(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of `python -m <module> ...` (command[1:3] == ['-m', module])."""
    python, _, module, *args = command
    with tempfile.NamedTemporaryFile() as peak, tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        subprocess.run([python, "-c", PEAK, peak.name, module, *args], env=env, stdout=out, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        out.seek(0)
        return seconds, int(Path(peak.name).read_text() or 0), out.read().decode()


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def slope(points: list[tuple[int, float]]) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def scale(sizes: list[int], runs: int) -> None:
    python = str(Path(sys.prefix) / "bin" / "python")
    modes = {"scan": [], "scan --jsonl": [], "scan --json": []}
    rows = []
    with Registry() as registry, tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(CEILING)
        script.flush()
        env = {**os.environ, "REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution"}
        filled = 0
        for size in sorted(sizes):
            started = time.perf_counter()
            fill(registry, filled, size)
            filled = size
            print(f"filled to {size} tags in {time.perf_counter() - started:.0f} s", flush=True)
            measured([python, "-m", "bot", "scan"], env)  # warm the page cache
            figures: dict[str, tuple[float, int, str]] = {}
            ceiling = float("inf")
            for _ in range(runs):  # interleaved, so a noisy moment on the machine hits every command alike
                for mode in modes:
                    run = measured([python, "-m", "bot", *mode.split()], env)
                    if mode not in figures or run[0] < figures[mode][0]:
                        figures[mode] = run
                ceiling = min(ceiling, timed([python, script.name, registry.url, ACCEPT, "get"], env))
            summary = json.loads(figures["scan --json"][2])["summary"]
            assert summary["tags"] == size and summary["broken"] == 0, summary
            for mode in modes:
                modes[mode].append((size, figures[mode][1]))
            seconds, rss, _ = figures["scan"]
            rows.append((size, seconds, ceiling, rss, figures["scan --jsonl"][1], figures["scan --json"][1]))
            print(
                f"{size:>6} tags  scan {seconds:6.2f} s  {seconds / size * 1000:5.2f} ms/tag  "
                f"ceiling {ceiling:6.2f} s  ratio {seconds / ceiling:4.2f}x  peak RSS {rss / 1024:6.1f} MiB "
                f"(--jsonl {figures['scan --jsonl'][1] / 1024:.1f}, --json {figures['scan --json'][1] / 1024:.1f})",
                flush=True,
            )
    if len(rows) < 2:  # a slope needs two sizes
        return
    times = slope([(size, seconds) for size, seconds, *_ in rows])
    print(f"time per tag (slope): {times * 1000:.2f} ms; ratio to the ceiling at {rows[-1][0]} tags: "
          f"{rows[-1][1] / rows[-1][2]:.2f}x")  # fmt: skip
    for mode, points in modes.items():
        kib = slope([(size, float(rss)) for size, rss in points])
        print(f"peak-RSS slope, {mode:<13} {kib:6.2f} KiB/tag  (100,000 tags: +{kib * 100_000 / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
