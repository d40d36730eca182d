"""The retraining loop's state machine: every transition written once, terminal states final."""

from __future__ import annotations

from underlay.monitoring.loop_steps import ALLOWED, STATES, TERMINAL


def test_terminal_states_have_no_way_out_and_every_state_is_reachable() -> None:
    assert not TERMINAL & set(ALLOWED)
    reached = {"triggered"}
    frontier = ["triggered"]
    while frontier:
        for nxt in ALLOWED.get(frontier.pop(), frozenset()):
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(STATES)
    # a run can fail or be abandoned from every unfinished state: the champion always stays
    assert all({"failed", "abandoned"} <= targets for targets in ALLOWED.values())
    # promotion only ever follows a canary
    assert [s for s, targets in ALLOWED.items() if "promoted" in targets] == ["canary"]
