"""A USB device that lies about itself, for real: its serial is markup and terminal escapes.

QEMU's usb-storage in L1 reports the serial number it is given; L1's kernel
puts it in sysfs, udev in its database, and phyllod reads it from there like
any device's. The device still lands in L2 (the hostdev XML carries no device
string), and nothing phyllod prints or publishes carries the escapes.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from lab_phyllod import STICKS_TO_L2, LabPhyllod, keyboard_alias, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.reliability]

HOSTILE = "</source><hostdev type='pci'>\x1b[2J\x1b]0;pwned\x07\"&x;\x9b31m\n"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_a_hostile_serial_neither_injects_nor_escapes(lab_phyllod: LabPhyllod, reliability):
    p = lab_phyllod
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "stick.img"
        subprocess.run(["truncate", "-s", "4M", str(image)], check=True)
        p.lab.qmp("blockdev-add", **{"node-name": "evil0", "driver": "raw",
                                     "file": {"driver": "file", "filename": str(image)}})
        try:
            p.start(STICKS_TO_L2)
            p.lab.qmp("device_add", driver="usb-storage", bus="xhci.0", port="4",
                      drive="evil0", serial=HOSTILE, id="evil1")
            p.plugged.append("evil1")
            raw = wait_until("the stick in L1", lambda: p.lab.run(
                "cat /sys/bus/usb/devices/2-4/serial")[1], 60)
            assert "\x1b" in raw, f"L1's kernel kept the escapes: {raw!r}"
            p.wait_in_l2(keyboard_alias(p.lab, port=4, bus=2))
            shown = json.loads(p.sh("phyllodctl --json show usb:2-4"))
            outputs = {
                "show": p.sh("phyllodctl show usb:2-4"),
                "list": p.sh("phyllodctl list"),
                "explain": p.sh("phyllodctl explain usb:2-4"),
                "busctl": p.sh("busctl --json=short get-property me.phyllo.Phyllod1 "
                               "/me/phyllo/Phyllod1/devices/usb_2_4 me.phyllo.Phyllod1.Device "
                               "Serial"),
                "journal": p.sh("journalctl -u phyllod -o json --no-pager -n 200"),
            }
        finally:
            if "evil1" in p.plugged:
                p.unplug("evil1")
                wait_until("the stick gone", lambda: p.lab.run(
                    "test -e /sys/bus/usb/devices/2-4")[0] != 0)
            p.lab.qmp("blockdev-del", **{"node-name": "evil0"})
    assert "<hostdev" in shown["Serial"] and not CONTROL.search(shown["Serial"]), shown
    leaks = {name: CONTROL.findall(text.replace("\n", "").replace("\t", ""))
             for name, text in outputs.items()}
    assert not any(leaks.values()), leaks
    reliability.record("hostile USB serial in the lab (QEMU usb-storage)",
                       serial_chars=len(HOSTILE), escapes_in_sysfs=raw.count("\x1b"),
                       control_chars_in_outputs=sum(map(len, leaks.values())),
                       landed_in_l2=True)
