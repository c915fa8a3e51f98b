"""The desktop state machine: the table the code follows is the one the docs draw."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thinserve.desktop_state import (
    TRANSITIONS,
    BadTransition,
    DesktopMachine,
    DesktopState,
    Event,
)

ARCHITECTURE = Path(__file__).parents[2] / "docs" / "architecture.md"
EDGE = re.compile(r"^\s*(\w+) --> (\w+): (\w+)\s*$")


def documented_edges() -> set[tuple[str, str, str]]:
    """(state, event, next state) from the state diagram in docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    diagram = text.split("stateDiagram-v2", 1)[1].split("```", 1)[0]
    edges = set()
    for line in diagram.splitlines():
        found = EDGE.match(line)
        if found:
            before, after, event = found.groups()
            edges.add((before, event, after))
    return edges


def test_the_table_is_the_documented_diagram() -> None:
    coded = {
        (state.value, event.value, after.value)
        for state, row in TRANSITIONS.items()
        for event, after in row.items()
    }
    assert documented_edges() == coded


def test_every_state_has_a_row_and_every_event_is_used() -> None:
    assert set(TRANSITIONS) == set(DesktopState)
    used = {event for row in TRANSITIONS.values() for event in row}
    assert used == set(Event)


@pytest.mark.parametrize(
    ("events", "end"),
    [
        ((Event.START, Event.UP), DesktopState.RUNNING),  # started on demand
        ((Event.START, Event.FAILED, Event.OFFER), DesktopState.STOPPED),  # retried later
        ((Event.START, Event.STOP, Event.ENDED, Event.START), DesktopState.STARTING),  # reset
        ((Event.UP, Event.STOP, Event.ENDED), DesktopState.STOPPED),  # idle stop
        ((Event.HOLD, Event.OFFER, Event.START, Event.UP), DesktopState.RUNNING),
        ((Event.UP, Event.FAILED, Event.HOLD), DesktopState.HELD),  # crashed, pool full
    ],
)
def test_paths_a_desktop_takes(events: tuple[Event, ...], end: DesktopState) -> None:
    machine = DesktopMachine("d1")
    for event in events:
        machine.handle(event)
    assert machine.state is end


def test_a_forbidden_event_raises_and_changes_nothing() -> None:
    heard: list[tuple[str, DesktopState, DesktopState]] = []
    machine = DesktopMachine("d1", observer=lambda *change: heard.append(change))
    with pytest.raises(BadTransition, match="desktop d1: ended while stopped"):
        machine.handle(Event.ENDED)
    assert machine.state is DesktopState.STOPPED and heard == []
    assert not machine.can(Event.OFFER)  # only held or crashed desktops are offered again


def test_the_observer_hears_each_change_once_and_in_order() -> None:
    heard: list[tuple[str, DesktopState, DesktopState]] = []
    machine = DesktopMachine("d1", observer=lambda *change: heard.append(change))
    machine.handle(Event.START)
    machine.handle(Event.UP)
    assert heard == [
        ("d1", DesktopState.STOPPED, DesktopState.STARTING),
        ("d1", DesktopState.STARTING, DesktopState.RUNNING),
    ]


def test_what_terminals_see_of_each_state() -> None:
    offered = {s for s in DesktopState if s.offered}
    active = {s for s in DesktopState if s.active}
    assert offered == {DesktopState.STOPPED, DesktopState.RUNNING, DesktopState.STOPPING}
    assert active == {DesktopState.STARTING, DesktopState.RUNNING, DesktopState.STOPPING}
