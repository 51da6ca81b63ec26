"""Small decisions of the operations, the publishing and the steps, as tables."""

from __future__ import annotations

import pytest
from factories import guest, held, policy, usb

from phyllod.core.model import Assignment, GuestState, Override, OverrideKind, State
from phyllod.service.guests import reconnect_delays
from phyllod.service.operations import deny_rule_refusal, settled
from phyllod.service.publish import changed, status_line
from phyllod.service.steps import still_held

D = usb()
HOST = Assignment(device_id=D.id, state=State.HOST)
ATTACHING = Assignment(device_id=D.id, state=State.ATTACHING, guest="work")


@pytest.mark.parametrize(("a", "in_flight", "kicked", "turned", "done"), [
    (HOST, False, False, True, True),
    (HOST, False, False, False, False),  # no turn since the change yet
    (HOST, False, True, True, False),  # another turn is asked for
    (HOST, True, False, True, False),  # a step on its slot is in flight
    (ATTACHING, False, False, True, False),
])
def test_settled(a, in_flight, kicked, turned, done) -> None:
    assert settled(a, in_flight, kicked, turned) is done


def test_a_deny_rule_refuses_a_manual_attach() -> None:
    deny = policy('[[rule]]\nname = "no"\nmatch = { vendor = "0627" }\naction = "deny"\n')
    allow = policy('[[rule]]\nname = "k"\nmatch = { vendor = "0627" }\nguest = "work"\n')
    to_work = Override(OverrideKind.ATTACH, "work")
    assert deny_rule_refusal(deny, D, to_work) == f"{D.id} is denied by rule 'no' (test.toml:1)"
    assert deny_rule_refusal(allow, D, to_work) is None
    assert deny_rule_refusal(policy(""), D, to_work) is None


@pytest.mark.parametrize(("assignments", "away", "broken", "line"), [
    ({}, False, False, "0 devices"),
    ({D.id: HOST}, False, False, "1 devices: 1 host"),
    ({D.id: HOST}, True, False, "1 devices: 1 host; waiting for libvirt at test:///"),
    ({}, True, True, "0 devices; waiting for libvirt at test:///; policy has errors"),
])
def test_status_line(assignments, away, broken, line) -> None:
    assert status_line(assignments, away, "test:///", broken) == line


def test_changed_leaves_out_transitions_and_what_did_not_change() -> None:
    attached = Assignment(device_id=D.id, state=State.ATTACHED, guest="work")
    assert changed({}, {D.id: HOST}) == [HOST]
    assert changed({D.id: HOST}, {D.id: HOST}) == []
    assert changed({D.id: HOST}, {D.id: ATTACHING}) == []
    assert changed({D.id: ATTACHING}, {D.id: attached}) == [attached]


@pytest.mark.parametrize(("g", "held_after"), [
    (guest("work", hostdevs=(held(D),)), True),  # QEMU has not let go yet: wait
    (guest("work"), False),
    (guest("work", state=GuestState.SHUTOFF), False),
    (None, False),
])
def test_still_held(g, held_after) -> None:
    assert still_held(g, held(D)) is held_after


def test_reconnect_delays_double_up_to_thirty_seconds() -> None:
    delays = reconnect_delays()
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
