"""Slash commands and their buttons: `/registry check` (`--deep`), `/registry scan`, `/registry status`.
What they find broken becomes an incident through the intake, like any other signal."""

from __future__ import annotations

import asyncio

from bot import metrics
from bot.config import Settings
from bot.engine.intake import Intake
from bot.engine.ports import Audit, Notifier, Supervisor
from bot.engine.scans import shown_while
from bot.errors import UserFacingError
from bot.incidents.lifecycle import StepState
from bot.incidents.models import Incident
from bot.incidents.store import Store
from bot.refs import ImageRef
from bot.registry.blobs import DeepProgress
from bot.registry.model import CheckResult, human_bytes
from bot.registry.registries import for_host, registries_named
from bot.registry.scan import ScanResult
from bot.registry.session import open_registry
from bot.secrets import SecretResolver


class Commands:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        notifier: Notifier,
        supervisor: Supervisor,
        intake: Intake,
        secrets: SecretResolver,
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.supervisor = supervisor
        self.intake = intake
        self.secrets = secrets
        self.audit = Audit(store)

    # --- commands ----------------------------------------------------------------------------------------

    async def command_check(self, ref: ImageRef, user: str, channel: str, deep: bool = False) -> None:
        if ref.tag and ref.digest and (moved := await self._tag_elsewhere(ref)):
            await self.notifier.tell(
                channel,
                user,
                f"🚫 {ref.name}:{ref.tag} points at {moved[:19]}…, not {ref.digest[:19]}…; "
                "check the tag or the digest alone.",
            )
            return
        display = str(ref)  # with a tag and a digest, the verdict names both: the digest is what is walked
        result = await (self._deep_check(ref, display, channel) if deep else self.intake.check(ref, display))
        result.note = ref.implied_note
        await self.audit("check", result.status, user=user, detail=display)
        by_tag = ref.tag is not None and ref.digest is None
        if result.status == "broken" and by_tag:
            incident = await self.intake.report_broken(result, "command", user)
            if channel != incident.channel:
                await self.notifier.broken_elsewhere(channel, user, incident)
            return
        if result.status == "error":
            await self.notifier.tell(channel, user, f"⚠️ {result.verdict()}")
            return
        await self.notifier.check_verdict(channel, user, result)
        if by_tag:
            open_incident = await asyncio.to_thread(self.store.find_open, result.registry, display)
            if open_incident is not None and result.status == "intact":
                await self.notifier.check_intact_now(open_incident, user)

    async def _deep_check(self, ref: ImageRef, display: str, channel: str) -> CheckResult:
        """A check that hashes every layer, its progress shown in a message that edits itself every 5 s."""
        live = self.notifier.live_message(channel, f"🔎 Deep check of {display}")
        await live.step("deep", "Walking the image…")

        def show(done: DeepProgress) -> None:
            of = f" of {human_bytes(done.bytes_planned)}" if done.bytes_planned else ""
            text = f"{human_bytes(done.bytes_verified)}{of} hashed, {human_bytes(round(done.rate))}/s"
            self.supervisor.spawn(live.step("deep", text), "showing a deep check's progress")

        result = await self.intake.check(ref, display, deep=True, on_progress=show)
        state = StepState.DONE if result.status == "intact" else StepState.FAILED
        await live.step(
            "deep", f"{human_bytes(result.bytes_verified)} hashed in {result.elapsed_ms / 1000:.1f}s", state
        )
        await live.flush()
        return result

    async def _tag_elsewhere(self, ref: ImageRef) -> str | None:
        """The digest `ref`'s tag points at now, when that is not the digest `ref` names."""
        assert ref.tag is not None
        entry = for_host(self.settings, ref.host)
        if entry is None:
            return None  # the check itself will say the registry is not one of this bot's
        try:
            async with open_registry(self.settings, self.secrets, metrics.observe_registry, entry) as client:
                current = await client.resolve_digest(ref.name, ref.tag)
        except UserFacingError:
            return None  # the check itself will say why the registry cannot be asked
        return current if current and current != ref.digest else None

    async def command_scan(self, user: str | None, channel: str) -> list[ScanResult]:
        """Every registry scanned at once (or the scan running, joined), in a message that shows its progress
        every 5 s and ends as one summary per registry; then incidents for what broke."""
        live = self.notifier.live_message(channel, f"🔎 Scanning {registries_named(self.settings)}")
        scans = await shown_while(live, self.intake.scan(), lambda: self.intake.scans.progress)
        for scan in scans:
            outcome = "error" if scan.error else f"{scan.tally.broken} broken"
            await self.audit("scan", outcome, user=user, detail=scan.registry)
        await self.notifier.scan_summary(channel, user, scans, live)
        await self.intake.report_scan(scans, "scan", user)
        return scans

    async def open_incidents(self) -> list[Incident]:
        return await asyncio.to_thread(self.store.list_open)
