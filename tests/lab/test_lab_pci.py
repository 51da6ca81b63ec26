"""PCI passthrough end to end: QMP plugs PCI devices into L1, phyllod in L1 moves them to L2.

L1 has a virtual IOMMU (intel-iommu); the guest is a Linux L2 (lab_pci), the
only kind that acknowledges a PCIe unplug, and reports what it sees on its
serial console. Each test asserts from three sides: phyllod (the bus and its
journal), L1's kernel (which driver holds the function) and L2's own kernel.

QEMU 7.2 here has no ``igb``, the only emulated device with SR-IOV, so VFs
are tested over umockdev (tests/integration/test_pci_daemon.py) only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import lab_pci
import pytest
from lab_pci import L2_LINUX, XHCI2, l1_driver, l2_pci_view, l2_usb_view, wait_l1_driver
from lab_phyllod import LabPhyllod, wait_until
from policies import rule

pytestmark = pytest.mark.lab

E1000E = "8086:10d3"
NIC_TO_L2 = rule(f"the e1000e goes to {L2_LINUX}", 'vendor = "8086", product = "10d3"',
                 guest=L2_LINUX)


@pytest.fixture(scope="module")
def linux_l2(lab: Any) -> Iterator[str]:
    """A Linux L2 running for the module's tests (it boots slowly under TCG in TCG)."""
    lab_pci.start_l2_linux(lab)
    try:
        yield L2_LINUX
    finally:
        lab_pci.remove_l2(lab)


@pytest.fixture
def pci_lab(lab_phyllod: LabPhyllod, linux_l2: str) -> Iterator[LabPhyllod]:
    """phyllod in L1 and the Linux L2 running; PCI devices a test plugged are unplugged."""
    plugged: list[str] = []
    lab_phyllod.pci_plugged = plugged  # type: ignore[attr-defined]
    try:
        yield lab_phyllod
    finally:
        lab_phyllod.stop()
        lab = lab_phyllod.lab
        for qdev_id in reversed(plugged):
            lab_pci.unplug_pci(lab, qdev_id, timeout=120)
        if "running" not in lab.run(f"virsh domstate {linux_l2}")[1]:
            lab_pci.remove_l2(lab)
            lab_pci.start_l2_linux(lab)


def plug(p: LabPhyllod, qdev_id: str, driver: str, bus: str, **props: str) -> str:
    address = lab_pci.plug_pci(p.lab, qdev_id, driver, bus, **props)
    p.pci_plugged.append(qdev_id)  # type: ignore[attr-defined]
    return address


def show(p: LabPhyllod, device: str) -> dict:
    rc, out, err = p.ctl(f"--json show {device}")
    assert rc == 0, err
    return json.loads(out)


def in_l2(p: LabPhyllod, ids: str) -> bool:
    return any(v[0] == ids for v in l2_pci_view(p.lab).values())


def test_nic_goes_to_l2_through_vfio_and_back_when_the_rule_goes(pci_lab: LabPhyllod):
    pci_lab.start(NIC_TO_L2)
    address = plug(pci_lab, "nic1", "e1000e", "rp3")
    wait_l1_driver(pci_lab.lab, address, "vfio-pci", timeout=120)
    pci_lab.wait_journal(rf"attached pci:{address} to {L2_LINUX}", timeout=120)
    wait_until(f"{E1000E} in L2's own lspci", lambda: in_l2(pci_lab, E1000E), 120, 1)
    shown = show(pci_lab, f"pci:{address}")
    assert (shown["State"], shown["Guest"], shown["Driver"]) == ("attached", L2_LINUX,
                                                                 "vfio-pci")

    # The rule goes: phyllod detaches, L2 acknowledges, libvirt rebinds e1000e.
    pci_lab.lab.write_file("/etc/phyllod/policy.d/10-lab.toml", "")
    pci_lab.ctl("reload")
    wait_l1_driver(pci_lab.lab, address, "e1000e", timeout=120)
    wait_until(f"{E1000E} gone from L2", lambda: not in_l2(pci_lab, E1000E), 120, 1)
    assert show(pci_lab, f"pci:{address}")["State"] == "host"


def test_guest_stop_gives_the_nic_back_to_its_host_driver(pci_lab: LabPhyllod):
    pci_lab.start(NIC_TO_L2)
    address = plug(pci_lab, "nic2", "e1000e", "rp3")
    wait_l1_driver(pci_lab.lab, address, "vfio-pci", timeout=120)
    pci_lab.virsh(f"destroy {L2_LINUX}")
    wait_l1_driver(pci_lab.lab, address, "e1000e", timeout=120)
    pci_lab.wait_journal(rf"pci:{address} .*: pending guest={L2_LINUX}: "
                         rf"guest '{L2_LINUX}' is not running")


def test_a_device_sharing_a_group_with_an_l1_device_is_refused(pci_lab: LabPhyllod):
    lab = pci_lab.lab
    address = plug(pci_lab, "l1nic2", "e1000", "pcibr", addr="2")
    wait_l1_driver(lab, address, "e1000")
    mates = [m for m in lab_pci.iommu_group(lab, address) if m != address]
    pci_lab.start(f"""\
[[rule]]
name = "the second NIC behind the bridge"
match = {{ address = "{address}" }}
guest = "{L2_LINUX}"
""")
    shown = show(pci_lab, f"pci:{address}")
    assert shown["State"] == "denied"
    assert shown["Reason"].startswith("not safe to pass: IOMMU group")
    l1nic = next(m for m in mates if l1_driver(lab, m) == "e1000")
    assert l1nic in shown["Reason"] and "e1000" in shown["Reason"]
    assert l1_driver(lab, address) == "e1000", "nothing moved"
    rc, out, _ = pci_lab.ctl("--json iommu")
    rows = {r["address"]: r for r in json.loads(out)}
    assert rc == 0 and rows[address]["verdict"] == "unsafe"


def test_usb_controller_passed_whole_brings_its_keyboard(pci_lab: LabPhyllod):
    lab = pci_lab.lab
    address = lab_pci.plug_xhci_with_keyboard(lab, "rp4")
    pci_lab.pci_plugged.append(XHCI2)  # type: ignore[attr-defined]
    pci_lab.start(f"""\
[[rule]]
name = "the second USB controller, whole"
match = {{ class = "0c03", address = "{address}" }}
guest = "{L2_LINUX}"
""")
    wait_l1_driver(lab, address, "vfio-pci", timeout=120)
    wait_until("the keyboard in L2, behind its own xHCI",
               lambda: "0627:0001" in l2_usb_view(lab), 180, 1)


def test_a_function_without_a_reset_method_is_refused_unless_accepted(pci_lab: LabPhyllod):
    lab = pci_lab.lab
    address = plug(pci_lab, "nic3", "e1000e", "rp3")
    wait_l1_driver(lab, address, "e1000e")
    reset_method = f"/sys/bus/pci/devices/{address}/reset_method"
    assert pci_lab.sh(f"cat {reset_method}").strip(), "QEMU's e1000e can be reset"
    # Writing it empty disables every reset method (the kernel logs it): the
    # state of a device no reset clears, as on hardware with FLR errata.
    pci_lab.sh(f"echo > {reset_method}")
    try:
        pci_lab.start(NIC_TO_L2)
        shown = show(pci_lab, f"pci:{address}")
        assert shown["State"] == "denied", shown
        assert f"{address} has no reset method" in shown["Reason"]
        assert 'allow_risks = ["no-reset"]' in shown["Reason"]
        assert "no reset method" in pci_lab.ctl(f"explain pci:{address}")[1]
        assert l1_driver(lab, address) == "e1000e", "nothing moved"

        # A rule accepting that risk by name: attached, the warning kept in the reason.
        pci_lab.lab.write_file("/etc/phyllod/policy.d/10-lab.toml",
                               NIC_TO_L2 + 'allow_risks = ["no-reset"]\n')
        pci_lab.ctl("reload")
        wait_l1_driver(lab, address, "vfio-pci", timeout=120)
        pci_lab.wait_journal(rf"attached pci:{address} to {L2_LINUX}", timeout=120)
        shown = show(pci_lab, f"pci:{address}")
        assert shown["State"] == "attached"
        assert "security warning" in shown["Reason"] and "no reset method" in shown["Reason"]
    finally:
        pci_lab.sh(f"echo default > {reset_method}")
