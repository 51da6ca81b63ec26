"""kernel_values: each value the kernel reports, in and out of the shape the kernel writes."""

from __future__ import annotations

import pytest

from phyllod.core import kernel_values as kv

BAD_NUMBERS = ["", "-1", "+1", " 1_0 ", "1.0", "0x10", "\u0661", "²", "1e3", "9" * 20, "9" * 5000,
               "4294967296", "12 34", "\x001"]


@pytest.mark.parametrize(("text", "allowed", "expected"), [
    ("1", kv.USB_BUS_NUMBERS, 1), ("063", kv.USB_BUS_NUMBERS, 63), ("64", kv.USB_BUS_NUMBERS, None),
    ("0", kv.USB_BUS_NUMBERS, None), ("001\n", kv.USB_BUS_NUMBERS, 1),
    ("127", kv.USB_DEVICE_NUMBERS, 127), ("128", kv.USB_DEVICE_NUMBERS, None),
    ("0", kv.USB_DEVICE_NUMBERS, None), ("000", range(1), 0),
    ("65535", range(1 << 16), 65535), ("65536", range(1 << 16), None),
    *((bad, kv.USB_DEVICE_NUMBERS, None) for bad in BAD_NUMBERS),
])
def test_decimal(text: str, allowed: range, expected: int | None):
    assert kv.decimal(text, allowed) == expected


@pytest.mark.parametrize(("text", "digits", "padded", "expected"), [
    ("0x8086", 4, True, "8086"), ("8086\n", 4, True, "8086"), ("0627", 4, True, "0627"),
    ("0X1D6B", 4, True, "1d6b"), ("0x0c0330", 6, True, "0c0330"), ("09", 2, True, "09"),
    ("C0330", 6, False, "0c0330"), ("0", 2, False, "00"),
    ("627", 4, True, None), ("zzzz", 4, True, None), ("0x", 4, True, None), ("", 4, True, None),
    ("-001", 4, True, None), ("80_86", 4, True, None), ("0x18086", 4, True, None),
    ("0x0c03300", 6, True, None), ("\uff11\uff12\uff13\uff14", 4, True, None),
    ("8086 ", 4, True, "8086"),
    ("e0", 6, True, None), ("e001010", 6, False, None),
])
def test_hex_id(text: str, digits: int, padded: bool, expected: str | None):
    assert kv.hex_id(text, digits, padded) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("1-2", (1, (2,))), ("3-1.4.2", (3, (1, 4, 2))), ("63-255", (63, (255,))),
    ("1-1.2.3.4.5.6", (1, (1, 2, 3, 4, 5, 6))),
    ("1-1.2.3.4.5.6.7", None),  # seven tiers: deeper than the kernel's MAX_TOPO_LEVEL
    ("0-1", None), ("64-1", None), ("1-0", None), ("1-256", None), ("1-02", None),
    ("01-2", None), ("1-2.", None), ("1-.2", None), ("1-2/../3", None), ("1-2/3", None),
    ("..", None), ("1-2:1.0", None), ("usb1", None), ("1-2\n", None), ("1-\u0661", None),
    ("", None), ("1-" + "1." * 5000 + "1", None), ("99999999999999999999-1", None),
])
def test_usb_port(name: str, expected: tuple[int, tuple[int, ...]] | None):
    assert kv.usb_port(name) == expected


@pytest.mark.parametrize(("name", "ok"), [
    ("0000:03:00.0", True), ("0000:00:1f.7", True), ("10000:e1:00.0", True),
    ("0000:03:00.8", False), ("0000:3:00.0", False), ("000:03:00.0", False),
    ("0000:03:00.0/..", False), ("../0000:03:00.0", False), ("0000:03:00", False),
    ("0000:0G:00.0", False), ("0000:03:00.0\n", False), ("123456789:03:00.0", False), ("", False),
])
def test_pci_address(name: str, ok: bool):
    assert kv.pci_address(name) == (name if ok else None)


@pytest.mark.parametrize(("target", "expected"), [
    ("../../../kernel/iommu_groups/7", 7), ("../../../../kernel/iommu_groups/0", 0),
    ("/sys/kernel/iommu_groups/12", 12), ("../../../kernel/iommu_groups/1048575", 1048575),
    ("../../../kernel/iommu_groups/1048576", None),
    ("../../x", None), ("../../../kernel/iommu_groups/x", None),
    ("../../../kernel/iommu_groups/-1", None), ("../../../kernel/iommu_groups/²", None),
    ("../../../kernel/iommu_groups/" + "9" * 20, None), ("../../../kernel/iommu_groups/", None),
    ("../../../kernel/iommu_groups/7/..", None), ("7", None), ("", None),
])
def test_iommu_group(target: str, expected: int | None):
    assert kv.iommu_group(target) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("7", 7), ("0", 0), ("x", None), ("²", None), ("-1", None), ("9" * 20, None),
])
def test_iommu_group_name(name: str, expected: int | None):
    assert kv.iommu_group_name(name) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("vfio-pci", "vfio-pci"), ("snd_hda_intel", "snd_hda_intel"), ("", ""),
    ("usb\x1b[2J", "usb\ufffd[2J"), ("a" * 300, "a" * kv.MAX_DRIVER_NAME),
    (" ", "\ufffd"),  # a driver is there, so never "" (which means unbound: harmless)
])
def test_driver_name(name: str, expected: str):
    assert kv.driver_name(name) == expected


ALL_METHODS = "device_specific acpi flr af_flr pm bus cxl_bus"  # pci_reset_fn_methods


@pytest.mark.parametrize(("text", "expected"), [
    ("flr bus\n", "flr bus"), (ALL_METHODS, ALL_METHODS), ("", ""), ("\n", ""),
    ("flr\x1b[2J", None), ("FLR", None), ("flr " * 9, None), ("a" * 33, None),
])
def test_reset_methods(text: str, expected: str | None):
    assert kv.reset_methods(text) == expected


def test_shown_quotes_a_bad_value_cleaned_and_short():
    assert kv.shown("9" * 100) == repr("9" * 64)
    assert kv.shown("a\x1bb") == repr("a\ufffdb")
    assert kv.shown(b"\xff") == repr("\ufffd")


def test_reported_once_is_bounded():
    once = kv.ReportedOnce(limit=3)
    assert [once.first("a"), once.first("a"), once.first("b"), once.first("c")] == [
        True, False, True, True]
    assert once.first("d") is True, "full: forgotten, so a new complaint is still told"
    assert once.first("a") is True
