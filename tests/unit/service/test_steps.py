"""The steps part: when a planned libvirt call is issued, and what it waits for.

Issue 18: a step's call is issued in the turn that planned it (``start``),
not from its task, which runs only after every callback already queued.
The task issues it itself only when something must come first: the PCI
group mates' move to vfio, or an armed ``*-before`` fault point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from factories import guest, held, pci, usb

from phyllod.core.model import Subsystem
from phyllod.core.plan import Attach, Detach, OpKind, Step
from phyllod.host.libvirt_client import LibvirtError
from phyllod.service.steps import Steps

T = TypeVar("T")
KBD = usb()
WIFI = pci()


class Client:
    """Records each call at the moment it is issued; outcomes come from the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.outcomes: dict[str, asyncio.Future] = {}

    def _issued(self, what: str) -> asyncio.Future:
        self.calls.append(what)
        return self.outcomes.setdefault(what, asyncio.get_running_loop().create_future())

    def attach(self, name: str, _xml: str) -> asyncio.Future:
        return self._issued(f"attach {name}")

    def detach(self, name: str, alias: str) -> asyncio.Future:
        return self._issued(f"detach {alias} {name}")

    async def to_vfio(self, address: str) -> None:
        await self._issued(f"to_vfio {address}")

    async def to_host(self, address: str) -> None:
        self.calls.append(f"to_host {address}")

    async def guest(self, name: str) -> object:
        return None


class Faults:
    """Fault points: the armed ones hold until the test lets them go."""

    def __init__(self, armed: set[str]) -> None:
        self.armed = armed
        self.reached: list[str] = []
        self.go = asyncio.Event()

    def holds(self, name: str) -> bool:
        return name in self.armed

    async def point(self, name: str) -> None:
        if name in self.armed:
            self.reached.append(name)
            await self.go.wait()

    async def around(self, name: str, call: Awaitable[T]) -> T:
        return await call


class Rig:
    def __init__(self, armed: set[str] = frozenset()) -> None:
        self.client = Client()
        self.faults = Faults(set(armed))
        self.tasks: list[asyncio.Task] = []
        self.changed = 0
        self.stored: list[str] = []
        self.ended: list[tuple[OpKind, Subsystem, bool, float]] = []
        self.steps = Steps(
            client=self.client, faults=self.faults,  # type: ignore[arg-type]
            guests=lambda: {"work": guest("work", hostdevs=(held(KBD),))},
            store_guest=lambda name, _g: self.stored.append(name),
            refresh_guest=self.refresh, connection_failed=lambda e: None,
            unwatch_bind=lambda slot: None, spawn=self.spawn, changed=self.change,
            detach_timeout=1.0, to_host_timeout=1.0,
            call_ended=lambda *outcome: self.ended.append(outcome))

    def spawn(self, coro) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def change(self) -> None:
        self.changed += 1

    async def refresh(self, name: str) -> None:
        pass


ATTACH = Attach(slot=KBD.slot, device=KBD, guest="work", rule="desk")
GROUPED = Attach(slot=WIFI.slot, device=WIFI, guest="work", rule="wifi",
                 prepare=("0000:03:00.1",))
DETACH = Detach(slot=KBD.slot, guest="work", hostdev=held(KBD), why="unplugged",
                device_id=KBD.id)


@pytest.mark.parametrize(("step", "armed", "at_start", "after_tasks"), [
    # a USB attach: issued in start, before any task ran
    (ATTACH, set(), ["attach work"], ["attach work"]),
    # an armed attach-before: nothing issued until the point is passed
    (ATTACH, {"attach-before"}, [], ["attach work"]),
    # a PCI function with group mates: they go to vfio first, from the task
    (GROUPED, set(), [], ["to_vfio 0000:03:00.1", "attach work"]),
    # a detach: issued in start
    (DETACH, set(), [f"detach {KBD.alias} work"], [f"detach {KBD.alias} work"]),
    # an armed detach-before: issued after the point
    (DETACH, {"detach-before"}, [], [f"detach {KBD.alias} work"]),
])
async def test_when_the_call_is_issued(step: Step, armed: set[str], at_start: list[str],
                                       after_tasks: list[str]) -> None:
    rig = Rig(armed)
    rig.steps.start([step])
    assert rig.client.calls == at_start  # before the loop ran anything else
    assert step.slot in rig.steps.inflight
    rig.faults.go.set()
    for _ in range(5):  # let the tasks reach their calls
        await asyncio.sleep(0)
        for what, outcome in rig.client.outcomes.items():
            if what.startswith("to_vfio") and not outcome.done():
                outcome.set_result(None)
    assert rig.client.calls == after_tasks
    assert rig.faults.reached == sorted(armed)


@pytest.mark.parametrize(("step", "outcome", "kind", "stored"), [
    (ATTACH, None, None, ["work"]),  # returned: the guest re-read is stored
    (ATTACH, LibvirtError("no free USB ports"), OpKind.ATTACH, []),
    (DETACH, LibvirtError("device not found"), OpKind.DETACH, []),
])
async def test_a_call_issued_in_start_ends_its_step(step: Step, outcome: object,
                                                    kind: OpKind | None,
                                                    stored: list[str]) -> None:
    """The task awaits the call start issued: its result or failure ends the step."""
    rig = Rig()
    rig.steps.start([step])
    (future,) = rig.client.outcomes.values()
    if isinstance(outcome, LibvirtError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    await asyncio.gather(*rig.tasks)
    assert rig.client.calls == at_issue(step)  # issued once, never again from the task
    assert rig.steps.inflight == {}
    assert rig.changed == 1
    assert rig.stored == stored
    failure = rig.steps.failures.get(step.slot)
    assert (failure.kind if failure else None) is kind


def at_issue(step: Step) -> list[str]:
    return (["attach work"] if isinstance(step, Attach)
            else [f"detach {step.hostdev.alias} work"])


@pytest.mark.parametrize(("step", "outcome", "ended"), [
    (ATTACH, None, (OpKind.ATTACH, Subsystem.USB, True)),
    (ATTACH, LibvirtError("cannot open directory"), (OpKind.ATTACH, Subsystem.USB, False)),
    # the guest re-read shows it released (no guest): the detach is done
    (DETACH, None, (OpKind.DETACH, Subsystem.USB, True)),
    (DETACH, LibvirtError("device not found"), (OpKind.DETACH, Subsystem.USB, False)),
    # a lost connection is no failure of the device, but the call did not succeed
    (ATTACH, LibvirtError("end of file", connection_lost=True),
     (OpKind.ATTACH, Subsystem.USB, False)),
])
async def test_each_call_end_is_told_once(step: Step, outcome: object,
                                          ended: tuple[OpKind, Subsystem, bool]) -> None:
    """The metrics hear every call's end, its result and a duration, exactly once."""
    rig = Rig()
    rig.steps.start([step])
    (future,) = rig.client.outcomes.values()
    if isinstance(outcome, LibvirtError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    await asyncio.gather(*rig.tasks)
    assert [e[:3] for e in rig.ended] == [ended]
    assert all(e[3] >= 0 for e in rig.ended)
