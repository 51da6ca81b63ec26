"""The loop: kicks, and the turn that reconciles once for all of them.

Every input asks for a reconcile with :meth:`Loop.kick`; all the kicks of one
loop turn make one reconcile. A turn reads the host facts at most once
(drivers, groups, mounts, keyboards: a plug is several uevents, and in a slow
VM one read costs ~0.3 s; read per event, they held the attach back by a
second or more), and only the parts a uevent made stale (:func:`staled_by`:
a USB plug re-reads what the host holds, never every PCI function's sysfs
files), builds the World, reconciles, starts the plan's steps (their libvirt
calls issued at once) and then hands the plan to the parts. A bus call that
changed something waits for a turn after its change (:attr:`Loop.turns`,
:meth:`Loop.next_turn`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from phyllod.core.model import ALL_PARTS, FactsPart, HostFacts, Subsystem
from phyllod.core.plan import Plan, Step, World
from phyllod.core.policy import Policy
from phyllod.core.replan import Reconciled, replan
from phyllod.host import trace
from phyllod.host.udev_source import DeviceGone, DeviceSeen, UdevEvent

#: What each subsystem's uevents can change. A USB device (its add, its
#: interfaces, a driver's bind, its removal) brings or takes disks, mounts
#: and keyboards, never a PCI function. A PCI uevent changes functions,
#: drivers and groups, and also what sits below a controller (its disks and
#: keyboards come and go with its driver). A mount, a swapon or a block
#: device makes no uevent of these two: the holds watch (host/holds_watch)
#: hears those and stales the same part; a reload reads everything ("look
#: again").
_STALED: dict[str, frozenset[FactsPart]] = {
    Subsystem.USB: frozenset({FactsPart.HOLDS}), Subsystem.PCI: ALL_PARTS}


def staled_by(event: UdevEvent) -> frozenset[FactsPart]:
    """The parts of the host facts ``event`` may have changed (all, for a rescan
    after lost events)."""
    if isinstance(event, DeviceSeen):
        return _STALED[event.device.subsystem]
    if isinstance(event, DeviceGone):  # only its id is known: "usb:1-2", "pci:0000:…"
        return _STALED.get(event.device_id.partition(":")[0], ALL_PARTS)
    return ALL_PARTS


class Loop:
    """Whether a reconcile is asked for, how many turns were taken, the host facts
    as last read (and which parts a uevent made stale), the next wake-up."""

    def __init__(self, *, read_facts: Callable[[frozenset[FactsPart]], HostFacts],
                 policy: Callable[[], Policy | None],
                 world: Callable[[float, HostFacts], World],
                 after: Callable[[Plan], None],
                 start_steps: Callable[[Iterable[Step]], None],
                 stopping: Callable[[], bool]) -> None:
        self._read = read_facts
        self._policy = policy
        self._world = world
        self._after = after
        self._start_steps = start_steps
        self._stopping = stopping
        self.kicked = False
        #: Bumped by every turn; a bus call waits for one after its change.
        self.turns = 0
        self._turned = asyncio.Event()
        self._wake: asyncio.TimerHandle | None = None
        self._stale: set[FactsPart] = set()
        #: How many times host facts were read (any part), and each part.
        self.facts_reads = 0
        self.part_reads = dict.fromkeys(FactsPart, 0)
        #: The last turn's plan and what the next one builds on.
        self.reconciled: Reconciled | None = None
        self.host = HostFacts()
        self.read_facts()

    def kick(self) -> None:
        """Ask for a reconcile soon; many kicks in one loop turn make one."""
        if not self.kicked:
            self.kicked = True
            asyncio.get_running_loop().call_soon(self.turn)

    def facts_changed(self, parts: frozenset[FactsPart] = ALL_PARTS) -> None:
        """A uevent came: ``parts`` are read again before the next decision."""
        self._stale |= parts

    def read_facts(self) -> HostFacts:
        """Read all the host facts now (at start, and on reload: mounts and drivers
        change without uevents)."""
        self._stale = set(ALL_PARTS)
        return self.facts()

    def facts(self) -> HostFacts:
        """The host facts, the parts a uevent made stale read again."""
        if self._stale:
            parts = frozenset(self._stale)
            self._stale = set()
            self.facts_reads += 1
            for part in parts:
                self.part_reads[part] += 1
            fresh = self._read(parts)
            self.host = fresh if parts == ALL_PARTS else self.host.merged(fresh, parts)
        return self.host

    def turn(self) -> None:
        """Reconcile the world as it is now, and act on the plan (replan: the same plan
        as reconcile's, planning again only what changed since the last turn)."""
        self.kicked = False
        trace.point("turn-start", self.turns)
        loop = asyncio.get_running_loop()
        facts = self.facts()
        trace.point("turn-facts", self.turns)
        self.reconciled = replan(self.reconciled, self._policy(), self._world(loop.time(), facts))
        trace.point("turn-planned", self.turns)
        plan = self.reconciled.plan
        stopping = self._stopping()
        if not stopping:  # first: the calls are issued before the parts' bookkeeping
            self._start_steps(plan.steps)
        self._after(plan)
        self.turns += 1
        self._turned.set()
        self._turned = asyncio.Event()
        self.cancel()
        if not stopping and plan.wake_at is not None:
            self._wake = loop.call_at(plan.wake_at, self.kick)
        trace.point("turn-end", self.turns)

    async def next_turn(self, timeout: float) -> None:
        """Wait for the next turn, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._turned.wait(), timeout)

    def cancel(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
