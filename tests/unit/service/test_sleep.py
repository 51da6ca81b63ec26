"""The sleep part: the inhibitor released once nothing is leaving, or at the deadline."""

from __future__ import annotations

import asyncio

import pytest
from factories import held, usb

from phyllod.core.model import Assignment, State
from phyllod.core.plan import Attach, Detach, Plan
from phyllod.service.sleep import HostSleep, still_leaving

D = usb()
DETACH = Detach(slot=D.slot, guest="work", hostdev=held(D), why="the host is going to sleep",
                device_id=D.id)
SLEEPING = {D.id: Assignment(device_id=D.id, state=State.SLEEPING)}
DETACHING = {D.id: Assignment(device_id=D.id, state=State.DETACHING, guest="work")}


@pytest.mark.parametrize(("plan", "leaving"), [
    (Plan(assignments=SLEEPING, steps=()), False),
    (Plan(assignments=SLEEPING, steps=(DETACH,)), True),
    (Plan(assignments=DETACHING, steps=()), True),
    (Plan(assignments=SLEEPING, steps=(Attach(slot=D.slot, device=D, guest="work", rule="k"),)),
     False),
])
def test_still_leaving(plan, leaving) -> None:
    assert still_leaving(plan) is leaving


class Inhibitor:
    def __init__(self, max_delay: float) -> None:
        self.max_delay = max_delay
        self.holding = True
        self.releases = 0

    def release(self) -> None:
        self.releases += 1
        self.holding = False

    async def reacquire(self) -> None:
        self.holding = True


def sleeping(max_delay: float = 60.0) -> tuple[HostSleep, Inhibitor]:
    inhibitor = Inhibitor(max_delay)
    part = HostSleep(inhibitor=inhibitor, resume_settle=2.0, assignments=lambda: DETACHING,
                     present=lambda: {D.id}, forget_failures=lambda: None,
                     spawn=lambda c: asyncio.ensure_future(c), changed=lambda: None)
    part.on_prepare_for_sleep(True)
    return part, inhibitor


@pytest.mark.parametrize(("plans", "releases"), [
    # the first turn plans the detach, the next sees it under way: not yet
    ([Plan(assignments=SLEEPING, steps=(DETACH,)), Plan(assignments=DETACHING, steps=())], 0),
    # once every step settled: released, once
    ([Plan(assignments=DETACHING, steps=()), Plan(assignments=SLEEPING, steps=()),
      Plan(assignments=SLEEPING, steps=())], 1),
    # nothing to take back at all: released at the first turn
    ([Plan(assignments={}, steps=())], 1),
])
async def test_the_inhibitor_is_released_when_all_steps_settled(plans, releases) -> None:
    part, inhibitor = sleeping()
    for plan in plans:
        part.after_turn(plan)
    assert inhibitor.releases == releases
    part.cancel()


async def test_the_inhibitor_is_released_at_the_deadline_and_not_before() -> None:
    part, inhibitor = sleeping(max_delay=0.5)  # 80 % of it: 0.4 s
    part.after_turn(Plan(assignments=DETACHING, steps=()))
    await asyncio.sleep(0.05)
    assert inhibitor.releases == 0
    await asyncio.sleep(0.5)
    assert inhibitor.releases == 1


async def test_the_devices_taken_for_sleep_are_noted() -> None:
    part, _ = sleeping()
    part.after_turn(Plan(assignments=SLEEPING, steps=()))
    assert part.taken_for_sleep == {D.id}
