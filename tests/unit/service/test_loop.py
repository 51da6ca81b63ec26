"""The loop: kicks in one turn make one reconcile, and the host facts are read once,
only the parts a uevent made stale."""

from __future__ import annotations

import asyncio

import pytest

from phyllod.core.model import ALL_PARTS, Device, FactsPart, HostFacts, PciFunction, Subsystem
from phyllod.core.plan import Plan, World
from phyllod.core.policy import Policy
from phyllod.host.udev_source import DeviceGone, DeviceSeen, DevicesRescanned
from phyllod.service.loop import Loop, staled_by

PCI, HOLDS = FactsPart.PCI, FactsPart.HOLDS
USB_DEVICE = Device(subsystem=Subsystem.USB, sys_path="/sys/u/1-2", port="1-2", busnum=1,
                    devnum=5)
PCI_DEVICE = Device(subsystem=Subsystem.PCI, sys_path="/sys/p/0000:03:00.0",
                    address="0000:03:00.0")


class Counts:
    def __init__(self) -> None:
        self.reads = 0
        self.worlds = 0
        self.plans: list[Plan] = []
        self.parts: list[frozenset[FactsPart]] = []

    def read(self, parts: frozenset[FactsPart]) -> HostFacts:
        self.reads += 1
        self.parts.append(parts)
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
    loop = Loop(read_facts=lambda parts: HostFacts(), policy=lambda: policy,
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


@pytest.mark.parametrize(("event", "parts"), [
    # A USB device's add, an interface's bind, its removal: what the host holds.
    (DeviceSeen(USB_DEVICE, "add"), {HOLDS}),
    (DeviceSeen(USB_DEVICE, "change", host_driver="usbhid"), {HOLDS}),
    (DeviceGone("usb:1-2"), {HOLDS}),
    # A PCI function, its driver: functions and groups, and what lies below it.
    (DeviceSeen(PCI_DEVICE, "bind"), {PCI, HOLDS}),
    (DeviceGone("pci:0000:03:00.0"), {PCI, HOLDS}),
    # Lost events, or an id of no subsystem we know: everything.
    (DevicesRescanned(()), {PCI, HOLDS}),
    (DeviceGone("thunderbolt:0-1"), {PCI, HOLDS}),
    (DeviceGone(""), {PCI, HOLDS}),
])
def test_which_uevent_stales_which_part(event, parts) -> None:
    assert staled_by(event) == parts


@pytest.mark.parametrize(("staled", "read"), [
    ([], []),  # nothing stale: nothing read
    ([{HOLDS}], [{HOLDS}]),
    ([{HOLDS}, {HOLDS}, {HOLDS}], [{HOLDS}]),  # a USB plug's several uevents: one read
    ([{HOLDS}, {PCI, HOLDS}], [{PCI, HOLDS}]),
    ([{PCI}], [{PCI}]),
])
async def test_a_turn_reads_only_the_stale_parts_once(staled, read) -> None:
    counts = Counts()
    loop = counts.loop()
    assert counts.parts == [ALL_PARTS]  # at start, everything
    for parts in staled:
        loop.facts_changed(frozenset(parts))
    loop.kick()
    await asyncio.sleep(0)
    assert counts.parts[1:] == read
    assert loop.part_reads == {PCI: 1 + sum(PCI in p for p in read),
                               HOLDS: 1 + sum(HOLDS in p for p in read)}
    loop.read_facts()  # a reload reads everything, stale or not
    assert counts.parts[-1] == ALL_PARTS


async def test_a_part_read_again_keeps_the_other_parts_as_they_were() -> None:
    """A USB plug re-reads the mounts and keyboards; the PCI functions stay as read."""
    nic = PciFunction(address="0000:03:00.0", driver="e1000e")
    reads = iter([HostFacts(iommu_enabled=True, functions={nic.address: nic},
                            keyboards={"/sys/devices/k": "old"}),
                  HostFacts(keyboards={"/sys/devices/k": "new"})])
    loop = Loop(read_facts=lambda parts: next(reads), policy=lambda: None,
                world=lambda now, host: World(devices={}, guests={}, now=now, host=host),
                after=lambda plan: None, start_steps=lambda steps: None,
                stopping=lambda: False)
    loop.facts_changed(frozenset({HOLDS}))
    facts = loop.facts()
    assert facts.iommu_enabled and facts.functions == {nic.address: nic}
    assert facts.keyboards == {"/sys/devices/k": "new"}
