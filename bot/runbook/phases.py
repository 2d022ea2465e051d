"""The runbook's phases, by lifecycle phase: the functions the runner executes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.incidents.lifecycle import Phase
from bot.runbook.base import PhaseContext, PhaseResult, Progress

PhaseFn = Callable[[PhaseContext, Progress], Awaitable[PhaseResult]]


def all_phases() -> dict[Phase, PhaseFn]:
    from bot.runbook.diagnose import diagnose
    from bot.runbook.node import node
    from bot.runbook.rebuild import rebuild
    from bot.runbook.restart import restart
    from bot.runbook.verify import verify

    return {
        Phase.DIAGNOSE: diagnose,
        Phase.REBUILD: rebuild,
        Phase.RESTART: restart,
        Phase.NODE: node,
        Phase.VERIFY: verify,
    }
