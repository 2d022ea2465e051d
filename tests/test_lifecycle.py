"""The lifecycle table, checked as properties: what it offers can be started, every state is reachable and
can lead to resolved, and no other module spells a state or phase name."""

from __future__ import annotations

import ast
import pathlib

from hypothesis import given
from hypothesis import strategies as st

from bot.incidents import lifecycle
from bot.incidents.lifecycle import OPEN_STATES, PHASES, Outcome, Phase, State

BOT = pathlib.Path(__file__).resolve().parent.parent / "bot"


def successors(state: State) -> set[State]:
    """Where the incident may go next: a phase startable now ends (with any outcome), or the phase that
    holds it in a during-state ends."""
    found = set()
    for spec in PHASES.values():
        if state in spec.allowed_from:
            found.add(spec.during or state)
            found |= {lifecycle.next_state(spec.phase, o, spec.during or state, state) for o in Outcome}
        if spec.during is state:
            found |= {
                lifecycle.next_state(spec.phase, o, state, before) for o in Outcome for before in spec.allowed_from
            }
    return found


def reachable_from(start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in successors(todo.pop()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_every_button_a_state_shows_is_a_phase_that_state_allows():
    for state in State:
        for spec in lifecycle.buttons(state):
            assert lifecycle.may_start(spec.phase, state), f"{spec.phase} shown in {state}"


def test_every_state_is_reachable_from_open_and_every_open_state_can_be_resolved():
    assert reachable_from(State.OPEN) == set(State)
    for state in OPEN_STATES:
        assert State.RESOLVED in reachable_from(state), state


def test_resolved_offers_nothing_and_every_phase_has_a_unique_action():
    assert lifecycle.buttons(State.RESOLVED) == []
    assert len({spec.action_id for spec in PHASES.values()}) == len(PHASES)


def test_the_buttons_put_the_next_step_first():
    def ids(state: State) -> list[Phase]:
        return [spec.phase for spec in lifecycle.buttons(state)]

    assert ids(State.OPEN) == [Phase.DIAGNOSE, Phase.REBUILD, Phase.RESTART]
    assert ids(State.REBUILT) == [Phase.RESTART, Phase.VERIFY, Phase.REBUILD]
    assert ids(State.RESTARTED) == [Phase.VERIFY, Phase.RESTART, Phase.REBUILD]
    assert ids(State.FAILED) == [Phase.DIAGNOSE, Phase.REBUILD, Phase.RESTART, Phase.VERIFY]


@given(st.sampled_from(list(Phase)), st.sampled_from(list(Outcome)), st.sampled_from(list(State)))
def test_a_run_never_resolves_an_incident_unless_verification_succeeded(phase, outcome, before):
    spec = lifecycle.spec(phase)
    current = spec.during or before
    after = lifecycle.next_state(phase, outcome, current, before)
    if after is State.RESOLVED and before is not State.RESOLVED:
        assert (phase, outcome) == (Phase.VERIFY, Outcome.SUCCEEDED)
    if outcome is Outcome.DRY_RUN:
        assert after == (before if spec.during else current), "a dry run moves nothing"


@given(st.sampled_from([s for s in State if s not in (State.OPEN, State.DIAGNOSED)]), st.sampled_from(list(Outcome)))
def test_a_diagnosis_never_moves_an_incident_backwards(state, outcome):
    assert lifecycle.next_state(Phase.DIAGNOSE, outcome, state, state) == state


# The same words with other meanings: Alertmanager's alert status, systemctl's verb, the audit action.
OTHER_MEANINGS = {("alerts.py", "resolved"), ("runbook/node.py", "restart"), ("engine/intake.py", "open")}


def test_no_module_but_the_lifecycle_spells_a_state_or_phase_name():
    names = {s.value for s in State} | {p.value for p in Phase}
    offenders = []
    for path in BOT.rglob("*.py"):
        if path.name == "lifecycle.py" or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                if (str(path.relative_to(BOT)), node.value) in OTHER_MEANINGS:
                    continue
                offenders.append(f"{path.relative_to(BOT)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_no_slack_markup_outside_the_slack_layer():
    markup = ("<@", "<!", "|#")
    offenders = []
    for package in ("runbook", "incidents", "registry", "integrations", "engine"):
        for path in (BOT / package).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(BOT)}: {m}" for m in markup if m in text]
            if "<http" in text:
                offenders.append(f"{path.relative_to(BOT)}: <http")
    assert not offenders, offenders
