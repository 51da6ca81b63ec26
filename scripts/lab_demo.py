"""phyllod's main demo, in the lab: real kernels, a real USB device reaching a guest.

L1 is a small Debian host booted under QEMU (TCG) with phyllod and libvirtd
in it; L2 is a tiny guest inside L1. Devices are plugged into L1 over QMP,
as a person plugs hardware in. Run through ``scripts/demo``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab" / "support"))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "support"))  # policies

import lab as harness  # noqa: E402
import lab_pci  # noqa: E402
from lab_phyllod import L2, LabPhyllod, keyboard_alias, wait_until  # noqa: E402

#: Where L1 puts a device hot-plugged into slot 2 of its pcie-pci-bridge (lab_pci).
BEHIND_BRIDGE = "0000:07:02.0"

POLICY = f"""\
# The demo's embedded policy, /etc/phyllod/policy.d/10-lab.toml in L1
[[rule]]
name   = "the keyboard in port 1-1 goes to {L2}"
match  = {{ vendor = "0627", product = "0001", port = "1-1" }}
guest  = "{L2}"

[[rule]]
name   = "no mass storage in guests"
match  = {{ interface_class = "08" }}
action = "deny"

[[rule]]
name   = "Intel e1000e NICs go to {L2}"
match  = {{ subsystem = "pci", vendor = "8086", product = "10d3" }}
guest  = "{L2}"

[[rule]]
name   = "the NIC in slot 2 behind L1's PCI bridge goes to {L2}"
match  = {{ address = "{BEHIND_BRIDGE}" }}
guest  = "{L2}"
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(text: str, prefix: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"   {prefix}| {line}", flush=True)


class Journal:
    """Prints phyllod's journal lines in L1 that are new since the last call."""

    def __init__(self, phyllod: LabPhyllod) -> None:
        self.phyllod = phyllod
        self.shown = 0

    def show_new(self) -> None:
        lines = self.phyllod.journal().splitlines()
        show("\n".join(lines[self.shown:]), "phyllod")
        self.shown = len(lines)


def ctl(phyllod: LabPhyllod, args: str) -> str:
    """``phyllodctl ARGS`` in L1; its output, or its error as the output."""
    rc, out, err = phyllod.ctl(args)
    return out if rc == 0 else f"(exit {rc}) {err}"


def main() -> int:
    why = harness.unavailable()
    if why:
        print(f"the lab cannot run here: {why}", file=sys.stderr)
        return 1
    say("building (or reusing) the L1 image: Debian bookworm, libvirt, QEMU")
    started = time.monotonic()
    image = harness.build_image(Path(os.environ.get("PHYLLOD_LAB_CACHE",
                                                    "/var/tmp/phyllod-lab")))
    print(f"   image ready in {time.monotonic() - started:.0f} s: {image.rootfs}")
    say("booting L1 under QEMU (TCG; the checkout is shared in at /opt/phyllod)")
    with harness.Lab(image) as l1:
        print(f"   L1 ready in {l1.timings['boot_to_ready']:.0f} s")
        say(f"starting the guest {L2} inside L1 (no disk, firmware only)")
        print(f"   {L2} started in {l1.define_l2(L2):.1f} s")
        phyllod = LabPhyllod(l1)
        journal = Journal(phyllod)
        say("starting phyllod in L1 as a Type=notify service, with this policy")
        show(POLICY, "policy")
        phyllod.start(POLICY)
        journal.show_new()

        say("plugging a USB keyboard into L1's port 1-1 (QMP device_add usb-kbd)")
        plugged = time.monotonic()
        phyllod.plug("kbd", port=1)
        alias = keyboard_alias(l1, port=1)
        phyllod.wait_in_l2(alias)
        print(f"   in {L2} {time.monotonic() - plugged:.1f} s after the plug")
        journal.show_new()
        say(f"{L2}'s own view (QEMU monitor in L2: info usb)")
        show(phyllod.l2_info_usb(), L2)

        say("plugging a USB stick into port 2 (a 'deny' rule)")
        l1.qmp("blockdev-add", driver="null-co", **{"node-name": "stick", "size": 1 << 30})
        l1.qmp("device_add", driver="usb-storage", bus="xhci.0", port="2", id="stick",
               drive="stick")
        phyllod.wait_journal(r"usb:\S+ .*HARDDRIVE.*: denied")
        journal.show_new()
        say("the same state on the system bus: phyllodctl list")
        show(ctl(phyllod, "list"), "phyllodctl")

        say("plugging an Intel e1000e NIC into L1's PCIe root port rp3 (QMP device_add)")
        nic = lab_pci.plug_pci(l1, "nic", "e1000e", "rp3")
        lab_pci.wait_l1_driver(l1, nic, "vfio-pci", timeout=120)
        phyllod.wait_journal(rf"attached pci:{nic} to {L2}", timeout=120)
        journal.show_new()
        print(f"   L1: {nic} is now driven by {lab_pci.l1_driver(l1, nic)}; {L2}'s QEMU "
              "has it:")
        show("\n".join(ln for ln in lab_pci.l2_info_pci(l1, L2).splitlines()
                       if "8086:10d3" in ln or "Ethernet" in ln), L2)

        say("a second NIC behind L1's PCI bridge: its IOMMU group holds L1's own NIC")
        lab_pci.plug_pci(l1, "nic2", "e1000", "pcibr", addr="2")
        phyllod.wait_journal(rf"pci:{BEHIND_BRIDGE} .*: denied", timeout=120)
        journal.show_new()
        show(ctl(phyllod, f"explain pci:{BEHIND_BRIDGE}"), "phyllodctl")
        say("phyllodctl iommu: every IOMMU group, and what could be passed")
        show(ctl(phyllod, "iommu"), "phyllodctl")

        say(f"shutting {L2} down: the keyboard and the NIC go back to L1's own drivers")
        phyllod.virsh(f"destroy {L2}")
        phyllod.wait_host_driver("1-1:1.0", "usbhid")
        lab_pci.wait_l1_driver(l1, nic, "e1000e", timeout=120)
        journal.show_new()
        print("   L1: /sys/bus/usb/devices/1-1:1.0/driver -> "
              f"{phyllod.host_driver('1-1:1.0')}; {nic} -> {lab_pci.l1_driver(l1, nic)}")
        say(f"starting {L2} again: phyllod attaches the keyboard again")
        phyllod.virsh(f"start {L2}")
        phyllod.wait_in_l2(alias)
        journal.show_new()

        say("phyllodctl detach usb:1-1: a person keeps the keyboard on the host (an override)")
        ctl(phyllod, "detach usb:1-1")
        phyllod.wait_not_in_l2(alias)
        show(ctl(phyllod, "explain usb:1-1"), "phyllodctl")
        say("phyllodctl clear usb:1-1: the policy decides again, the keyboard goes back")
        ctl(phyllod, "clear usb:1-1")
        phyllod.wait_in_l2(alias)
        journal.show_new()

        say("unplugging the keyboard (QMP device_del)")
        phyllod.unplug("kbd")
        phyllod.wait_not_in_l2(alias)
        wait_until(f"no hostdev left in {L2}", lambda: not phyllod.l2_hostdev_aliases())
        journal.show_new()
        show(phyllod.l2_info_usb() or "(no USB devices)", L2)

        say("the journal answers 'what happened to my guest' (journalctl PHYLLOD_GUEST=l2)")
        show(phyllod.sh(f"journalctl -u phyllod PHYLLOD_GUEST={L2} -o cat --no-pager | "
                        "tail -n 6"), "journal")
        phyllod.stop()
    say("done: L1 is shut down; everything above ran on real kernels, no hardware needed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
