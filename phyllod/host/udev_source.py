"""udev adapter: USB and PCI devices from pyudev, as events on the asyncio loop.

pyudev has no asyncio support of its own; the monitor's netlink socket is put
on the event loop with ``add_reader`` and drained without blocking (as
pyudev's own GLib glue does): no observer thread, no polling. The monitor is
subscribed *before* the coldplug enumeration so no device can fall between
the two (bolt and bleak do the same). What each device is comes from the
adapter's translation part (host/udev_devices).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

from phyllod.core import kernel_values as kv
from phyllod.core.model import Device, Subsystem
from phyllod.host import trace
from phyllod.host.udev_devices import (
    addressable,
    driver,
    is_pci_device,
    is_usb_device,
    pci_device,
    present_devices,
    prop,
    sys_name,
    usb_device,
    usb_device_told,
)
from phyllod.host.uevent_copies import Copy, UeventCopies

#: Importable from here too: the coldplug's and ``check-policy``'s present set.
__all__ = ["DeviceGone", "DeviceSeen", "DevicesRescanned", "UdevEvent", "UdevWatcher",
           "present_devices"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A device appeared or changed (interfaces bound, attributes readable).

    ``host_driver`` names the host driver just bound to one of its interfaces
    (``usbhid``): for a device a guest holds, the host took it back (a reset
    or a re-authorization on the host), so the guest lost it.
    """

    device: Device
    action: str
    host_driver: str = ""
    #: Whose uevent told it: "kernel" (a plug taken at the kernel's ``bind``) or "udev".
    source: str = "udev"


@dataclass(frozen=True, slots=True)
class DeviceGone:
    """A device was removed; only its place is known (udev's ``remove`` lacks ids)."""

    device_id: str


@dataclass(frozen=True, slots=True)
class DevicesRescanned:
    """Events were lost (socket overflow): this is the whole present set."""

    devices: tuple[Device, ...]


UdevEvent = DeviceSeen | DeviceGone | DevicesRescanned


class UdevWatcher:
    """Coldplug then hotplug of USB and PCI devices, delivered on the asyncio loop.

    Two monitors: udev's, for every event, and the kernel's, for a USB device's
    ``bind`` (its probe is over: the plug) and ``remove`` only, which come before
    udev's copies (host/uevent_copies says why, and how copies are told apart).
    """

    def __init__(self, on_event: Callable[[UdevEvent], None]) -> None:
        self._on_event = on_event
        self._context = pyudev.Context()
        self._monitors: list[pyudev.Monitor] = []
        self._kernel: pyudev.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The USB devices (by sysfs path) whose own uevent named all their
        #: interfaces (ID_USB_INTERFACES, or the descriptors): the ``add`` of each
        #: interface then tells nothing new, and is dropped rather than
        #: translating the device again and making a loop turn of its own
        #: (issue 18: it held a plug's turn back ~0.6 ms). Bounded by the devices
        #: present: a ``remove`` takes its device out, a rescan empties it.
        self._told: set[str] = set()
        self._copies: UeventCopies[UdevEvent | None] = UeventCopies()

    def start(self, loop: asyncio.AbstractEventLoop) -> list[Device]:
        """Subscribe, then enumerate; returns the devices present at start."""
        self._loop = loop
        monitor = pyudev.Monitor.from_netlink(self._context, source="udev")
        monitor.filter_by("usb")
        monitor.filter_by("pci")
        monitor.start()
        self._listen(loop, monitor)
        try:
            kernel = pyudev.Monitor.from_netlink(self._context, source="kernel")
            kernel.filter_by("usb", "usb_device")
            kernel.start()
        except (OSError, ValueError) as e:
            log.warning("cannot listen to the kernel's uevents (%s): udev's alone serve", e)
        else:
            self._kernel = kernel
            self._listen(loop, kernel)
        return present_devices(self._context)

    def _listen(self, loop: asyncio.AbstractEventLoop, monitor: pyudev.Monitor) -> None:
        self._monitors.append(monitor)
        loop.add_reader(monitor.fileno(), self._drain, monitor)

    def stop(self) -> None:
        if self._loop is not None:
            for monitor in self._monitors:
                self._loop.remove_reader(monitor.fileno())
        self._monitors = []
        self._kernel = None

    def _drain(self, monitor: pyudev.Monitor) -> None:
        while True:
            try:
                dev = monitor.poll(timeout=0)
            except OSError as e:  # ENOBUFS: the socket overflowed, events were lost
                log.warning("udev monitor: %s; rescanning all devices", e)
                self._told.clear()
                self._copies.forget()
                self._on_event(DevicesRescanned(tuple(present_devices(self._context))))
                continue
            if dev is None:
                return
            trace.point("udev-received", dev)
            try:
                event = self._take(dev, monitor is self._kernel)
            except Exception:  # a malformed device must not stop the daemon
                log.exception("cannot read udev device %s", dev.sys_path)
                continue
            if event is not None:
                self._on_event(event)
                trace.point("udev-handled", dev)

    def _take(self, dev: pyudev.Device, from_kernel: bool) -> UdevEvent | None:
        """The event to deliver for ``dev``, if any: the first copy of a plug or an
        unplug, any other event of udev's that is not stale."""
        action = dev.action or "change"
        if dev.subsystem == "pci":
            return self._translate_pci(dev, action)
        interface = prop(dev, "DEVTYPE") == "usb_interface"
        paired = (self._kernel is not None and not interface and action in ("bind", "remove")
                  and is_usb_device(dev))
        if from_kernel and not paired:
            return None  # udev's copy of it is the one taken
        devpath = os.path.dirname(dev.device_path) if interface else dev.device_path
        key = action if paired else ""
        copy, first = self._copies.arrived(devpath, key, dev.sequence_number)
        if copy is Copy.STALE:
            return None
        if copy is Copy.SECOND:
            if action == "bind" and not from_kernel:  # after the turn the first one asked for
                asyncio.get_running_loop().call_soon(self._second_bind, dev, first)
            return None
        event = self._translate(dev, action)
        if isinstance(event, DeviceSeen) and from_kernel:
            event = DeviceSeen(event.device, event.action, source="kernel")
        if event is not None or paired:
            self._copies.delivered(devpath, key, dev.sequence_number, event, paired)
        return event

    def _second_bind(self, dev: pyudev.Device, first: UdevEvent | None) -> None:
        """udev's copy of a plug the kernel's ``bind`` brought: a change if it tells more
        (the hardware database's names), unless the device's remove came meanwhile."""
        if not self._copies.current(dev.device_path, dev.sequence_number):
            return
        try:
            event = self._translate(dev, "bind")
        except Exception:  # a malformed device must not stop the daemon
            log.exception("cannot read udev device %s", dev.sys_path)
            return
        if isinstance(event, DeviceSeen) and (
                not isinstance(first, DeviceSeen) or event.device != first.device):
            self._on_event(DeviceSeen(event.device, "change"))

    def _translate(self, dev: pyudev.Device, action: str) -> UdevEvent | None:
        devtype = prop(dev, "DEVTYPE")
        if devtype == "usb_interface":
            # The interfaces complete the parent's identity (e.g. Bluetooth).
            if action not in ("add", "bind", "change") or (
                    action == "add" and os.path.dirname(dev.sys_path) in self._told):
                return None
            parent = dev.find_parent("usb", "usb_device")
            if parent is None or not is_usb_device(parent) or not addressable(parent):
                return None
            device = usb_device(parent)
            bound = driver(dev) if action == "bind" else ""
            return DeviceSeen(device, "change", bound if bound not in ("", "usbfs") else "") \
                if device is not None else None
        if devtype != "usb_device" or sys_name(dev).startswith("usb"):
            return None
        if action == "remove":
            self._told.discard(dev.sys_path)
            port = sys_name(dev)
            return DeviceGone(f"{Subsystem.USB}:{port}") if kv.usb_port(port) else None
        if action == "unbind" or not addressable(dev):
            return None
        device, told = usb_device_told(dev)
        if device is not None and told:
            self._told.add(dev.sys_path)
        else:
            self._told.discard(dev.sys_path)
        return DeviceSeen(device, action) if device is not None else None

    @staticmethod
    def _translate_pci(dev: pyudev.Device, action: str) -> UdevEvent | None:
        """Every PCI event, bind and unbind included: a driver change alters group viability."""
        if action == "remove":
            address = kv.pci_address(sys_name(dev))
            return DeviceGone(f"{Subsystem.PCI}:{address}") if address else None
        if not is_pci_device(dev):
            return None
        device = pci_device(dev)
        return DeviceSeen(device, action) if device is not None else None
