"""Deep-check speed and memory: `registry-bot check --deep` beside the runbook's way and a minimal client.

Builds an image with about 1 GiB of random layers in a real docker-registry on loopback, then prints, in one
run (each a new process, start-up included, best of --runs):
  - registry-bot check --deep: the real command, with its peak RSS;
  - the runbook's way: `curl -s <blob> | sha256sum` for each blob, one after another, compared by hand;
  - a minimal streaming client: GET and hash every blob, 4 at a time, on aiohttp (the ceiling), with its RSS.

Usage: python benchmarks/deep.py [--layers 8] [--layer-mib 128] [--runs 3]
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

from tests.deep_images import Pusher, run_with_peak_rss
from tests.peers.registry import Registry

NAME, TAG = "viktor/big-image", "v1"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# The ceiling: the fewest moving parts that still stream and hash every blob, 4 downloads at a time.
MINIMAL = r"""
import asyncio, hashlib, sys, aiohttp
BASE, NAME, TAG, ACCEPT = sys.argv[1:5]
async def main():
    async with aiohttp.ClientSession(BASE, auto_decompress=False) as c:
        async with c.get(f"/v2/{NAME}/manifests/{TAG}", headers={"Accept": ACCEPT}) as r:
            doc = await r.json(content_type=None)
        gate = asyncio.Semaphore(4)
        async def blob(d):
            async with gate, c.get(f"/v2/{NAME}/blobs/{d['digest']}") as r:
                h = hashlib.new(d["digest"].split(":")[0])
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
            assert d["digest"].endswith(h.hexdigest()), d["digest"]
        await asyncio.gather(*(blob(d) for d in [doc["config"], *doc["layers"]]))
asyncio.run(main())
"""

CURL_LOOP = r"""
set -e
for d in $DIGESTS; do
  sum=$(curl -s "$BASE/v2/$NAME/blobs/$d" | sha256sum | cut -d' ' -f1)
  [ "sha256:$sum" = "$d" ] || { echo "MISMATCH $d"; exit 1; }
done
"""


def build(registry: Registry, layers: int, layer_mib: int) -> tuple[list[str], int]:
    """Push `layers` random layers of `layer_mib` MiB (4 at a time) and one image over them."""
    pushers = [Pusher(registry.url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        blobs = list(pool.map(lambda i: pushers[i % 4].random_blob(NAME, layer_mib << 20), range(layers)))
    image = pushers[0].image(NAME, TAG, blobs)
    for pusher in pushers:
        pusher.close()
    digests = [image["config"].digest, *(b.digest for b in blobs)]
    return digests, image["config"].size + sum(b.size for b in blobs)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(seconds, stdout) of one process run to its end."""
    started = time.perf_counter()
    process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} exited {process.returncode}: {process.stdout[-500:]}")
    return seconds, process.stdout


def peak_rss(command: list[str], env: dict[str, str]) -> float:
    """Peak RSS in MiB of one more run, measured from a small parent (tests/deep_images.py says why)."""
    code, _, mib = run_with_peak_rss(command, env)
    if code != 0:
        raise SystemExit(f"{' '.join(command[:4])} exited {code}")
    return mib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--layer-mib", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    python = str(Path(sys.prefix) / "bin" / "python")
    with Registry() as registry:
        started = time.perf_counter()
        digests, total = build(registry, args.layers, args.layer_mib)
        print(f"built {args.layers} layers, {total / (1 << 20):.0f} MiB, in {time.perf_counter() - started:.1f} s")
        env = {**os.environ, "REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution"}
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
            script.write(MINIMAL)
        bot_cmd = [python, "-m", "bot", "check", f"{NAME}:{TAG}", "--deep", "--json"]
        minimal_cmd = [python, script.name, registry.url, NAME, TAG, MANIFEST]
        curl_cmd = ["bash", "-c", CURL_LOOP]
        curl_env = {**env, "BASE": registry.url, "NAME": NAME, "DIGESTS": " ".join(digests)}

        timed(minimal_cmd, env)  # warm the page cache: every tool reads from memory
        bot, minimal, curl = [], [], []
        for _ in range(args.runs):  # interleaved, so a noisy moment hits all three alike
            seconds, out = timed(bot_cmd, env)
            body = json.loads(out)
            assert body["status"] == "intact" and body["bytes_verified"] == total, body
            bot.append(seconds)
            minimal.append(timed(minimal_cmd, env)[0])
            curl.append(timed(curl_cmd, curl_env)[0])
        bot_rss, minimal_rss = peak_rss(bot_cmd, env), peak_rss(minimal_cmd, env)
        os.unlink(script.name)

    def mbs(seconds: float) -> float:
        return total / seconds / 1e6

    best_bot, best_min, best_curl = min(bot), min(minimal), min(curl)
    print(f"image: {len(digests)} blobs, {total / (1 << 30):.2f} GiB ({total / 1e6:.0f} MB)")
    print(
        f"registry-bot check --deep  {best_bot:6.2f} s  {mbs(best_bot):7.0f} MB/s  "
        f"peak RSS {bot_rss:5.0f} MiB  (best of {len(bot)}, start-up included)"
    )
    print(f"runbook curl | sha256sum   {best_curl:6.2f} s  {mbs(best_curl):7.0f} MB/s  (one blob at a time)")
    print(
        f"minimal client (4 at once) {best_min:6.2f} s  {mbs(best_min):7.0f} MB/s  "
        f"peak RSS {minimal_rss:5.0f} MiB  (best of {len(minimal)})"
    )
    print(f"ratio to the minimal client: {best_bot / best_min:.2f}x (target <= 1.25x)")
    print(f"speed-up over curl:          {best_curl / best_bot:.2f}x")
    print(f"peak RSS:                    {bot_rss:.0f} MiB (target <= 200 MiB)")


if __name__ == "__main__":
    main()
