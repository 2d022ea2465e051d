"""With SLACK_APP_TOKEN set, commands and clicks arrive over Socket Mode too, and are handled the same way."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from tests.harness import CHANNEL, VIEWER, BotProcess, roots
from tests.peers.registry import ImagePusher, Registry
from tests.peers.slack_api import SlackStandIn
from tests.peers.slack_requests import block_action, slash_command
from tests.peers.socket_mode import SocketModeStandIn


def test_commands_and_clicks_over_socket_mode():
    with Registry() as registry, SlackStandIn(channels={CHANNEL: "alerts"}) as slack, SocketModeStandIn() as socket:
        slack.stub("apps.connections.open", {"ok": True, "url": socket.url})
        image = ImagePusher(registry.url).push_image("viktor/app", "latest")
        registry.break_manifest_link("viktor/app", image.children["linux/amd64"])
        env = {"REGISTRY_URL": registry.url, "REGISTRY_KIND": "distribution", "SLACK_APP_TOKEN": "xapp-test"}
        with BotProcess(slack, env) as bot:
            assert socket.connected.wait(20), bot.logs()[-2000:]
            body, _ = slash_command("unused", f"check {image.reference}", user_id=VIEWER)
            ack = socket.send("slash_commands", dict(parse_qsl(body.decode())))
            assert "Checking" in json.dumps(ack.get("payload", {}), ensure_ascii=False)
            root = slack.wait_for(lambda s: next((m for m in roots(s) if "viktor/app" in m["text"]), None), timeout=20)
            slack.wait_for(lambda s: "Diagnosed" in s.message(CHANNEL, root["ts"])["text"], timeout=20)
            body, _ = block_action("unused", "registry_diagnose", user_id=VIEWER, message=root)
            socket.send("interactive", json.loads(dict(parse_qsl(body.decode()))["payload"]))
            slack.wait_for(
                lambda s: any("Diagnose (attempt 2)" in m["text"] for m in s.thread(CHANNEL, root["ts"])), timeout=20
            )
