"""PCI through the daemon: udev (umockdev) → safety verdicts → the bus and phyllodctl.

The host is a laptop-like sysfs tree from pci_tree. libvirt's test driver
cannot attach, so a safe device ends in libvirt's refusal (reported as
failed), while an unsafe one never reaches libvirt: denied with the reason.
Passthrough itself is proven in the lab.
"""

from __future__ import annotations

import json

import pci_tree
import pytest
from pci_tree import Fn
from phyllod_on_bus import Phyllod

pytestmark = pytest.mark.integration

ROOT_PORT = Fn("0000:00:1c.0", "060400", device="a110", driver="pcieport", group=2)
WIFI = Fn("0000:02:00.0", "028000", device="2723", parent="0000:00:1c.0", driver="iwlwifi",
          group=2)
SATA = Fn("0000:00:17.0", "010601", device="a352", driver="ahci", group=4)
XHCI = Fn("0000:00:14.0", "0c0330", device="a36d", driver="xhci_hcd", group=4)
GPU = Fn("0000:00:02.0", "030000", device="3e9b", driver="i915", group=1, boot_vga=True)

POLICY = """\
[[rule]]
name = "wifi to the router"
match = { class = "0280" }
guest = "test"

[[rule]]
name = "the USB controller to the router"
match = { class = "0c03" }
guest = "test"

[[rule]]
name = "the GPU to the router"
match = { address = "0000:00:02.0" }
guest = "test"
"""


def _show(phyllod: Phyllod, device: str) -> dict:
    r = phyllod.ctl("--json", "show", device)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_pci_verdicts_reach_the_bus_and_phyllodctl(phyllod: Phyllod):
    pci_tree.build(phyllod.tb.tb, [ROOT_PORT, WIFI, SATA, XHCI, GPU])
    (phyllod.policy_dir / "10-pci.toml").write_text(POLICY)
    phyllod.start()
    assert phyllod.proc is not None
    phyllod.proc.wait_log(r"1 USB and 4 PCI devices present at start")
    assert phyllod.prop("/me/phyllo/Phyllod1", "IommuEnabled",
                        "me.phyllo.Phyllod1.Manager") is True

    # Safe: alone in its group but for its root port. The test driver refuses.
    wifi = _show(phyllod, "pci:0000:02:00.0")
    assert (wifi["IommuGroup"], wifi["Driver"], wifi["DeviceClass"]) == (2, "iwlwifi", "028000")
    phyllod.proc.wait_log(r"attaching pci:0000:02:00.0 .* to test")
    # Unsafe: its group holds the SATA controller the host keeps.
    xhci = _show(phyllod, "pci:0000:00:14.0")
    assert xhci["State"] == "denied"
    assert xhci["Reason"].startswith("not safe to pass: ") and "0000:00:17.0" in xhci["Reason"]
    # The boot GPU: a risk the rule did not accept by name.
    gpu = _show(phyllod, "pci:0000:00:02.0")
    assert gpu["State"] == "denied" and "boot" in gpu["Reason"].lower()
    # A manual attach cannot accept a risk (only a rule names one): Denied, nothing moves.
    r = phyllod.ctl("attach", "pci:0000:00:02.0", "test")
    assert r.returncode == 1 and "not safe to pass" in r.stderr, r.stderr
    assert _show(phyllod, "pci:0000:00:02.0")["State"] == "denied"

    r = phyllod.ctl("--json", "iommu")
    assert r.returncode == 0, r.stderr
    rows = {row["address"]: row for row in json.loads(r.stdout)}
    assert rows["0000:00:1c.0"]["verdict"] == "bridge"
    assert rows["0000:02:00.0"]["verdict"] == "ok"
    assert rows["0000:00:17.0"]["verdict"] == "unsafe"
    assert rows["0000:00:02.0"]["verdict"] == "unsafe"
    table = phyllod.ctl("iommu").stdout.splitlines()
    assert table[0].split() == ["GROUP", "ADDRESS", "IDS", "CLASS", "DRIVER", "VERDICT", "REASON"]
    assert len(table) == 6
