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
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

from phyllod.model import Device, Subsystem

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(raw: bytes | str | None) -> str:
    """A device-reported string made safe to keep: decoded, no control characters.

    What a USB device says about itself (serial, names) is attacker-chosen.
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
    )


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A device appeared or changed (interfaces bound, attributes readable)."""

    device: Device
    action: str


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
    """USB devices present now, for one-shot use (``check-policy``)."""
    context = context or pyudev.Context()
    return [usb_device(d) for d in context.list_devices(subsystem="usb", DEVTYPE="usb_device")
            if is_usb_device(d)]


class UdevWatcher:
    """Coldplug then hotplug of USB devices, delivered on the asyncio loop."""

    def __init__(self, on_event: Callable[[UdevEvent], None]) -> None:
        self._on_event = on_event
        self._context = pyudev.Context()
        self._monitor: pyudev.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> list[Device]:
        """Subscribe, then enumerate; returns the devices present at start."""
        monitor = pyudev.Monitor.from_netlink(self._context, source="udev")
        monitor.filter_by("usb")
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
        devtype = dev.properties.get("DEVTYPE")
        if devtype == "usb_interface":
            # The interfaces complete the parent's identity (e.g. Bluetooth).
            if action not in ("add", "bind", "change"):
                return None
            parent = dev.find_parent("usb", "usb_device")
            if parent is None or not is_usb_device(parent):
                return None
            return DeviceSeen(usb_device(parent), "change")
        if devtype != "usb_device" or dev.sys_name.startswith("usb"):
            return None
        if action == "remove":
            return DeviceGone(f"{Subsystem.USB}:{dev.sys_name}")
        if action == "unbind":
            return None
        return DeviceSeen(usb_device(dev), action)
