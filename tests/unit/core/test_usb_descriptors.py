"""The interface classes from raw descriptors, as udev's usb_id computes ID_USB_INTERFACES."""

from __future__ import annotations

import pytest

from phyllod.core import usb_descriptors
from phyllod.core.usb_descriptors import interface_classes

#: A Canon digital camera (PTP) as recorded on a real machine, with udev's
#: ID_USB_INTERFACES=:060101: beside it (xdg-desktop-portal, tests/test_usb.py).
CANON = bytes.fromhex(
    "1201000200000040A904C03102000102030109022700010100C001090400000306010100070581020002"
    "000705020200020007058303080009")

DEVICE = bytes.fromhex("12010002EF0201409D04B4E8201901020301")  # 18 bytes, composite


def config(*descriptors: bytes) -> bytes:
    body = b"".join(descriptors)
    total = 9 + len(body)
    return bytes([9, 2, total & 0xFF, total >> 8, 4, 1, 0, 0x80, 50]) + body


def interface(number: int, alt: int, triple: str) -> bytes:
    c, s, p = bytes.fromhex(triple)
    return bytes([9, 4, number, alt, 1, c, s, p, 0])


ENDPOINT = bytes([7, 5, 0x81, 3, 8, 0, 10])
IAD = bytes([8, 11, 0, 2, 0x0E, 3, 0, 0])

#: A webcam's layout (IAD, video control and streaming with alternate settings,
#: audio, a HID button): udev names each triple once, in order of appearance
#: (an HP webcam's ID_USB_INTERFACES=:0e0100:0e0200:010100:010200:030000:).
WEBCAM = DEVICE + config(
    IAD, interface(0, 0, "0e0100"), ENDPOINT, interface(1, 0, "0e0200"),
    interface(1, 1, "0e0200"), ENDPOINT, interface(2, 0, "010100"),
    interface(3, 0, "010200"), interface(3, 1, "010200"), ENDPOINT,
    interface(4, 0, "030000"), bytes([9, 0x21, 0x11, 1, 0, 1, 0x22, 0x20, 0]), ENDPOINT)

TWO_CONFIGS = (DEVICE + config(interface(0, 0, "030101"), ENDPOINT)
               + config(interface(0, 0, "ff0000"), ENDPOINT))

CASES = [
    # (what, raw, limit, classes)
    ("a real camera", CANON, 32, ("060101",)),
    ("a webcam: each triple once, in order", WEBCAM, 32,
     ("0e0100", "0e0200", "010100", "010200", "030000")),
    ("every configuration, as usb_id walks them", TWO_CONFIGS, 32, ("030101", "ff0000")),
    ("at most the limit", WEBCAM, 2, ("0e0100", "0e0200")),
    ("a device descriptor alone: too short to walk, no answer (as usb_id)", DEVICE, 32, None),
    ("a configuration without interfaces", DEVICE + config(), 32, ()),
    ("shorter than a device descriptor", DEVICE[:17], 32, None),
    ("empty", b"", 32, None),
    ("a zero length ends the walk", DEVICE + bytes(32), 32, ()),
    ("a length of 2 ends the walk, before what follows", DEVICE + bytes([2, 4])
     + interface(0, 0, "030101"), 32, ()),
    ("a length past the end: no answer, as udev sets no property",
     DEVICE + bytes([250, 4, 0, 0, 1, 3, 1, 1, 0, 0]), 32, None),
    ("a short interface descriptor is read as usb_id reads it",
     DEVICE + bytes([3, 4, 0]) + bytes([9, 5, 0, 0, 0xE0, 1, 1, 0, 0]) + bytes(9), 32,
     ("0000e0",)),
    ("a trailing interface too close to the end is not read (usb_id's bound)",
     DEVICE + interface(0, 0, "030101")[:9], 32, ()),
]


@pytest.mark.parametrize(("raw", "limit", "classes"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_interface_classes(raw: bytes, limit: int, classes: tuple[str, ...] | None):
    assert interface_classes(raw, limit) == classes


def test_64_kib_of_short_descriptors_is_walked_and_bounded():
    raw = DEVICE + bytes([3, 4, 7]) * 21800
    assert interface_classes(raw, 32) == ("070304",)  # the next ones' bytes, as usb_id


def _device_descriptor(vendor: int, product: int, device_class: int) -> bytes:
    """An 18-byte device descriptor (USB 2.0 §9.6.1), little-endian ids."""
    return bytes([18, 1, 0x00, 0x02, device_class, 0, 0, 64]) + vendor.to_bytes(2, "little") + (
        product.to_bytes(2, "little") + bytes([0x00, 0x01, 1, 2, 3, 1]))


@pytest.mark.parametrize(("raw", "expected"), [
    (_device_descriptor(0x0627, 0x0001, 0x00), ("0627", "0001", "00")),
    (_device_descriptor(0x1050, 0x0407, 0xEF), ("1050", "0407", "ef")),
    (_device_descriptor(0xFFFF, 0xFFFF, 0xFF) + bytes(9), ("ffff", "ffff", "ff")),
    (_device_descriptor(0x0627, 0x0001, 0x09)[:17], None),  # cut short
    (bytes([9, 1]) + _device_descriptor(0x0627, 0x0001, 0)[2:], None),  # bLength not 18
    (bytes([18, 2]) + _device_descriptor(0x0627, 0x0001, 0)[2:], None),  # a configuration
    (b"", None),
], ids=["keyboard", "composite", "all-ones", "short", "length", "type", "empty"])
def test_the_device_descriptor_gives_the_ids_sysfs_prints(raw: bytes, expected):
    assert usb_descriptors.device_ids(raw) == expected
