"""A USB device's ids, class and interface classes from its raw descriptors (sysfs
``descriptors``).

phyllod takes a plug from the kernel's own ``bind`` of the device
(host/udev_source), which comes before udev's copy of the plug; the kernel's
uevent does not carry ``ID_USB_INTERFACES``. udev's usb_id builtin computes
that property from this same file (systemd's udev-builtin-usb_id.c,
``dev_if_packed_info``), so the classes are computed here the way it does:
every interface descriptor of every configuration, walked from the start of
the file, each class/subclass/protocol triple once, in order of appearance.
Either event then gives the same identity, and a policy matching on classes
decides the same from the kernel's event as from udev's.

The file starts with the device descriptor, from which the kernel's own
``idVendor``, ``idProduct`` and ``bDeviceClass`` attributes are printed: the
one read gives those too (:func:`device_ids`), three sysfs reads fewer on the
plug's path (issue 18).

The bytes are the device's own: hostile. A descriptor shorter than 3 bytes
ends the walk; one longer than the data (usb_id's "corrupt data") gives no
answer, as udev then sets no property.
"""

from __future__ import annotations

#: What phyllod reads of the file: far above any real device's descriptors.
MAX_DESCRIPTORS_BYTES = 65536

_DEVICE_DESCRIPTOR_BYTES = 18
_INTERFACE_DESCRIPTOR_BYTES = 9
_DEVICE = 1
_INTERFACE = 4


def device_ids(raw: bytes) -> tuple[str, str, str] | None:
    """(idVendor, idProduct, bDeviceClass) as sysfs prints them (``0627``, ``0001``,
    ``00``), from the device descriptor ``raw`` starts with; None if it does not
    start with one."""
    if len(raw) < _DEVICE_DESCRIPTOR_BYTES or raw[0] != _DEVICE_DESCRIPTOR_BYTES or (
            raw[1] != _DEVICE):
        return None
    return (f"{int.from_bytes(raw[8:10], 'little'):04x}",
            f"{int.from_bytes(raw[10:12], 'little'):04x}", f"{raw[4]:02x}")


def interface_classes(raw: bytes, limit: int) -> tuple[str, ...] | None:
    """The interface class triples (``030101``) in ``raw``, at most ``limit`` of them;
    None when the data cannot be read as descriptors (too short, or corrupt)."""
    size = len(raw)
    if size < _DEVICE_DESCRIPTOR_BYTES:
        return None
    found: list[str] = []
    pos = 0
    while pos + _INTERFACE_DESCRIPTOR_BYTES < size and len(found) < limit:
        length, kind = raw[pos], raw[pos + 1]
        if length < 3:
            break
        if length > size - _INTERFACE_DESCRIPTOR_BYTES:
            return None
        if kind == _INTERFACE:  # as usb_id: the class bytes even of a short one
            triple = raw[pos + 5:pos + 8].hex()
            if triple not in found:
                found.append(triple)
        pos += length
    return tuple(found)
