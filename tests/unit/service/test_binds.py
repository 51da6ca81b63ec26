"""The host binds part: a host driver binding a device in a guest, watched then judged."""

from __future__ import annotations

import asyncio

import pytest
from factories import guest, held, usb

from phyllod.core.guest_runs import HostBind, Run, run_of
from phyllod.core.model import Assignment, GuestState, State
from phyllod.service.binds import HostBinds, after_grace

KBD = usb()
WORK = guest("work", hostdevs=(held(KBD),))
RUN = run_of(WORK)
BIND = HostBind(run=RUN, guest="work", alias=KBD.alias, driver="usbhid")


@pytest.mark.parametrize(("guest_now", "ending", "present", "kept"), [
    (WORK, set(), True, True),  # the guest runs on with a dead hostdev: taken back
    (WORK, set(), False, False),  # the device left meanwhile
    (WORK, {RUN}, True, False),  # libvirt said the run is ending: let go
    (guest("work", state=GuestState.SHUTOFF), set(), True, False),  # it stopped
    (guest("work"), set(), True, False),  # the guest released the hostdev
    (guest("work", hostdevs=(held(KBD),), run=2), set(), True, False),  # another run
])
def test_after_grace(guest_now, ending, present, kept) -> None:
    mark = after_grace(BIND, guest_now, ending, present)
    assert (mark is not None) is kept
    if kept:
        assert mark.checked


class Rig:
    """A HostBinds part over one guest whose re-read the test decides."""

    def __init__(self, now: object, later: object, ending: set[Run],
                 drivers: tuple[str, ...] = ("usbhid",)) -> None:
        self.guests = {"work": now}
        self.drivers_read = 0
        self.drivers = drivers
        self.later = later
        self.ending = ending
        self.binds = HostBinds(
            release_grace=0.01, guests=lambda: self.guests,
            assignment=lambda i: Assignment(device_id=i, state=State.ATTACHED, guest="work"),
            inflight=lambda: set(), ending=lambda: self.ending,
            on_slot=lambda slot: KBD if slot == KBD.slot else None,
            host_drivers=self.host_drivers,
            refresh_guest=self.refresh, spawn=lambda c: asyncio.ensure_future(c),
            changed=lambda: None)

    async def refresh(self, name: str) -> None:
        self.guests[name] = self.later

    def host_drivers(self, d: object) -> tuple[str, ...]:
        self.drivers_read += 1
        return self.drivers


@pytest.mark.parametrize(("ending", "later", "watched", "after"), [
    # while the guest holds the device and runs on: watched, then taken back (repair)
    (set(), WORK, True, "taken back"),
    # the guest stops during the grace window: watched, then let go
    (set(), guest("work", state=GuestState.SHUTOFF), True, "let go"),
    # while libvirt says the guest is stopping: let go at once, nothing watched
    ({RUN}, WORK, False, "let go"),
])
async def test_a_bind_while_held_vs_while_stopping(ending, later, watched, after) -> None:
    rig = Rig(WORK, later, ending)
    rig.binds.host_bound(KBD, "usbhid")
    assert (KBD.slot in rig.binds.marks) is watched
    await asyncio.sleep(0.05)
    mark = rig.binds.marks.get(KBD.slot)
    assert ("taken back" if mark is not None and mark.checked else "let go") == after


@pytest.mark.parametrize(("drivers", "after"), [
    (("usbhid",), "taken back"),  # the host driver still holds an interface
    ((), "let go"),  # a reset in the guest: the kernel rebound, QEMU claimed it back
])
async def test_a_bind_is_judged_on_the_drivers_bound_after_the_grace(drivers, after) -> None:
    rig = Rig(WORK, WORK, set(), drivers)
    rig.binds.host_bound(KBD, "usbhid")
    await asyncio.sleep(0.05)
    mark = rig.binds.marks.get(KBD.slot)
    assert ("taken back" if mark is not None and mark.checked else "let go") == after
    assert rig.drivers_read == 1, "read once, when the grace window is over"


async def test_a_bind_on_a_device_phyllod_did_not_place_is_not_watched() -> None:
    rig = Rig(guest("work"), WORK, set())  # the guest holds no hostdev of phyllod's
    rig.binds.host_bound(KBD, "usbhid")
    assert rig.binds.marks == {}
