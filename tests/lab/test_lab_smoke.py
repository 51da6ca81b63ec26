"""Smoke test of the lab itself: an emulated USB keyboard goes L1 -> L2 by hand.

This is the path phyllod automates (a device appears on the host, libvirt
attaches it to a guest); doing it manually here proves the lab can host such
tests: QMP hot-plug into L1, udev/lsusb in L1, libvirt hostdev attach into L2,
and L2's QEMU really holding the device.
"""

from __future__ import annotations

import time

import lab as lab_harness
import pytest

pytestmark = pytest.mark.lab

KBD_VENDOR, KBD_PRODUCT = "0627", "0001"  # QEMU's emulated usb-kbd

HOSTDEV_XML = """\
<hostdev mode='subsystem' type='usb' managed='yes'>
  <source>
    <vendor id='0x{vendor}'/>
    <product id='0x{product}'/>
    <address bus='{bus}' device='{device}'/>
  </source>
</hostdev>
"""


def test_usb_keyboard_from_l1_into_l2(lab: lab_harness.Lab) -> None:
    lab.define_l2("l2")
    assert "running" in lab.check("virsh domstate l2")

    lab.qmp("device_add", driver="usb-kbd", bus="xhci.0", id="kbd1")
    try:
        lab.wait_for(
            lambda: f"{KBD_VENDOR}:{KBD_PRODUCT}" in lab.check("lsusb"),
            what="usb-kbd in L1's lsusb",
        )
        [(bus, device)] = lab.usb_addresses(KBD_VENDOR, KBD_PRODUCT)

        lab.write_file(
            "/tmp/usb.xml",
            HOSTDEV_XML.format(vendor=KBD_VENDOR, product=KBD_PRODUCT, bus=bus, device=device),
        )
        start = time.monotonic()
        lab.check("virsh attach-device l2 /tmp/usb.xml --live")
        lab.timings["attach"] = time.monotonic() - start
        info = lab.l2_monitor("info usb")
        assert "QEMU USB Keyboard" in info, info

        lab.check("virsh detach-device l2 /tmp/usb.xml --live")
        lab.wait_for(
            lambda: "QEMU USB Keyboard" not in lab.l2_monitor("info usb"),
            what="keyboard gone from L2",
        )
    finally:
        lab.qmp("device_del", id="kbd1")
    lab.wait_for(
        lambda: f"{KBD_VENDOR}:{KBD_PRODUCT}" not in lab.check("lsusb"),
        what="usb-kbd gone from L1",
    )
    print("lab timings (s):", {k: round(v, 1) for k, v in lab.timings.items()})
