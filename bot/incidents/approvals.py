"""Who may do what: the one place authorization is decided.

Diagnose, Verify and Check now only read: anyone in the incident's channel may run them. Rebuild, Restart,
node actions, and answering an approval need an approver: a user in APPROVERS or in APPROVER_GROUP.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.config import Settings

log = logging.getLogger(__name__)

READ_ONLY_PHASES = frozenset({"diagnose", "verify"})
DESTRUCTIVE_PHASES = frozenset({"rebuild", "restart", "node"})


class GroupDirectory(Protocol):
    async def group_members(self, group: str, ttl: float = 60.0) -> set[str] | None: ...


class Guard:
    def __init__(self, settings: Settings, directory: GroupDirectory) -> None:
        self.settings = settings
        self.directory = directory

    async def is_approver(self, user: str) -> bool:
        if user in self.settings.approvers:
            return True
        if self.settings.approver_group:
            members = await self.directory.group_members(self.settings.approver_group)
            if members is None:
                log.warning("could not read APPROVER_GROUP's members from Slack; refusing %s for now", user)
                return False
            return user in members
        return False

    def needs_two_people(self, phase: str) -> bool:
        return phase == "node" or (self.settings.two_person_rule and phase in DESTRUCTIVE_PHASES)

    def approvers_text(self) -> str:
        parts = [f"<@{u}>" for u in self.settings.approvers]
        if self.settings.approver_group:
            parts.append(f"members of @{self.settings.approver_group.lstrip('@')}")
        return ", ".join(parts) if parts else "no one (APPROVERS and APPROVER_GROUP are empty)"
