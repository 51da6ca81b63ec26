"""Plugs: the devices present, as udev reports them, and which plug each one is.

An unplug is believed only after the device's debounce window (a KVM switch,
a flaky cable, a firmware reset make devices vanish and return; fwupd's device
list owns its replug delay the same way). A device back within its window is
the same plug: its guest and its answer are kept. A new enumeration, or
another device in the port, is a new plug: the question about the previous
one is void. Which plug a udev event is, and how long an unplug is doubted,
are pure functions (:func:`judge_plug`, :func:`unplug_wait`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from enum import StrEnum

from phyllod.core.model import Device, Subsystem
from phyllod.core.serial_trust import judged_alike, kind, rejudged, with_identities
from phyllod.host.systemd_glue import MessageId
from phyllod.host.udev_source import DeviceGone, DeviceSeen, DevicesRescanned, UdevEvent
from phyllod.service.journal import fields, log
from phyllod.service.timers import Timers


class PlugChange(StrEnum):
    RETURNED = "returned"  # back within its debounce window: the same plug
    NEW = "new"  # first seen, enumerated again, or another device in the port
    SAME = "same"  # a later event of the plug already known (a bind, a change)


def same_device(a: Device, b: Device) -> bool:
    """Whether ``b`` is ``a`` enumerated again (reset, re-plug, resume), not another device.

    Both are in the same port; ``b`` comes straight from udev, its identity
    not yet judged against the present set, so the serial itself is compared.
    """
    return (a.vendor, a.product, a.serial) == (b.vendor, b.product, b.serial)


def judge_plug(previous: Device | None, seen: Device, returned: bool) -> PlugChange:
    """Which plug ``seen`` is, given the device known in its port and whether that one
    had vanished and was still within its debounce window."""
    if previous is not None and returned and same_device(previous, seen):
        return PlugChange.RETURNED
    if previous is None or previous.devnum != seen.devnum or not same_device(previous, seen):
        return PlugChange.NEW
    return PlugChange.SAME


def unplug_wait(debounce: float, asleep: bool, resume_settle: float) -> float:
    """How long a vanished device is waited for: its debounce window, and around a
    sleep at least the resume settle time (resume re-enumerates slowly)."""
    return max(debounce, resume_settle) if asleep else debounce


class Plugs:
    """The present set (by device id), the vanished devices' windows, and the
    devices as last judged by serial_trust (whose choices went where)."""

    def __init__(self, *, debounce: Callable[[Device], float], asleep: Callable[[], bool],
                 stopping: Callable[[], bool], resume_settle: float,
                 new_plug: Callable[[str], None], plug_ended: Callable[[str, str], None],
                 forget_failure: Callable[[str], None],
                 host_bound: Callable[[Device, str], None], unwatch_bind: Callable[[str], None],
                 identities_judged: Callable[[dict[str, Device], dict[str, Device],
                                              Collection[str] | None], None],
                 changed: Callable[[], None]) -> None:
        self._debounce = debounce
        self._asleep = asleep
        self._stopping = stopping
        self._resume_settle = resume_settle
        self._new_plug = new_plug
        self._plug_ended = plug_ended
        self._forget_failure = forget_failure
        self._host_bound = host_bound
        self._unwatch_bind = unwatch_bind
        self._identities_judged = identities_judged
        self._changed = changed
        self.devices: dict[str, Device] = {}
        self.judged: dict[str, Device] = {}
        #: Vanished devices (by id, still in ``devices``) → when phyllod stops waiting.
        self.vanished: dict[str, float] = {}
        self._windows: Timers[str] = Timers()

    def present_at_start(self, devices: Iterable[Device]) -> None:
        """The coldplug: "present at start", as opposed to plugged in (USBGuard's words)."""
        for d in devices:
            self.devices[d.id] = d
            log.info("%s present at start", d.describe(), **fields(device=d.id))
        self._judge_identities()
        pci = sum(d.subsystem is Subsystem.PCI for d in self.devices.values())
        log.info("%d USB and %d PCI devices present at start", len(self.devices) - pci, pci)

    def on_udev(self, event: UdevEvent) -> None:
        """One udev event; the present set is judged again (serial_trust) only if the
        event may change a judgement: a bind or a reset of a known device does
        not, and judging every device on each of a plug's events cost ~0.4 ms
        of its turn at desk scale (issue 18)."""
        if isinstance(event, DeviceGone):
            self._vanish(event.device_id)  # judged when the window ends (_gone)
        elif isinstance(event, DeviceSeen):
            touched = self._seen(event)
            if touched:
                self._judge_identities(touched)
        elif isinstance(event, DevicesRescanned):
            self._rescanned(event.devices)
            self._judge_identities()
        self._changed()

    def on_slot(self, slot: str) -> Device | None:
        return next((d for d in self.devices.values() if d.slot == slot), None)

    def cancel(self) -> None:
        self._windows.stop_all()

    def _rescanned(self, devices: Iterable[Device]) -> None:
        """udev's monitor overflowed and the present set was listed again."""
        for device_id in list(self.vanished):
            self._stop_waiting(device_id)
        fresh = {d.id: d for d in devices}
        for d in self.devices.values():
            if fresh.get(d.id) != d:
                self._forget_failure(d.slot)
        for d in fresh.values():
            before = self.devices.get(d.id)
            if before is None or before.devnum != d.devnum:
                self._new_plug(d.id)
        for device_id in self.devices.keys() - fresh.keys():
            self._plug_ended(device_id, "unplugged")
        self.devices = fresh

    def _vanish(self, device_id: str) -> None:
        """A ``remove``: believe it only after the device's debounce window."""
        d = self.devices.get(device_id)
        if d is None or device_id in self.vanished:
            return
        wait = unplug_wait(self._debounce(d), self._asleep(), self._resume_settle)
        if wait <= 0 or self._stopping():
            self._gone(device_id)
            return
        loop = asyncio.get_running_loop()
        self.vanished[device_id] = loop.time() + wait
        self._windows.start(device_id, wait, self._gone, device_id)
        log.info("%s vanished; waiting %.1fs for it to return", d.describe(), wait,
                 **fields(device=d.id))

    def _stop_waiting(self, device_id: str) -> None:
        self.vanished.pop(device_id, None)
        self._windows.stop(device_id)

    def _gone(self, device_id: str) -> None:
        """The device did not return in time (or has no window): it is unplugged."""
        self._stop_waiting(device_id)
        d = self.devices.pop(device_id, None)
        self._plug_ended(device_id, "unplugged")
        if d is not None:
            self._forget_failure(d.slot)
            self._unwatch_bind(d.slot)
            log.info("%s unplugged", d.describe(),
                     **fields(device=d.id, event=MessageId.DEVICE_REMOVED))
            self._judge_identities((d,))
        self._changed()

    def _seen(self, event: DeviceSeen) -> tuple[Device, ...]:
        """Take the device in; the devices (as it was, as it is) whose kinds must be
        judged again, none if its judgement cannot change."""
        d = event.device
        previous = self.devices.get(d.id)
        if event.host_driver:
            self._host_bound(d, event.host_driver)
        change = judge_plug(previous, d, returned=d.id in self.vanished)
        self._stop_waiting(d.id)
        alike = previous is not None and judged_alike(previous, d)
        if alike and (previous.serial_doubt or previous.serial_twins):
            d = replace(d, serial_doubt=previous.serial_doubt, serial_twins=previous.serial_twins)
        self.devices[d.id] = d
        if change is PlugChange.RETURNED:
            log.info("%s returned (bus %d device %d)", d.describe(), d.busnum, d.devnum,
                     **fields(device=d.id, event=MessageId.DEVICE_ADDED))
            self._forget_failure(d.slot)
        elif change is PlugChange.NEW:
            self._new_plug(d.id)
            self._forget_failure(d.slot)
            log.info("%s plugged in (%s %s)", d.describe(), event.source, event.action,
                     **fields(device=d.id, event=MessageId.DEVICE_ADDED))
        if alike:
            return ()
        return (d,) if previous is None else (previous, d)

    def _judge_identities(self, touched: Collection[Device] | None = None) -> None:
        """After every change to the present set: which serials are identity
        (serial_trust); the choices follow a device whose identity changed.

        ``touched``: the devices (as they were, as they are) the change was
        about: only their kinds are judged again and only the devices judged
        anew are looked at for their choices (None: all of them, at start and
        after a rescan). Judging the whole set cost ~3 ms of a plug at 500
        devices (issue 18); tests/unit/service/test_plugs.py holds the two
        ways to the same result on random plugs and unplugs.
        """
        ids: Collection[str] | None = None
        if touched is None:
            self.devices = with_identities(self.devices)
        else:
            changed = rejudged(self.devices, {kind(d) for d in touched})
            self.devices.update(changed)
            ids = changed.keys() | {d.id for d in touched}
        before, self.judged = self.judged, dict(self.devices)
        for device_id in self.devices.keys() if ids is None else ids:
            d = self.devices.get(device_id)
            if d is not None and d.serial_doubt and before.get(d.id) != d:
                log.info("%s: %s; identified by its port", d.describe(), d.serial_doubt,
                         **fields(device=d.id))
        self._identities_judged(before, self.judged, ids)
