"""Out-of-range numbers from the kernel never reach the daemon's core or the bus.

One USB device whose device number does not fit D-Bus ``u`` (and one PCI
function whose IOMMU group number does not fit ``i``) used to make every
reconcile and every ``GetManagedObjects`` fail while it was present. The
adapters now validate what they read: the bad device is logged once and
skipped, the good ones are managed, the bus answers.
"""

from __future__ import annotations

import json

import pci_tree
import pytest
from pci_tree import Fn
from phyllod_on_bus import NAME, ROOT, Phyllod, poll

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

POLICY = """\
[[rule]]
name = "keyboards to test"
match = { vendor = "0627" }
guest = "test"
"""

GOOD_NIC = Fn("0000:02:00.0", "020000", device="15b8", driver="e1000e", group=3)
#: Its iommu_group link names a group no D-Bus ``i`` (nor the kernel) can hold.
HUGE_GROUP = Fn("0000:03:00.0", "020000", device="15b8", driver="e1000e", group=2 ** 40)


def _managed_objects(phyllod: Phyllod) -> dict:
    r = phyllod.busctl("--json=short", "call", NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                       "GetManagedObjects")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["data"][0]


def _ids(objects: dict) -> set[str]:
    return {ifaces["me.phyllo.Phyllod1.Device"]["Id"]["data"] for ifaces in objects.values()
            if "me.phyllo.Phyllod1.Device" in ifaces}


def test_a_device_number_beyond_u32_is_skipped_and_the_good_device_is_managed(
        phyllod: Phyllod, reliability):
    """The fixture's keyboard in 1-2 is good; 1-3 says devnum 4294967296 (2**32) and
    1-4 busnum -1, both at coldplug; 1-5 is hot-plugged with a 20-digit bus number."""
    (phyllod.policy_dir / "10-kbd.toml").write_text(POLICY)
    phyllod.tb.plug("1-3", devnum=3, attributes={"devnum": str(2 ** 32)},
                    properties={"DEVNUM": str(2 ** 32)})
    phyllod.tb.plug("1-4", devnum=4, attributes={"busnum": "-1"})
    pci_tree.build(phyllod.tb.tb, [GOOD_NIC, HUGE_GROUP])
    phyllod.start()
    assert phyllod.proc is not None

    objects = _managed_objects(phyllod)
    assert {"usb:1-2", "pci:0000:02:00.0"} <= _ids(objects)
    assert not {"usb:1-3", "usb:1-4"} & _ids(objects)
    # The keyboard is managed: the rule sent it to the guest (the test driver refuses).
    phyllod.proc.wait_log(r"attaching usb:1-2 .* to test")
    # The PCI function with the impossible group is kept, without a group.
    assert phyllod.show("pci:0000:03:00.0")["IommuGroup"] == -1

    phyllod.tb.plug("1-5", devnum=6, attributes={"busnum": "9" * 20})
    phyllod.tb.plug("1-6", devnum=7)
    assert poll(lambda: "usb:1-6" in _ids(_managed_objects(phyllod)))
    objects = _managed_objects(phyllod)
    assert "usb:1-5" not in _ids(objects)
    assert phyllod.proc.alive

    phyllod.stop()
    log = phyllod.logs[-1]
    skipped = [line for line in log.splitlines() if "ignoring" in line]
    # Logged once per bad device and value (coldplug and its later events alike).
    assert len([s for s in skipped if "1-3" in s]) == 1, skipped
    assert len([s for s in skipped if "1-4" in s]) == 1, skipped
    assert "Traceback" not in log, log
    reliability.record("kernel values: out-of-range numbers at the adapter",
                       bad_devices=3, good_devices_managed=len(_ids(objects)),
                       skip_lines=len(skipped))
