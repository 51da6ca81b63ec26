"""The PCI lab harness proven with plain libvirt in L1, no phyllod.

These are the moves phyllod's PCI tests build on: a device hot-plugged into
L1, passed to an L2 that runs Linux (so a detach is acknowledged, unlike the
firmware-only L2) and given back; a USB controller passed whole; and a device
whose IOMMU group L1 still uses, which libvirt refuses late and tersely. Each
test leaves L1 as it found it; the Linux L2 is shared by the module because
it takes ~100 s to boot.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator

import lab as lab_harness
import lab_pci
import pytest

pytestmark = pytest.mark.lab

E1000E = "8086:10d3"
KBD = "0627:0001"


@pytest.fixture(scope="module")
def l2linux(lab: lab_harness.Lab) -> Iterator[str]:
    """The Linux L2, booted once for the module and removed after it."""
    boot = lab_pci.start_l2_linux(lab)
    print(f"Linux L2 booted to its first report in {boot:.1f} s")
    try:
        yield lab_pci.L2_LINUX
    finally:
        lab_pci.remove_l2(lab)


def virsh_hostdev(lab: lab_harness.Lab, verb: str, address: str) -> tuple[int, str, float]:
    """``virsh attach-device``/``detach-device`` of L1's ``address`` into the Linux L2, live.

    Returns (exit code, stderr, seconds): the seconds are what the caller of
    libvirt waits, which phyllod will wait too.
    """
    path = f"/tmp/hostdev-{address}.xml"
    lab.write_file(path, lab_pci.pci_hostdev_xml(address))
    start = time.monotonic()
    rc, _, err = lab.run(f"virsh {verb} {lab_pci.L2_LINUX} {shlex.quote(path)} --live", timeout=300)
    return rc, err.strip(), time.monotonic() - start


def l2_has(lab: lab_harness.Lab, ids: str) -> bool:
    return any(v[0] == ids for v in lab_pci.l2_pci_view(lab).values())


def test_e1000e_goes_to_linux_l2_and_comes_back(lab: lab_harness.Lab, l2linux: str) -> None:
    address = lab_pci.plug_pci(lab, "nic3", "e1000e", "rp3")
    try:
        lab_pci.wait_l1_driver(lab, address, "e1000e")
        assert lab_pci.iommu_group(lab, address) == [address], "alone in its group"
        assert not l2_has(lab, E1000E)

        rc, err, attach = virsh_hostdev(lab, "attach-device", address)
        assert rc == 0, err
        assert lab_pci.l1_driver(lab, address) == "vfio-pci"
        assert E1000E in lab_pci.l2_info_pci(lab)
        start = time.monotonic()
        lab.wait_for(lambda: l2_has(lab, E1000E), timeout=60, what="e1000e in L2's report")
        seen = time.monotonic() - start

        rc, err, detach = virsh_hostdev(lab, "detach-device", address)
        assert rc == 0, err
        start = time.monotonic()
        lab.wait_for(lambda: not l2_has(lab, E1000E), timeout=60, what="e1000e gone from L2")
        lab_pci.wait_l1_driver(lab, address, "e1000e")
        back = time.monotonic() - start
        assert E1000E not in lab_pci.l2_info_pci(lab)
        print(
            f"e1000e {address}: attach {attach:.1f} s (+{seen:.1f} s to L2's report), "
            f"detach {detach:.1f} s (+{back:.1f} s to gone from L2 and back on e1000e)"
        )
    finally:
        lab.run(f"virsh detach-device {l2linux} /tmp/hostdev-{address}.xml --live")
        lab_pci.unplug_pci(lab, "nic3")


def test_xhci_passed_whole_brings_its_keyboard(lab: lab_harness.Lab, l2linux: str) -> None:
    address = lab_pci.plug_xhci_with_keyboard(lab)
    try:
        assert lab_pci.iommu_group(lab, address) == [address]
        assert KBD not in lab_pci.l2_usb_view(lab)

        rc, err, attach = virsh_hostdev(lab, "attach-device", address)
        assert rc == 0, err
        start = time.monotonic()
        lab.wait_for(lambda: KBD in lab_pci.l2_usb_view(lab), timeout=60, what="the keyboard in L2")
        seen = time.monotonic() - start
        assert lab_pci.l1_driver(lab, address) == "vfio-pci"
        assert not lab.usb_addresses("0627", "0001"), "the keyboard left L1 with its bus"

        rc, err, detach = virsh_hostdev(lab, "detach-device", address)
        assert rc == 0, err
        lab.wait_for(lambda: KBD not in lab_pci.l2_usb_view(lab), timeout=60, what="keyboard gone")
        lab_pci.wait_l1_driver(lab, address, "xhci_hcd")
        lab.wait_for(lambda: lab.usb_addresses("0627", "0001"), what="the keyboard back in L1")
        print(f"xhci2 {address}: attach {attach:.1f} s (+{seen:.1f} s), detach {detach:.1f} s")
    finally:
        lab.run(f"virsh detach-device {l2linux} /tmp/hostdev-{address}.xml --live")
        lab_pci.unplug_pci(lab, lab_pci.XHCI2)


def test_device_behind_pci_bridge_is_not_viable(lab: lab_harness.Lab, l2linux: str) -> None:
    """libvirt's refusal, recorded: phyllod must refuse earlier and say why."""
    l1nic = lab_pci.l1_pci_address(lab, "l1nic")
    address = lab_pci.plug_pci(lab, "l1nic2", "e1000", "pcibr", addr="2")
    try:
        lab_pci.wait_l1_driver(lab, address, "e1000")
        group = lab_pci.iommu_group(lab, address)
        assert l1nic in group and lab_pci.l1_driver(lab, l1nic) == "e1000"

        rc, err, seconds = virsh_hostdev(lab, "attach-device", address)
        assert rc != 0
        assert "not viable" in err, err
        print(f"libvirt refused {address} (group {group}) after {seconds:.1f} s: {err}")
        assert lab_pci.l1_driver(lab, address) == "e1000", "libvirt gave it back to L1"
        assert lab_pci.l1_driver(lab, l1nic) == "e1000"
        assert not l2_has(lab, "8086:100e")
    finally:
        lab_pci.unplug_pci(lab, "l1nic2")
