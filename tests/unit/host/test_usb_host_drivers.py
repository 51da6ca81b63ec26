"""usb_host_drivers: which host drivers hold a USB device's interfaces now.

A fixture sysfs tree laid out as the kernel does (a device directory, its
interfaces ``1-2:1.0`` with a ``driver`` link into /sys/bus/usb/drivers, a
child port and attributes beside them). What a bind watch is judged on once
its grace window is over (service/binds): usbfs is a guest's QEMU, not the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phyllod.host.sysfs import usb_host_drivers

DEVICE = "devices/pci0000:00/0000:00:01.0/usb1/1-2"


def _tree(root: Path, drivers: dict[str, str]) -> None:
    device = root / DEVICE
    (device / "1-2:1.0").mkdir(parents=True)
    (device / "1-2:1.1").mkdir()
    (device / "1-2-port1").mkdir()  # a hub's port: no interface
    (device / "idVendor").write_text("0627\n")
    for interface, driver in drivers.items():
        target = root / "bus/usb/drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        link = device / interface / "driver"
        link.symlink_to(os.path.relpath(target, link.parent))


@pytest.mark.parametrize(("drivers", "held"), [
    ({}, ()),  # nothing bound
    ({"1-2:1.0": "usbfs"}, ()),  # a guest's QEMU claimed it
    ({"1-2:1.0": "usbfs", "1-2:1.1": "usbfs"}, ()),
    ({"1-2:1.0": "usbhid"}, ("usbhid",)),  # the host took it
    ({"1-2:1.0": "usbfs", "1-2:1.1": "usbhid"}, ("usbhid",)),  # one interface is enough
    ({"1-2:1.0": "usbhid", "1-2:1.1": "btusb"}, ("btusb", "usbhid")),
])
def test_host_drivers_of_the_interfaces(tmp_path: Path, drivers, held) -> None:
    _tree(tmp_path, drivers)
    assert usb_host_drivers(f"/sys/{DEVICE}", tmp_path) == held


@pytest.mark.parametrize("sys_path", [
    "/sys/devices/pci0000:00/0000:00:01.0/usb1/1-9",  # gone meanwhile
    "/tmp/1-2",  # not under /sys: nothing of the kernel's
    "",
])
def test_a_device_not_there_is_held_by_nothing(tmp_path: Path, sys_path: str) -> None:
    _tree(tmp_path, {"1-2:1.0": "usbhid"})
    assert usb_host_drivers(sys_path, tmp_path) == ()
