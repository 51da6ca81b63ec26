"""udev adapter, its translation part: pyudev devices as model values.

What a device says of itself through libudev and sysfs is hostile until
bounded (core/kernel_values): an identity field the kernel would never
report leaves the device out, said once in the log; any other bad field is
left empty. The watcher (host/udev_source) delivers the events; this says
what each device is, for the coldplug, the hotplug and ``check-policy``.
"""

from __future__ import annotations

import logging
import os
import re

import pyudev

from phyllod.core import kernel_values as kv
from phyllod.core import usb_descriptors
from phyllod.core.device_text import REPLACEMENT, clean
from phyllod.core.model import Device, Subsystem
from phyllod.host import usb_sysfs

log = logging.getLogger(__name__)

#: Complaints about bad values already logged (a device sends many events).
_reported = kv.ReportedOnce()


def _attr(dev: pyudev.Device, name: str) -> str:
    """A sysfs attribute as cleaned text (device strings and numbers alike), "" if absent."""
    try:
        return clean(dev.attributes.get(name))
    except (OSError, KeyError):
        return ""


def prop(dev: pyudev.Device, name: str) -> str:
    """A udev property, "" if absent or not UTF-8 (pyudev decodes strictly)."""
    try:
        return dev.properties.get(name, "")
    except UnicodeDecodeError:
        return ""


def driver(dev: pyudev.Device) -> str:
    try:
        return kv.driver_name(dev.driver or "")
    except UnicodeDecodeError:
        return REPLACEMENT


def sys_name(dev: pyudev.Device) -> str:
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


def _usb_attr(where: str, name: str) -> str:
    """An attribute of the USB device at sysfs path ``where`` as cleaned text, read past
    libudev (host/usb_sysfs says why), "" if absent."""
    return clean(usb_sysfs.attribute(where, name))


def _number(dev: pyudev.Device, what: str, value: str, allowed: range) -> int:
    """A bus or device number (the attribute, else the event's property) in ``allowed``."""
    number = kv.decimal(value, allowed)
    if number is None:
        raise _identity(dev, what, value, f"a number from {allowed.start} to {allowed.stop - 1}")
    return number


def _usb_id(dev: pyudev.Device, what: str, value: str) -> str:
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
    told = prop(dev, "ID_USB_INTERFACES")
    return tuple(c.lower() for c in told.split(":") if re.fullmatch(r"[0-9a-fA-F]{6}", c))


#: (idVendor, idProduct, bDeviceClass) from the device descriptor (core/usb_descriptors).
_Ids = tuple[str, str, str]


def _interface_classes(dev: pyudev.Device) -> tuple[tuple[str, ...], bool, _Ids | None]:
    """Class/subclass/protocol of each interface (``e00101``), in order, whether that
    is all of them, and the ids and class the descriptors gave, if they were read.

    udev's usb_id builtin puts them in ``ID_USB_INTERFACES`` when it handles
    the device's ``add``, before the interface devices exist; the kernel's
    own uevent lacks the property, and the same is computed from the
    device's descriptors; the children are the last resort (an interface may
    still be on its way).
    """
    told = _classes_told(dev)
    if told:
        return told, True, None
    raw = usb_sysfs.descriptors(dev.sys_path)
    described = (usb_descriptors.interface_classes(raw, kv.USB_MAX_INTERFACES)
                 if raw is not None else None)
    if raw is not None and described:
        return described, True, usb_descriptors.device_ids(raw)
    found = []
    for child in dev.children:
        if prop(child, "DEVTYPE") == "usb_interface":
            triple = "".join(_attr(child, a) for a in
                             ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol"))
            if re.fullmatch(r"[0-9a-fA-F]{6}", triple):
                found.append(triple.lower())
    return tuple(found), False, None


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
    return _hex_field(dev, "PCI_CLASS", prop(dev, "PCI_CLASS"), 6, padded=False)


def is_pci_device(dev: pyudev.Device) -> bool:
    """A PCI function that could be passed: bridges and ports (class 06xx) only route."""
    return dev.subsystem == "pci" and not _pci_class(dev).startswith("06")


def pci_device(dev: pyudev.Device) -> Device | None:
    """Translate a pyudev ``pci`` device into the model; None if it cannot be named."""
    address = kv.pci_address(sys_name(dev))
    if address is None:
        _identity(dev, "PCI address", sys_name(dev), "of the form 0000:03:00.0")
        return None
    vendor, _, product = prop(dev, "PCI_ID").lower().partition(":")
    return Device(
        subsystem=Subsystem.PCI,
        sys_path=dev.sys_path,
        address=address,
        vendor=_hex_field(dev, "vendor", _attr(dev, "vendor") or vendor, 4),
        product=_hex_field(dev, "device", _attr(dev, "device") or product, 4),
        device_class=_pci_class(dev),
        iommu_group=_iommu_group(dev),
        driver=driver(dev),
        vendor_db=clean(prop(dev, "ID_VENDOR_FROM_DATABASE")),
        model_db=clean(prop(dev, "ID_MODEL_FROM_DATABASE")),
    )


def addressable(dev: pyudev.Device) -> bool:
    """Not in the middle of a reset: during one the kernel reports device number 0
    (a ``change`` with DEVNUM=000, then one with the number back), which no
    hostdev can name."""
    # The event's own DEVNUM first: sysfs may already show the number back. Any
    # other bad number is no reset: usb_device refuses it, with a log line.
    return kv.decimal(prop(dev, "DEVNUM") or _usb_attr(dev.sys_path, "devnum"),
                      range(1)) is None


def is_usb_device(dev: pyudev.Device) -> bool:
    """A real USB device (not an interface, not a root hub)."""
    return (dev.subsystem == "usb" and prop(dev, "DEVTYPE") == "usb_device"
            and not sys_name(dev).startswith("usb"))


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
    where = dev.sys_path  # once: each of pyudev's answers is a call into libudev

    def attr(name: str) -> str:
        return _usb_attr(where, name)

    port = sys_name(dev)
    place = kv.usb_port(port)
    if place is None:
        raise _identity(dev, "port path", port, "a kernel port path such as 1-2.3")
    busnum = _number(dev, "bus number", attr("busnum") or prop(dev, "BUSNUM"),
                     kv.USB_BUS_NUMBERS)
    if busnum != place[0]:
        raise _identity(dev, "bus number", busnum, f"that of its port path {port}")
    classes, told, ids = _interface_classes(dev)
    vendor, product, device_class = ids or (
        _usb_id(dev, "vendor id", attr("idVendor") or prop(dev, "ID_VENDOR_ID")),
        _usb_id(dev, "product id", attr("idProduct") or prop(dev, "ID_MODEL_ID")),
        _hex_field(dev, "bDeviceClass", attr("bDeviceClass"), 2))
    return Device(
        subsystem=Subsystem.USB,
        sys_path=where,
        port=port,
        busnum=busnum,
        devnum=_number(dev, "device number", attr("devnum") or prop(dev, "DEVNUM"),
                       kv.USB_DEVICE_NUMBERS),
        vendor=vendor,
        product=product,
        serial=attr("serial") or clean(prop(dev, "ID_SERIAL_SHORT")),
        manufacturer=attr("manufacturer"),
        product_name=attr("product"),
        device_class=device_class,
        interface_classes=classes[:kv.USB_MAX_INTERFACES],
        driver=driver(dev),
        peer_ports=usb_sysfs.peer_ports(port, where),
        vendor_db=clean(prop(dev, "ID_VENDOR_FROM_DATABASE")),
        model_db=clean(prop(dev, "ID_MODEL_FROM_DATABASE")),
    ), told


def present_devices(context: pyudev.Context | None = None) -> list[Device]:
    """USB and PCI devices present now (coldplug, and ``check-policy``)."""
    context = context or pyudev.Context()
    usb = [usb_device(d) for d in context.list_devices(subsystem="usb", DEVTYPE="usb_device")
           if is_usb_device(d) and addressable(d)]
    pci = [pci_device(d) for d in context.list_devices(subsystem="pci") if is_pci_device(d)]
    return [d for d in usb + pci if d is not None]
