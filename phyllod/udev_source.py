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

from phyllod.model import Device, Subsystem

log = logging.getLogger(__name__)

# C0/C1 controls, bidi controls (they reorder the rest of a log or terminal line)
# and the line/paragraph separators that str.splitlines and log viewers break on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029"
                      r"\u2066-\u2069]")


def _text(raw: bytes | str | None) -> str:
    """A device-reported string made safe to keep: decoded, no control characters.

    What a USB device says about itself (serial, names) is attacker-chosen; it
    reaches logs, check-policy and D-Bus clients (the applet) without escaping.
    """
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return _CONTROL.sub("\ufffd", raw.strip())[:256]


def _attr(dev: pyudev.Device, name: str) -> str:
    try:
        return _text(dev.attributes.get(name))
    except (OSError, KeyError):
        return ""


def _int(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        return 0


def _interface_classes(dev: pyudev.Device) -> tuple[str, ...]:
    """Class/subclass/protocol of each interface (``e00101``), in order.

    udev's usb_id builtin puts them in ``ID_USB_INTERFACES`` when it handles
    the device's ``add``, before the interface devices exist; the children are
    the fallback.
    """
    prop = dev.properties.get("ID_USB_INTERFACES", "")
    found = [c.lower() for c in prop.split(":") if re.fullmatch(r"[0-9a-fA-F]{6}", c)]
    if found:
        return tuple(found)
    for child in dev.children:
        if child.properties.get("DEVTYPE") == "usb_interface":
            triple = "".join(_attr(child, a) for a in
                             ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol"))
            if re.fullmatch(r"[0-9a-fA-F]{6}", triple):
                found.append(triple.lower())
    return tuple(found)


#: A hub port's directory: ``usb2-port3`` (root hub of bus 2) or ``2-3.1-port4``.
_PORT_DIR = re.compile(r"(?:usb([0-9]{1,3})|([0-9]{1,3}-[0-9]{1,3}(?:\.[0-9]{1,3}){0,6}))"
                       r"-port([0-9]{1,3})")
_PORT_PATH = re.compile(r"[0-9]{1,3}-[0-9]{1,3}(?:\.[0-9]{1,3}){0,6}")


def _port_of(port_dir: str) -> str:
    """The path of the device a hub port holds: ``usb2-port3`` → ``2-3``; "" if no port."""
    m = _PORT_DIR.fullmatch(port_dir)
    if m is None:
        return ""
    bus, hub, number = m.groups()
    return f"{bus}-{number}" if bus else f"{hub}.{number}"


def _peer_ports(dev: pyudev.Device) -> tuple[str, ...]:
    """The other names of the device's physical port (Documentation/ABI/testing/
    sysfs-bus-usb, ``peer``): a USB 3 port is a USB 2 port and a SuperSpeed port,
    and the kernel links the two halves. The device's own port and each hub
    port above it are followed, so a device behind a USB 2 hub in the
    SuperSpeed half's physical port is also named under that half
    (``1-3.1.4`` gives ``2-3.1.4`` when port ``1-3``'s peer is ``2-3``).
    """
    port = dev.sys_name
    if not _PORT_PATH.fullmatch(port):
        return ()
    bus, _, chain = port.partition("-")
    hops = chain.split(".")
    parts = dev.sys_path.split("/")
    found: list[str] = []
    for depth in range(len(hops), 0, -1):
        above = f"{bus}-{'.'.join(hops[:depth])}"
        if above not in parts:
            continue
        here = "/".join(parts[:parts.index(above) + 1])
        try:
            peer = _port_of(os.path.basename(os.readlink(os.path.join(here, "port", "peer"))))
        except OSError:
            continue
        if peer and peer != above:
            rest = ".".join(hops[depth:])
            found.append(f"{peer}.{rest}" if rest else peer)
    return tuple(dict.fromkeys(found))


def _hex(value: str, digits: int) -> str:
    """``0x8086`` → ``8086``; "" if it is not a number of at most ``digits`` hex digits."""
    value = value.lower().removeprefix("0x")
    return value.zfill(digits) if re.fullmatch(rf"[0-9a-f]{{1,{digits}}}", value) else ""


def _iommu_group(dev: pyudev.Device) -> int | None:
    """The IOMMU group number; libudev cannot read symlink attributes, os.readlink can."""
    try:
        return int(os.path.basename(os.readlink(os.path.join(dev.sys_path, "iommu_group"))))
    except (OSError, ValueError):
        return None


def is_pci_device(dev: pyudev.Device) -> bool:
    """A PCI function that could be passed: bridges and ports (class 06xx) only route."""
    code = _hex(_attr(dev, "class") or dev.properties.get("PCI_CLASS", ""), 6)
    return dev.subsystem == "pci" and not code.startswith("06")


def pci_device(dev: pyudev.Device) -> Device:
    """Translate a pyudev ``pci`` device into the model."""
    vendor, _, product = dev.properties.get("PCI_ID", "").partition(":")
    return Device(
        subsystem=Subsystem.PCI,
        sys_path=dev.sys_path,
        address=dev.sys_name,
        vendor=_hex(_attr(dev, "vendor") or vendor, 4),
        product=_hex(_attr(dev, "device") or product, 4),
        device_class=_hex(_attr(dev, "class") or dev.properties.get("PCI_CLASS", ""), 6),
        iommu_group=_iommu_group(dev),
        driver=dev.driver or "",
        vendor_db=_text(dev.properties.get("ID_VENDOR_FROM_DATABASE")),
        model_db=_text(dev.properties.get("ID_MODEL_FROM_DATABASE")),
    )


def _addressable(dev: pyudev.Device) -> bool:
    """Not in the middle of a reset: during one the kernel reports device number 0
    (a ``change`` with DEVNUM=000, then one with the number back), which no
    hostdev can name."""
    # The event's own DEVNUM first: sysfs may already show the number back.
    return _int(dev.properties.get("DEVNUM", "") or _attr(dev, "devnum") or "0") != 0


def is_usb_device(dev: pyudev.Device) -> bool:
    """A real USB device (not an interface, not a root hub)."""
    return (dev.subsystem == "usb" and dev.properties.get("DEVTYPE") == "usb_device"
            and not dev.sys_name.startswith("usb"))


def usb_device(dev: pyudev.Device) -> Device:
    """Translate a pyudev ``usb_device`` into the model."""
    props = dev.properties
    return Device(
        subsystem=Subsystem.USB,
        sys_path=dev.sys_path,
        port=dev.sys_name,
        busnum=_int(_attr(dev, "busnum") or props.get("BUSNUM", "0")),
        devnum=_int(_attr(dev, "devnum") or props.get("DEVNUM", "0")),
        vendor=(_attr(dev, "idVendor") or props.get("ID_VENDOR_ID", "")).lower(),
        product=(_attr(dev, "idProduct") or props.get("ID_MODEL_ID", "")).lower(),
        serial=_attr(dev, "serial") or _text(props.get("ID_SERIAL_SHORT")),
        manufacturer=_attr(dev, "manufacturer"),
        product_name=_attr(dev, "product"),
        device_class=_attr(dev, "bDeviceClass").lower(),
        interface_classes=_interface_classes(dev),
        driver=dev.driver or "",
        peer_ports=_peer_ports(dev),
        vendor_db=_text(props.get("ID_VENDOR_FROM_DATABASE")),
        model_db=_text(props.get("ID_MODEL_FROM_DATABASE")),
    )


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
           if is_usb_device(d)]
    pci = [pci_device(d) for d in context.list_devices(subsystem="pci") if is_pci_device(d)]
    return usb + pci


class UdevWatcher:
    """Coldplug then hotplug of USB and PCI devices, delivered on the asyncio loop."""

    def __init__(self, on_event: Callable[[UdevEvent], None]) -> None:
        self._on_event = on_event
        self._context = pyudev.Context()
        self._monitor: pyudev.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> list[Device]:
        """Subscribe, then enumerate; returns the devices present at start."""
        monitor = pyudev.Monitor.from_netlink(self._context, source="udev")
        monitor.filter_by("usb")
        monitor.filter_by("pci")
        monitor.start()
        self._monitor = monitor
        self._loop = loop
        loop.add_reader(monitor.fileno(), self._drain)
        return present_devices(self._context)

    def stop(self) -> None:
        if self._monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._monitor = None

    def _drain(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                dev = self._monitor.poll(timeout=0)
            except OSError as e:  # ENOBUFS: the socket overflowed, events were lost
                log.warning("udev monitor: %s; rescanning all devices", e)
                self._on_event(DevicesRescanned(tuple(present_devices(self._context))))
                continue
            if dev is None:
                return
            try:
                event = self._translate(dev)
            except Exception:  # a malformed device must not stop the daemon
                log.exception("cannot read udev device %s", dev.sys_path)
                continue
            if event is not None:
                self._on_event(event)

    def _translate(self, dev: pyudev.Device) -> UdevEvent | None:
        action = dev.action or "change"
        if dev.subsystem == "pci":
            return self._translate_pci(dev, action)
        devtype = dev.properties.get("DEVTYPE")
        if devtype == "usb_interface":
            # The interfaces complete the parent's identity (e.g. Bluetooth).
            if action not in ("add", "bind", "change"):
                return None
            parent = dev.find_parent("usb", "usb_device")
            if parent is None or not is_usb_device(parent) or not _addressable(parent):
                return None
            driver = (dev.driver or "") if action == "bind" else ""
            return DeviceSeen(usb_device(parent), "change",
                              driver if driver not in ("", "usbfs") else "")
        if devtype != "usb_device" or dev.sys_name.startswith("usb"):
            return None
        if action == "remove":
            return DeviceGone(f"{Subsystem.USB}:{dev.sys_name}")
        if action == "unbind" or not _addressable(dev):
            return None
        return DeviceSeen(usb_device(dev), action)

    @staticmethod
    def _translate_pci(dev: pyudev.Device, action: str) -> UdevEvent | None:
        """Every PCI event, bind and unbind included: a driver change alters group viability."""
        if action == "remove":
            return DeviceGone(f"{Subsystem.PCI}:{dev.sys_name}")
        if not is_pci_device(dev):
            return None
        return DeviceSeen(pci_device(dev), action)
