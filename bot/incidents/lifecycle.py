"""The incident lifecycle, written once: its states, its phases, and one table of what each phase may do.

An incident is `open` when a broken image is recorded. Each phase run moves it: the table says from which
states a phase may start, the state it holds while it runs, and where a success or a failure leaves it.
The buttons an incident shows, who must approve a phase, and which states mean "a phase was cut off" are
all read from this table; no other module spells a state or phase name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class State(StrEnum):
    OPEN = "open"
    DIAGNOSED = "diagnosed"
    REBUILDING = "rebuilding"
    REBUILT = "rebuilt"
    RESTARTING = "restarting"
    RESTARTED = "restarted"
    VERIFYING = "verifying"
    STILL_BROKEN = "still_broken"
    FAILED = "failed"
    RESOLVED = "resolved"


class Phase(StrEnum):
    DIAGNOSE = "diagnose"
    REBUILD = "rebuild"
    RESTART = "restart"
    NODE = "node"
    VERIFY = "verify"


class Outcome(StrEnum):
    """How a phase run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNNEEDED = "unneeded"  # the image was intact by the time the phase looked: nothing was changed
    INCONCLUSIVE = "inconclusive"  # it could not tell (a verification that could not check): try again later
    DRY_RUN = "dry_run"  # DRY_RUN=true: the reads were done, nothing was written

    @property
    def ok(self) -> bool:
        return self in (Outcome.SUCCEEDED, Outcome.DRY_RUN)


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class StepState(StrEnum):
    """A step of a phase run, as the progress message shows it."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    INFO = "info"
    WARNING = "warning"

    @property
    def final(self) -> bool:
        return self in (StepState.DONE, StepState.FAILED, StepState.WARNING)


class Step(IntEnum):
    """A phase's place in the runbook, and how far an incident has got along it."""

    NONE = 0
    DIAGNOSE = 1
    REBUILD = 2
    RESTART = 3
    VERIFY = 4


@dataclass(frozen=True)
class PhaseSpec:
    phase: Phase
    title: str
    action_id: str  # the button that asks for it
    step: Step  # its place in the runbook
    allowed_from: frozenset[State]
    destructive: bool  # needs an approver; DRY_RUN skips its writes
    always_two_people: bool  # a second approver even without TWO_PERSON_RULE
    during: State | None  # the state while it runs (None: the state does not change)
    on_success: State
    on_failure: State | None  # None: a failure leaves the state as it was
    root_button: bool = True  # shown on the incident's root message (node: offered in the thread)
    moves_only_from: frozenset[State] | None = None  # a result never moves an incident from other states

    @property
    def fixes(self) -> bool:
        """A success changes the registry or the cluster: the fix time is recorded and verification follows."""
        return self.destructive


_BEFORE_FIX = frozenset({State.OPEN, State.DIAGNOSED, State.STILL_BROKEN, State.FAILED})
AFTER_FIX = frozenset({State.REBUILT, State.RESTARTED, State.VERIFYING, State.STILL_BROKEN, State.FAILED})
_REPAIRABLE = _BEFORE_FIX | AFTER_FIX

PHASES: dict[Phase, PhaseSpec] = {
    spec.phase: spec
    for spec in (
        PhaseSpec(
            Phase.DIAGNOSE,
            "Diagnose",
            "registry_diagnose",
            Step.DIAGNOSE,
            allowed_from=_BEFORE_FIX | {State.REBUILDING, State.RESTARTING},
            destructive=False,
            always_two_people=False,
            during=None,
            on_success=State.DIAGNOSED,
            on_failure=None,
            moves_only_from=frozenset({State.OPEN, State.DIAGNOSED}),  # a diagnosis never moves one backwards
        ),
        PhaseSpec(
            Phase.REBUILD,
            "Rebuild",
            "registry_rebuild",
            Step.REBUILD,
            allowed_from=_REPAIRABLE,
            destructive=True,
            always_two_people=False,
            during=State.REBUILDING,
            on_success=State.REBUILT,
            on_failure=State.FAILED,
        ),
        PhaseSpec(
            Phase.RESTART,
            "Restart consumers",
            "registry_restart",
            Step.RESTART,
            allowed_from=_REPAIRABLE,
            destructive=True,
            always_two_people=False,
            during=State.RESTARTING,
            on_success=State.RESTARTED,
            on_failure=State.FAILED,
        ),
        PhaseSpec(
            Phase.NODE,
            "Drain node and restart containerd",
            "registry_node",
            Step.RESTART,
            allowed_from=AFTER_FIX,
            destructive=True,
            always_two_people=True,
            during=State.RESTARTING,
            on_success=State.RESTARTED,
            on_failure=State.FAILED,
            root_button=False,
        ),
        PhaseSpec(
            Phase.VERIFY,
            "Verify",
            "registry_verify_now",
            Step.VERIFY,
            allowed_from=AFTER_FIX,
            destructive=False,
            always_two_people=False,
            during=None,
            on_success=State.RESOLVED,
            on_failure=State.STILL_BROKEN,
        ),
    )
}

OPEN_STATES = tuple(state for state in State if state is not State.RESOLVED)
DURING_STATES = frozenset(spec.during for spec in PHASES.values() if spec.during is not None)
# How far the fix has got in each state (the order the buttons are offered in).
# (Diagnosed counts as nothing done: diagnosing again is cheap and comes first.)
REACHED: dict[State, Step] = {
    State.REBUILDING: Step.REBUILD,
    State.REBUILT: Step.REBUILD,
    State.RESTARTING: Step.RESTART,
    State.RESTARTED: Step.RESTART,
    State.VERIFYING: Step.RESTART,
    State.RESOLVED: Step.VERIFY,
}


def spec(phase: Phase | str) -> PhaseSpec:
    return PHASES[Phase(phase)]


def may_start(phase: Phase | str, state: State | str) -> bool:
    return State(state) in spec(phase).allowed_from


def buttons(state: State | str) -> list[PhaseSpec]:
    """The phases a person may start from `state`: next steps in runbook order, then earlier ones, latest first."""
    state = State(state)
    reached = REACHED.get(state, Step.NONE)
    startable = [s for s in PHASES.values() if s.root_button and state in s.allowed_from]
    ahead = [s for s in startable if s.step > reached]
    behind = sorted((s for s in startable if s.step <= reached), key=lambda s: s.step, reverse=True)
    return ahead + behind


def next_state(phase: Phase | str, outcome: Outcome, current: State | str, before: State | str) -> State:
    """Where a run that ended with `outcome` leaves an incident that is `current` now and was `before` it ran."""
    s = spec(phase)
    current, before = State(current), State(before)
    if s.moves_only_from is not None and current not in s.moves_only_from:
        return current
    if outcome is Outcome.SUCCEEDED:
        return s.on_success
    if outcome is Outcome.FAILED:
        if s.on_failure is not None:
            return s.on_failure
    elif outcome is Outcome.UNNEEDED:
        return State.DIAGNOSED
    elif outcome is Outcome.INCONCLUSIVE:
        return State.VERIFYING
    # A dry run, or a failure that leaves the state: back to where it was before the run.
    return before if current == s.during else current
