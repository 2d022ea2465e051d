"""`make image-test`: run the built image as an operator would, every step asserted; the last line is its size.

Run by image/test.sh after `make image` (the private podman store of image/env.sh, or a Docker engine). Peers on
loopback only, the test suite's own: Debian's docker-registry (tests/peers/registry.py) and the Slack Web API
stand-in (tests/peers/slack_api.py). Containers share the host's network, so they reach both on 127.0.0.1.

1. `docker run --entrypoint registry-bot <image> --help`. Then one container of the image (entrypoint `sleep`)
   in which the next steps `exec` their commands: with the vfs driver every new container is a full copy of the
   image (10-20 s here), so one container serves them all.
2. Every module the bot imports, at the top or lazily, imports in the image; the ten largest distributions.
3. `registry-bot check --json` against the registry: intact for an image pushed by skopeo from a umoci layout,
   and broken (exit 1, that layer named) once one of its layers is removed.
4. The image pushed into the registry and checked by the bot itself: intact, every layer counted.
5. `serve` (the image's entrypoint) with a read-only root, a tmpfs /tmp and SQLite there, Slack pointed at the
   stand-in: /healthz ok, /readyz ready and leader, PID 1 running as 10001, writing to / refused, a slash
   command answered in the channel, no traceback or secret in its log, SIGTERM exits 0 within 10 s.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import ALERT_TOKEN, BOT_TOKEN, CHANNEL, SIGNING_SECRET, VIEWER  # noqa: E402
from tests.peers.registry import OCI_MANIFEST, Registry, free_port  # noqa: E402
from tests.peers.slack_api import SlackStandIn  # noqa: E402
from tests.peers.slack_requests import slash_command  # noqa: E402

ENGINE = os.environ.get("IMAGE_ENGINE", "podman")
TAG = os.environ.get("IMAGE_TAG", "registry-bot:dev")
UID = 10001
ACCEPT = ", ".join((OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"))
# Loaded by name at run time, so no import statement in bot/ names them.
# (psycopg imports only with its binary build here: the image has no libpq of its own.)
RUNTIME_MODULES = ("sqlalchemy.dialects.sqlite.pysqlite", "sqlalchemy.dialects.postgresql.psycopg", "psycopg")


class Failed(Exception):
    pass


def run(*args: str, timeout: float = 120, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode not in ok:
        raise Failed(f"`{' '.join(args)[:200]}` exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    return done


def engine(*args: str, timeout: float = 120, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    return run(ENGINE, *args, timeout=timeout, ok=ok)


class Operator:
    """One container of the image, idle (`sleep`), on the host's network; `run` execs a command in it."""

    def __init__(self) -> None:
        self.name = f"registry-bot-image-test-cli-{os.getpid()}"

    def __enter__(self) -> Operator:
        engine("run", "--detach", f"--name={self.name}", "--network=host", "--entrypoint=sleep", TAG, "infinity")
        return self

    def __exit__(self, *exc: object) -> None:
        remove(self.name)

    def run(self, *args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> Any:
        options = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return engine("exec", *options, self.name, *args, ok=ok)


def remove(name: str) -> None:
    engine("kill", name, ok=(0, 1, 125))  # SIGKILL: `sleep` as PID 1 ignores SIGTERM
    engine("rm", "--force", name, ok=(0, 1, 125))


def expect(condition: object, message: object) -> None:
    if not condition:
        raise Failed(str(message))


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    except (Failed, AssertionError, OSError, subprocess.SubprocessError, httpx.HTTPError, ValueError) as exc:
        print(f"FAIL {what}: {exc}", flush=True)
        raise SystemExit(1) from None
    print(f"ok   {what} ({time.monotonic() - start:.1f} s)", flush=True)


def skopeo_copy(source: str, registry: Registry, name: str) -> None:
    run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", source, f"docker://{registry.host}/{name}", timeout=300)


def manifest(registry: Registry, name: str, reference: str) -> dict[str, Any]:
    response = httpx.get(f"{registry.url}/v2/{name}/manifests/{reference}", headers={"Accept": ACCEPT}, timeout=10)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def check(cli: Operator, registry: Registry, reference: str, code: int) -> dict[str, Any]:
    done = cli.run("registry-bot", "check", reference, "--json", env={"REGISTRY_URL": registry.url}, ok=(code,))
    body: dict[str, Any] = json.loads(done.stdout)
    return body


# --- 1. the command line, the imports, the sizes ---------------------------------------------------------------


def bot_imports() -> list[str]:
    """Every module bot/ imports (at the top or inside functions), outside `if TYPE_CHECKING:`; and bot's own."""
    names: set[str] = set()

    def visit(node: ast.AST, package: str) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement, package)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(
                f"{base}.{alias.name}" for alias in node.names
            )  # a submodule, or an attribute (told apart there)
        for child in ast.iter_child_nodes(node):
            visit(child, package)

    for path in (ROOT / "bot").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")
        visit(ast.parse(path.read_text(), str(path)), package)
    own = {m.name for m in pkgutil.walk_packages([str(ROOT / "bot")], "bot.")}
    own -= {"bot.__main__", "bot.migrations.env"}  # a program, and alembic's script (runs only under alembic)
    return sorted((names | own | {"bot", *RUNTIME_MODULES}) - {"", "__future__"})


# Runs inside the image: import each module named in argv[1] (a JSON list). A name that is an attribute of
# its parent rather than a submodule is fine; anything else that does not import is reported.
IMPORT_ALL = """
import importlib, json, sys
failed = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        parent = name.rpartition(".")[0]
        if not (exc.name == name and parent and hasattr(importlib.import_module(parent), name.rpartition(".")[2])):
            failed.append(f"{name}: {exc}")
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(json.dumps(failed))
"""

# Runs inside the image: the ten largest installed distributions, by the size of their files on disk.
LARGEST = """
import json, os
from importlib import metadata
sizes = {}
for dist in metadata.distributions():
    total = 0
    for file in dist.files or []:
        try:
            total += os.path.getsize(file.locate())
        except OSError:
            pass  # left out of the image on purpose (tests, stubs)
    sizes[f"{dist.metadata['Name']} {dist.version}"] = total
print(json.dumps(sorted(sizes.items(), key=lambda item: -item[1])))
"""


def help_with_entrypoint() -> None:
    with step("registry-bot --help (--entrypoint registry-bot)"):
        done = engine("run", "--rm", "--entrypoint=registry-bot", TAG, "--help")
        for command in ("check", "scan", "prune", "serve", "audit", "settings"):
            expect(command in done.stdout, f"--help does not list {command}:\n{done.stdout}")


def imports_and_sizes(cli: Operator) -> None:
    modules = bot_imports()
    with step(f"every module bot/ imports ({len(modules)}) imports in the image"):
        failed = json.loads(cli.run("python", "-c", IMPORT_ALL, json.dumps(modules)).stdout)
        expect(failed == [], "; ".join(failed))
    with step("the ten largest installed distributions"):
        largest = json.loads(cli.run("python", "-c", LARGEST).stdout)
        expect(any(name.startswith("registry-bot ") for name, _ in largest), "registry-bot is not installed")
        for name, size in largest[:10]:
            print(f"       {size / 1e6:6.1f} MB  {name}")
        print(f"       {sum(size for _, size in largest) / 1e6:6.1f} MB  all {len(largest)} distributions")


# --- 2. check against the real registry ------------------------------------------------------------------------


def umoci_image(registry: Registry, tmp: Path) -> None:
    layout = tmp / "layout"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:app")
    for index in range(3):
        content = tmp / f"file{index}"
        content.write_text(f"layer {index} of the image-test image\n" * 100)
        run("umoci", "insert", "--image", f"{layout}:app", str(content), f"/data/file{index}")
    skopeo_copy(f"oci:{layout}:app", registry, "demo/app:1")


def check_a_pushed_image(cli: Operator, registry: Registry, tmp: Path) -> None:
    with step("check: intact, for an image pushed by skopeo from a umoci layout"):
        umoci_image(registry, tmp)
        layers = [layer["digest"] for layer in manifest(registry, "demo/app", "1")["layers"]]
        expect(len(layers) == 3, f"expected 3 layers, the registry has {len(layers)}")
        body = check(cli, registry, "demo/app:1", 0)
        expect(body["status"] == "intact" and body["problems"] == [], body)
        expect(body["objects_checked"] == 2 + len(layers), f"manifest + config + 3 layers, got {body}")
    with step("check: broken (exit 1) after one of its layers is removed"):
        registry.break_blob_file(layers[1])
        body = check(cli, registry, "demo/app:1", 1)
        problems = [(p["kind"], p["digest"], p["reason"]) for p in body["problems"]]
        expect(body["status"] == "broken" and problems == [("layer", layers[1], "missing")], body)


def check_itself(cli: Operator, registry: Registry) -> dict[str, Any]:
    with step("the image pushed into the registry and checked by the bot itself: intact, every layer"):
        source = f"docker-daemon:{TAG}" if ENGINE == "docker" else f"containers-storage:localhost/{TAG}"
        skopeo_copy(source, registry, "viktor/registry-bot:dev")
        document = manifest(registry, "viktor/registry-bot", "dev")
        body = check(cli, registry, "viktor/registry-bot:dev", 0)
        expect(body["status"] == "intact" and body["problems"] == [], body)
        expect(body["objects_checked"] == 2 + len(document["layers"]), f"not every layer was checked: {body}")
    return document


# --- 4. serve ----------------------------------------------------------------------------------------------


def serve_env(slack: SlackStandIn, registry: Registry, port: int) -> dict[str, str]:
    return {
        "REGISTRY_URL": registry.url,
        "REGISTRY_KIND": "distribution",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.base_url,
        "SLACK_CHANNEL": CHANNEL,
        "ALERTMANAGER_TOKEN": ALERT_TOKEN,
        "BOT_HOST": "127.0.0.1",
        "BOT_PORT": str(port),
        "DATABASE_URL": "sqlite:////tmp/registry-bot.db",
        "KUBE_ENABLED": "false",
        "SCAN_INTERVAL": "0",
        "LOG_FORMAT": "json",
    }


def wait_healthy(http: httpx.Client, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = engine("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        expect(state == "running", f"the container is {state}:\n{engine('logs', name).stderr[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if http.get("/healthz").status_code == 200:
                return
        time.sleep(0.2)
    raise Failed(f"not healthy within 60 s:\n{engine('logs', name).stderr[-3000:]}")


def serve(registry: Registry) -> None:
    name = f"registry-bot-image-test-{os.getpid()}"
    port = free_port()
    read_only = ["--read-only", "--tmpfs=/tmp"] + (["--read-only-tmpfs=false"] if ENGINE == "podman" else [])
    with (
        SlackStandIn(channels={CHANNEL: "alerts", "C0OTHER": "other"}) as slack,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        env = [f"--env={k}={v}" for k, v in serve_env(slack, registry, port).items()]
        try:
            with step("serve starts with a read-only root, a tmpfs /tmp and SQLite in it: /healthz ok"):
                engine("run", "--detach", f"--name={name}", "--network=host", *read_only, *env, TAG)
                wait_healthy(http, name)
                expect(http.get("/healthz").text == "ok\n", "/healthz is not ok")
            with step("/readyz: ready, and the leader (the scheduler loaded)"):
                ready = http.get("/readyz").json()
                expect(ready.get("ready") is True and ready.get("role") == "leader", ready)
            with step(f"PID 1 is `registry-bot serve`, running as {UID}:{UID}"):
                status = engine("exec", name, "cat", "/proc/1/status").stdout
                ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines() if ":" in line}
                expect(ids["Uid"][0] == ids["Gid"][0] == str(UID), f"Uid {ids['Uid']} Gid {ids['Gid']}")
                cmdline = engine("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
                expect("serve" in cmdline, cmdline)
            with step("writing to / is refused (read-only), /tmp is writable"):
                refused = engine("exec", name, "touch", "/registry-bot-probe", ok=(1,))
                expect("Read-only file system" in refused.stderr, refused.stderr)
                engine("exec", name, "touch", "/tmp/registry-bot-probe")
            with step("a slash command is answered, and the verdict posted through the Slack stand-in"):
                body, headers = slash_command(
                    SIGNING_SECRET, "check viktor/registry-bot:dev", user_id=VIEWER, channel_id="C0OTHER"
                )
                expect(http.post("/slack/events", content=body, headers=headers).status_code == 200, "not 200")
                posted = slack.wait_for(lambda s: s.messages("C0OTHER"), timeout=30)
                expect(posted[0]["text"].startswith("INTACT viktor/registry-bot:dev"), posted[0]["text"])
            with step("SIGTERM: exits 0 within 10 s"):
                start = time.monotonic()
                engine("kill", "--signal=TERM", name)
                code = engine("wait", name, timeout=15).stdout.strip()
                took = time.monotonic() - start
                expect(code == "0" and took <= 10, f"exit code {code} after {took:.1f} s")
            with step("its log: no traceback, no secret"):
                logs = engine("logs", name)
                text = logs.stdout + logs.stderr
                expect("Traceback" not in text, text[-3000:])
                leaked = [s for s in (BOT_TOKEN, SIGNING_SECRET, ALERT_TOKEN) if s in text]
                expect(not leaked, f"{len(leaked)} secret(s) in the log")
        finally:
            remove(name)


def main() -> int:
    with step(f"{TAG} is in {ENGINE}'s store"):
        engine("image", "inspect", TAG)
    help_with_entrypoint()
    with (
        tempfile.TemporaryDirectory(prefix="registry-bot-image-test-") as tmp,
        Registry() as registry,
        Operator() as cli,
    ):
        imports_and_sizes(cli)
        check_a_pushed_image(cli, registry, Path(tmp))
        document = check_itself(cli, registry)
        serve(registry)
    size = int(engine("image", "inspect", "--format={{.Size}}", TAG).stdout.strip())
    pushed = sum(layer["size"] for layer in document["layers"])
    layers = len(document["layers"])
    print(f"image-test: {TAG} is {size / 1e6:.0f} MB ({pushed / 1e6:.0f} MB compressed in {layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
