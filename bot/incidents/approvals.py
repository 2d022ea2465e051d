"""Who may do what: the one place authorization is decided.

Read-only phases (Diagnose, Verify) and Check now: anyone in the incident's channel. Destructive phases
(the lifecycle table says which) and answering an approval: an approver, a user in APPROVERS or in
APPROVER_GROUP. A second approver is needed where the table says so, or for every destructive phase under
TWO_PERSON_RULE.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.config import Settings
from bot.incidents import lifecycle
from bot.incidents.lifecycle import Phase

log = logging.getLogger(__name__)


class GroupDirectory(Protocol):
    async def group_members(self, group: str, ttl: float = 60.0, fresh: bool = False) -> set[str] | None: ...


class Guard:
    def __init__(self, settings: Settings, directory: GroupDirectory | None = None) -> None:
        self.settings = settings
        self.directory = directory

    async def is_approver(self, user: str, fresh: bool = False) -> bool:
        """`fresh`: ask Slack now rather than trust the group's cached members (for destructive decisions)."""
        if user in self.settings.approvers:
            return True
        if self.settings.approver_group and self.directory is not None:
            members = await self.directory.group_members(self.settings.approver_group, fresh=fresh)
            if members is None:
                log.warning("could not read APPROVER_GROUP's members from Slack; refusing %s for now", user)
                return False
            return user in members
        return False

    def needs_two_people(self, phase: Phase | str) -> bool:
        spec = lifecycle.spec(phase)
        return spec.always_two_people or (self.settings.two_person_rule and spec.destructive)
