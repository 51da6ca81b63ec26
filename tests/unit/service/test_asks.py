"""The asks part: requests opened, withdrawn by an unplug or a decision, expired, answered."""

from __future__ import annotations

import asyncio

import pytest
from factories import usb

from phyllod.core.model import Ask, AskOutcome, Assignment, State
from phyllod.core.plan import Plan, Question
from phyllod.service.asks import Asks, withdrawal

D = usb(vendor="1050")
ASKING = Assignment(device_id=D.id, state=State.ASKING, reason="waiting for an answer")


@pytest.mark.parametrize(("assignment", "why"), [
    (ASKING, None),
    (None, "the device is gone"),
    (Assignment(device_id=D.id, state=State.DENIED, reason="denied by rule 'no'"),
     "denied by rule 'no'"),
    (Assignment(device_id=D.id, state=State.ATTACHED, guest="work", reason="by override"),
     "by override"),
])
def test_withdrawal(assignment, why) -> None:
    assert withdrawal(assignment) == why


def asked(asks: Asks, timeout: int = 60) -> int:
    """Open one request for D through a plan that asks about it."""
    plan = Plan(assignments={D.id: ASKING}, steps=(),
                questions=(Question(D.id, "keys", ("work", "play")),))
    asks.after_turn(plan, {D.id: D}, timeout)
    (number,) = asks.requests
    return number


async def test_a_request_is_withdrawn_by_an_unplug() -> None:
    asks = Asks(changed=lambda: None)
    asks.new_plug(D.id)
    number = asked(asks)
    assert asks.standing[D.id] == Ask(AskOutcome.PENDING, candidates=("work", "play"))
    assert asks.newly_plugged == set()
    asks.plug_ended(D.id, "unplugged")
    assert number not in asks.requests and D.id not in asks.standing


@pytest.mark.parametrize(("assignment", "open_after"), [
    (ASKING, True),
    (Assignment(device_id=D.id, state=State.DENIED, reason="denied"), False),  # a reload denied it
    (None, False),  # the device left the plan
])
async def test_a_request_is_withdrawn_when_no_longer_asked_for(assignment, open_after) -> None:
    asks = Asks(changed=lambda: None)
    number = asked(asks)
    asks.after_turn(Plan(assignments={D.id: assignment} if assignment else {}, steps=()),
                    {D.id: D}, 60)
    assert (number in asks.requests) is open_after
    assert (D.id in asks.standing) is open_after


async def test_a_request_expires() -> None:
    kicks = []
    asks = Asks(changed=lambda: kicks.append(1))
    number = asked(asks, timeout=0)
    await asyncio.sleep(0.01)
    assert number not in asks.requests
    assert asks.standing[D.id] == Ask(AskOutcome.EXPIRED) and kicks == [1]


async def test_a_request_is_answered() -> None:
    asks = Asks(changed=lambda: None)
    number = asked(asks)
    asks.answered(number, D.id, "play")
    assert asks.requests == {} and asks.standing[D.id] == Ask(AskOutcome.ANSWERED, "play")


async def test_none_of_the_guests_running_is_not_asked() -> None:
    asks = Asks(changed=lambda: None)
    plan = Plan(assignments={D.id: ASKING}, steps=(), questions=(Question(D.id, "k", ()),))
    asks.after_turn(plan, {D.id: D}, 60)
    assert asks.requests == {} and asks.standing[D.id] == Ask(AskOutcome.UNASKED)
