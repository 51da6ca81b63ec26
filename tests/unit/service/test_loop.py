"""The loop: kicks in one turn make one reconcile, and the host facts are read once."""

from __future__ import annotations

import asyncio

import pytest

from phyllod.core.model import Device, HostFacts, Subsystem
from phyllod.core.plan import Plan, World
from phyllod.core.policy import Policy
from phyllod.service.loop import Loop


class Counts:
    def __init__(self) -> None:
        self.reads = 0
        self.worlds = 0
        self.plans: list[Plan] = []

    def read(self) -> HostFacts:
        self.reads += 1
        return HostFacts()

    def world(self, now: float, host: HostFacts) -> World:
        self.worlds += 1
        return World(devices={}, guests={}, now=now, host=host)

    def loop(self) -> Loop:
        return Loop(read_facts=self.read, policy=lambda: None, world=self.world,
                    after=self.plans.append, start_steps=lambda steps: None,
                    stopping=lambda: False)


@pytest.mark.parametrize(("kicks", "uevents", "reads", "turns"), [
    (1, 0, 0, 1),  # nothing changed on the host: the facts are not read again
    (5, 0, 0, 1),
    (1, 1, 1, 1),
    (5, 7, 1, 1),  # a plug is several uevents: one read, one reconcile
    (0, 3, 0, 0),  # stale facts alone ask for nothing
])
async def test_several_kicks_in_one_turn(kicks, uevents, reads, turns) -> None:
    counts = Counts()
    loop = counts.loop()
    assert counts.reads == 1  # at start
    for _ in range(uevents):
        loop.facts_changed()
    for _ in range(kicks):
        loop.kick()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (counts.reads - 1, counts.worlds, len(counts.plans)) == (reads, turns, turns)
    assert loop.turns == turns and loop.facts_reads == counts.reads and not loop.kicked


async def test_a_kick_after_a_turn_makes_another() -> None:
    counts = Counts()
    loop = counts.loop()
    loop.kick()
    await asyncio.sleep(0)
    loop.kick()
    await asyncio.sleep(0)
    assert loop.turns == 2


async def test_a_turn_plans_again_only_what_changed() -> None:
    """The loop keeps the last turn's Reconciled: a turn after nothing changed plans no
    device, one after a plug plans that device (counts, the plans are reconcile's)."""
    devices = {f"usb:1-{i}": Device(subsystem=Subsystem.USB, sys_path=f"/sys/u/1-{i}",
                                    port=f"1-{i}", busnum=1, devnum=1 + i) for i in range(1, 6)}
    policy = Policy()
    loop = Loop(read_facts=HostFacts, policy=lambda: policy,
                world=lambda now, host: World(devices=devices, guests={}, now=now, host=host),
                after=lambda plan: None, start_steps=lambda steps: None,
                stopping=lambda: False)
    planned = []
    for plug in (None, None, "usb:1-9"):
        if plug is not None:
            devices[plug] = Device(subsystem=Subsystem.USB, sys_path="/sys/u/1-9", port="1-9",
                                   busnum=1, devnum=20)
        loop.kick()
        await asyncio.sleep(0)
        assert loop.reconciled is not None
        planned.append(loop.reconciled.planned)
    assert planned == [5, 0, 1]
