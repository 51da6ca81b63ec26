"""The loop: kicks in one turn make one reconcile, and the host facts are read once."""

from __future__ import annotations

import asyncio

import pytest

from phyllod.core.model import HostFacts
from phyllod.core.plan import Plan, World
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
