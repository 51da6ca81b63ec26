"""service/timers: one pending call per key, on a bare loop."""

from __future__ import annotations

import asyncio

from phyllod.service.timers import Timers


async def test_one_call_per_key_the_last_started_wins() -> None:
    fired: list[str] = []
    timers: Timers[str] = Timers()
    timers.start("a", 0.01, fired.append, "first")
    timers.start("a", 0.01, fired.append, "second")  # replaces the first
    timers.start("b", 0.01, fired.append, "b")
    timers.start("c", 0.01, fired.append, "c")
    timers.stop("c")
    await asyncio.sleep(0.05)
    assert sorted(fired) == ["b", "second"]


async def test_a_fired_call_is_forgotten_and_stop_all_cancels_the_rest() -> None:
    fired: list[str] = []
    timers: Timers[str] = Timers()
    timers.start("a", 0.0, fired.append, "a")
    await asyncio.sleep(0.01)
    timers.stop("a")  # already fired: nothing to cancel, nothing raised
    timers.start("a", 0.01, fired.append, "again")
    timers.start("b", 0.01, fired.append, "b")
    timers.stop_all()
    await asyncio.sleep(0.05)
    assert fired == ["a"]
