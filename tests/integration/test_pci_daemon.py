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


def test_pci_verdicts_reach_the_bus_and_phyllodctl(phyllod: Phyllod):
    pci_tree.build(phyllod.tb.tb, [ROOT_PORT, WIFI, SATA, XHCI, GPU])
    (phyllod.policy_dir / "10-pci.toml").write_text(POLICY)
    phyllod.start()
    assert phyllod.proc is not None
    phyllod.proc.wait_log(r"1 USB and 4 PCI devices present at start")
    assert phyllod.prop("/me/phyllo/Phyllod1", "IommuEnabled",
                        "me.phyllo.Phyllod1.Manager") is True

    # Safe: alone in its group but for its root port. The test driver refuses.
    wifi = phyllod.show("pci:0000:02:00.0")
    assert (wifi["IommuGroup"], wifi["Driver"], wifi["DeviceClass"]) == (2, "iwlwifi", "028000")
    phyllod.proc.wait_log(r"attaching pci:0000:02:00.0 .* to test")
    # Unsafe: its group holds the SATA controller the host keeps.
    xhci = phyllod.show("pci:0000:00:14.0")
    assert xhci["State"] == "denied"
    assert xhci["Reason"].startswith("not safe to pass: ") and "0000:00:17.0" in xhci["Reason"]
    # The boot GPU: a risk the rule did not accept by name.
    gpu = phyllod.show("pci:0000:00:02.0")
    assert gpu["State"] == "denied" and "boot" in gpu["Reason"].lower()
    # A manual attach cannot accept a risk (only a rule names one): Denied, nothing moves.
    r = phyllod.ctl("attach", "pci:0000:00:02.0", "test")
    assert r.returncode == 1 and "not safe to pass" in r.stderr, r.stderr
    assert phyllod.show("pci:0000:00:02.0")["State"] == "denied"

    r = phyllod.ctl("--json", "iommu")
    assert r.returncode == 0, r.stderr
    rows = {row["address"]: row for row in json.loads(r.stdout)}
    assert rows["0000:00:1c.0"]["verdict"] == "bridge"
    assert rows["0000:02:00.0"]["verdict"] == "ok"
    assert rows["0000:00:17.0"]["verdict"] == "unsafe"
    # The boot GPU's only risk is one a rule may accept by name: a warning, not unsafe.
    assert rows["0000:00:02.0"]["verdict"] == "warning"
    assert rows["0000:00:02.0"]["reason"] == (
        "0000:00:02.0 is the boot VGA device, which shows the host's console "
        '(a rule may accept it with allow_risks = ["boot-vga"])')
    explained = phyllod.ctl("explain", "pci:0000:00:02.0").stdout.splitlines()
    assert "safety: warning: 0000:00:02.0 is the boot VGA device, which shows the host's " \
           'console (a rule may accept it with allow_risks = ["boot-vga"])' in explained
    assert "safety: unsafe: IOMMU group 4 is shared with 0000:00:17.0 (class 010601, bound " \
           "to ahci) which stays on the host" in phyllod.ctl(
               "explain", "pci:0000:00:14.0").stdout.splitlines()
    assert "safety: bridge" not in phyllod.ctl("explain", "pci:0000:02:00.0").stdout
    assert "safety: ok" in phyllod.ctl("explain", "pci:0000:02:00.0").stdout.splitlines()
    table = phyllod.ctl("iommu").stdout.splitlines()
    assert table[0].split() == ["GROUP", "ADDRESS", "IDS", "CLASS", "DRIVER", "VERDICT", "REASON"]
    assert len(table) == 6


PF = Fn("0000:03:00.0", "020000", device="1521", driver="igb", group=10, sriov_totalvfs=2)


def test_sriov_vfs_come_and_go_like_hotplug(phyllod: Phyllod):
    tree = pci_tree.build(phyllod.tb.tb, [PF])
    (phyllod.policy_dir / "10-vf.toml").write_text(
        '[[rule]]\nname = "VFs to the router"\nmatch = { vendor = "8086", product = "1520" }\n'
        'guest = "test"\n')
    phyllod.start()
    assert phyllod.proc is not None
    # echo 2 > sriov_numvfs: the kernel adds two functions, then binds igbvf to each.
    vfs = [Fn(f"0000:03:10.{n}", "020000", device="1520", driver="igbvf", group=11 + n,
              physfn=PF.address) for n in (0, 1)]
    tree.add(vfs)
    for vf in vfs:
        phyllod.tb.tb.uevent(tree.paths[vf.address], "bind")
    for vf in vfs:
        phyllod.proc.wait_log(rf"attaching pci:{vf.address} .* to test")
        shown = phyllod.show(f"pci:{vf.address}")
        assert (shown["IommuGroup"], shown["Driver"], shown["Rule"]) == (
            vf.group, "igbvf", "VFs to the router")
    # echo 0 > sriov_numvfs: both functions go.
    for vf in vfs:
        phyllod.tb.tb.uevent(tree.paths[vf.address], "remove")
        phyllod.tb.tb.remove_device(tree.paths[vf.address])
    for vf in vfs:
        phyllod.proc.wait_log(rf"pci:{vf.address} .* unplugged")
    ids = phyllod.ctl("list", "--ids").stdout.split()
    assert "pci:0000:03:00.0" in ids and not any(i.startswith("pci:0000:03:10") for i in ids)
