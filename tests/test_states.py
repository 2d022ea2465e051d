"""The buttons an incident shows and the phases the server accepts agree."""

from __future__ import annotations


def test_every_button_a_state_shows_is_a_phase_that_state_allows():
    from bot.flows import ACTION_PHASE, PHASE_STATES
    from bot.slack.blocks import BUTTONS_BY_STATE

    for state, buttons in BUTTONS_BY_STATE.items():
        for action_id in buttons:
            phase = ACTION_PHASE[action_id]
            assert state in PHASE_STATES[phase], f"{action_id} shown in {state}, where {phase} is refused"
