"""udev adapter: USB devices from pyudev, as model values and events.

pyudev has no asyncio support of its own; the monitor's netlink socket is put
on the event loop with ``add_reader`` and drained without blocking (as
pyudev's own GLib glue does): no observer thread, no polling. The monitor is
subscribed *before* the coldplug enumeration so no device can fall between
the two (bolt and bleak do the same).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

from phyllod.core import kernel_values as kv
from phyllod.core.device_text import REPLACEMENT, clean
from phyllod.core.model import Device, Subsystem
from phyllod.host import trace, usb_sysfs
from phyllod.host.uevent_copies import Copy, UeventCopies

log = logging.getLogger(__name__)

#: Complaints about bad values already logged (a device sends many events).
_reported = kv.ReportedOnce()


def _attr(dev: pyudev.Device, name: str) -> str:
    """A sysfs attribute as cleaned text (device strings and numbers alike), "" if absent."""
    try:
        return clean(dev.attributes.get(name))
    except (OSError, KeyError):
        return ""


def _prop(dev: pyudev.Device, name: str) -> str:
    """A udev property, "" if absent or not UTF-8 (pyudev decodes strictly)."""
    try:
        return dev.properties.get(name, "")
    except UnicodeDecodeError:
        return ""


def _driver(dev: pyudev.Device) -> str:
    try:
        return kv.driver_name(dev.driver or "")
    except UnicodeDecodeError:
        return REPLACEMENT


def _sys_name(dev: pyudev.Device) -> str:
    try:
        return dev.sys_name
    except UnicodeDecodeError:
        return ""


class _Invalid(ValueError):
    """An identity field the kernel would never report: the device cannot be named."""


def _where(dev: pyudev.Device) -> str:
    return clean(dev.sys_path, 200)


def _identity(dev: pyudev.Device, what: str, value: object, expected: str) -> _Invalid:
    """The device cannot be used: say so once (per device and value), and why."""
    if _reported.first(dev.sys_path, what, str(value)):
        log.warning("ignoring the device at %s: its %s %s is not %s", _where(dev), what,
                    kv.shown(value), expected)
    return _Invalid(what)


def _optional(dev: pyudev.Device, what: str, value: str, expected: str,
              parsed: str | None) -> str:
    """``parsed``, or "" (with a line, once) when ``value`` was there but not of its shape."""
    if parsed is not None or not value:
        return parsed or ""
    if _reported.first(dev.sys_path, what, value):
        log.warning("%s: %s %s is not %s; left empty", _where(dev), what, kv.shown(value),
                    expected)
    return ""


def _number(dev: pyudev.Device, what: str, attr: str, prop: str, allowed: range) -> int:
    """A bus or device number (the attribute, else the event's property) in ``allowed``."""
    value = _attr(dev, attr) or _prop(dev, prop)
    number = kv.decimal(value, allowed)
    if number is None:
        raise _identity(dev, what, value, f"a number from {allowed.start} to {allowed.stop - 1}")
    return number


def _usb_id(dev: pyudev.Device, what: str, attr: str, prop: str) -> str:
    value = _attr(dev, attr) or _prop(dev, prop)
    parsed = kv.hex_id(value, 4)
    if parsed is None:
        raise _identity(dev, what, value, "4 hex digits")
    return parsed


def _hex_field(dev: pyudev.Device, what: str, value: str, digits: int,
               padded: bool = True) -> str:
    return _optional(dev, what, value, f"{digits} hex digits",
                     kv.hex_id(value, digits, padded))


def _classes_told(dev: pyudev.Device) -> tuple[str, ...]:
    """The interface classes udev's usb_id put in the device's ``ID_USB_INTERFACES``."""
    prop = _prop(dev, "ID_USB_INTERFACES")
    return tuple(c.lower() for c in prop.split(":") if re.fullmatch(r"[0-9a-fA-F]{6}", c))


def _interface_classes(dev: pyudev.Device) -> tuple[tuple[str, ...], bool]:
    """Class/subclass/protocol of each interface (``e00101``), in order, and whether
    that is all of them.

    udev's usb_id builtin puts them in ``ID_USB_INTERFACES`` when it handles
    the device's ``add``, before the interface devices exist; the kernel's
    own uevent lacks the property, and the same is computed from the
    device's descriptors; the children are the last resort (an interface may
    still be on its way).
    """
    told = _classes_told(dev)
    if told:
        return told, True
    described = usb_sysfs.interface_classes(dev.sys_path)
    if described:
        return described, True
    found = []
    for child in dev.children:
        if _prop(child, "DEVTYPE") == "usb_interface":
            triple = "".join(_attr(child, a) for a in
                             ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol"))
            if re.fullmatch(r"[0-9a-fA-F]{6}", triple):
                found.append(triple.lower())
    return tuple(found), False


def _iommu_group(dev: pyudev.Device) -> int | None:
    """The IOMMU group number; libudev cannot read symlink attributes, os.readlink can."""
    try:
        target = os.readlink(os.path.join(dev.sys_path, "iommu_group"))
    except OSError:
        return None
    group = kv.iommu_group(target)
    if group is None and _reported.first(dev.sys_path, "iommu_group", target):
        log.warning("%s: its iommu_group link %s names no IOMMU group; taken as none",
                    _where(dev), kv.shown(target))
    return group


def _pci_class(dev: pyudev.Device) -> str:
    attr = _attr(dev, "class")
    if attr:
        return _hex_field(dev, "class", attr, 6)
    return _hex_field(dev, "PCI_CLASS", _prop(dev, "PCI_CLASS"), 6, padded=False)


def is_pci_device(dev: pyudev.Device) -> bool:
    """A PCI function that could be passed: bridges and ports (class 06xx) only route."""
    return dev.subsystem == "pci" and not _pci_class(dev).startswith("06")


def pci_device(dev: pyudev.Device) -> Device | None:
    """Translate a pyudev ``pci`` device into the model; None if it cannot be named."""
    address = kv.pci_address(_sys_name(dev))
    if address is None:
        _identity(dev, "PCI address", _sys_name(dev), "of the form 0000:03:00.0")
        return None
    vendor, _, product = _prop(dev, "PCI_ID").lower().partition(":")
    return Device(
        subsystem=Subsystem.PCI,
        sys_path=dev.sys_path,
        address=address,
        vendor=_hex_field(dev, "vendor", _attr(dev, "vendor") or vendor, 4),
        product=_hex_field(dev, "device", _attr(dev, "device") or product, 4),
        device_class=_pci_class(dev),
        iommu_group=_iommu_group(dev),
        driver=_driver(dev),
        vendor_db=clean(_prop(dev, "ID_VENDOR_FROM_DATABASE")),
        model_db=clean(_prop(dev, "ID_MODEL_FROM_DATABASE")),
    )


def _addressable(dev: pyudev.Device) -> bool:
    """Not in the middle of a reset: during one the kernel reports device number 0
    (a ``change`` with DEVNUM=000, then one with the number back), which no
    hostdev can name."""
    # The event's own DEVNUM first: sysfs may already show the number back. Any
    # other bad number is no reset: usb_device refuses it, with a log line.
    return kv.decimal(_prop(dev, "DEVNUM") or _attr(dev, "devnum"), range(1)) is None


def is_usb_device(dev: pyudev.Device) -> bool:
    """A real USB device (not an interface, not a root hub)."""
    return (dev.subsystem == "usb" and _prop(dev, "DEVTYPE") == "usb_device"
            and not _sys_name(dev).startswith("usb"))


def usb_device(dev: pyudev.Device) -> Device | None:
    """Translate a pyudev ``usb_device`` into the model; None if it cannot be named.

    Its place (the port path), bus and device number (what libvirt is told) and
    ids are its identity: one the kernel would never report leaves the device
    out, said once in the log. A bad device class is left empty.
    """
    return usb_device_told(dev)[0]


def usb_device_told(dev: pyudev.Device) -> tuple[Device | None, bool]:
    """:func:`usb_device`, and whether the device told all its interface classes
    (udev's property, or its descriptors): its interfaces' ``add`` then tell nothing new."""
    try:
        return _usb_device(dev)
    except _Invalid:
        return None, False


def _usb_device(dev: pyudev.Device) -> tuple[Device, bool]:
    port = _sys_name(dev)
    place = kv.usb_port(port)
    if place is None:
        raise _identity(dev, "port path", port, "a kernel port path such as 1-2.3")
    busnum = _number(dev, "bus number", "busnum", "BUSNUM", kv.USB_BUS_NUMBERS)
    if busnum != place[0]:
        raise _identity(dev, "bus number", busnum, f"that of its port path {port}")
    classes, told = _interface_classes(dev)
    return Device(
        subsystem=Subsystem.USB,
        sys_path=dev.sys_path,
        port=port,
        busnum=busnum,
        devnum=_number(dev, "device number", "devnum", "DEVNUM", kv.USB_DEVICE_NUMBERS),
        vendor=_usb_id(dev, "vendor id", "idVendor", "ID_VENDOR_ID"),
        product=_usb_id(dev, "product id", "idProduct", "ID_MODEL_ID"),
        serial=_attr(dev, "serial") or clean(_prop(dev, "ID_SERIAL_SHORT")),
        manufacturer=_attr(dev, "manufacturer"),
        product_name=_attr(dev, "product"),
        device_class=_hex_field(dev, "bDeviceClass", _attr(dev, "bDeviceClass"), 2),
        interface_classes=classes[:kv.USB_MAX_INTERFACES],
        driver=_driver(dev),
        peer_ports=usb_sysfs.peer_ports(_sys_name(dev), dev.sys_path),
        vendor_db=clean(_prop(dev, "ID_VENDOR_FROM_DATABASE")),
        model_db=clean(_prop(dev, "ID_MODEL_FROM_DATABASE")),
    ), told


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


def present_devices(context: pyudev.Context | None = None) -> list[Device]:
    """USB and PCI devices present now (coldplug, and ``check-policy``)."""
    context = context or pyudev.Context()
    usb = [usb_device(d) for d in context.list_devices(subsystem="usb", DEVTYPE="usb_device")
           if is_usb_device(d) and _addressable(d)]
    pci = [pci_device(d) for d in context.list_devices(subsystem="pci") if is_pci_device(d)]
    return [d for d in usb + pci if d is not None]


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
        interface = _prop(dev, "DEVTYPE") == "usb_interface"
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
        devtype = _prop(dev, "DEVTYPE")
        if devtype == "usb_interface":
            # The interfaces complete the parent's identity (e.g. Bluetooth).
            if action not in ("add", "bind", "change") or (
                    action == "add" and os.path.dirname(dev.sys_path) in self._told):
                return None
            parent = dev.find_parent("usb", "usb_device")
            if parent is None or not is_usb_device(parent) or not _addressable(parent):
                return None
            device = usb_device(parent)
            driver = _driver(dev) if action == "bind" else ""
            return DeviceSeen(device, "change", driver if driver not in ("", "usbfs") else "") \
                if device is not None else None
        if devtype != "usb_device" or _sys_name(dev).startswith("usb"):
            return None
        if action == "remove":
            self._told.discard(dev.sys_path)
            port = _sys_name(dev)
            return DeviceGone(f"{Subsystem.USB}:{port}") if kv.usb_port(port) else None
        if action == "unbind" or not _addressable(dev):
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
            address = kv.pci_address(_sys_name(dev))
            return DeviceGone(f"{Subsystem.PCI}:{address}") if address else None
        if not is_pci_device(dev):
            return None
        device = pci_device(dev)
        return DeviceSeen(device, action) if device is not None else None
