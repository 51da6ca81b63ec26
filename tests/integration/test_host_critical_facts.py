"""What the host cannot lose, read from a umockdev sysfs: its mounts and its keyboards.

sysfs.py's ``block_mounts`` and ``host_keyboards`` over a host laid out as the
kernel does it: an xHCI controller with a hub, a keyboard and a mouse behind
the hub, a mounted stick, a USB disk under a device-mapper mapping, a PS/2
keyboard, a power button and a virtual (uinput) keyboard. The expected paths
are spelled out in full, not taken from the fixture, so a reader that lands one
directory off, or names a path under the testbed's directory, fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pci_tree
import pytest
import testbed
from gi.repository import UMockdev
from pci_tree import Fn

from phyllod.core.model import Device, Subsystem
from phyllod.core.safety.pci import pci_verdict
from phyllod.core.safety.usb import usb_verdict
from phyllod.core.safety.verdict import Risk
from phyllod.host.sysfs import block_mounts, host_keyboards, mounted_pci, read_host_facts

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(testbed.available()), reason=testbed.available())]

SYS = Path("/sys")

NVME_PORT = Fn("0000:00:1d.0", "060400", driver="pcieport", group=1)
NVME = Fn("0000:01:00.0", "010802", vendor="144d", device="a808", parent=NVME_PORT.address,
          driver="nvme", group=1)
XHCI = Fn("0000:00:14.0", "0c0330", device="a36d", driver="xhci_hcd", group=4,
          reset_method="flr")

DEVICES = "/sys/devices"
CONTROLLER = f"{DEVICES}/pci0000:00/0000:00:14.0"
HUB = f"{CONTROLLER}/usb1/1-1"
KEYBOARD = f"{HUB}/1-1.2/1-1.2:1.0/0003:0627:0001.0001/input/input5"
MOUSE = f"{HUB}/1-1.3/1-1.3:1.0/0003:0627:0001.0002/input/input6"
STICK = f"{CONTROLLER}/usb1/1-2"
SDB = f"{STICK}/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
USB_DISK = f"{CONTROLLER}/usb1/1-3"
SDC = f"{USB_DISK}/1-3:1.0/host7/target7:0:0/7:0:0:0/block/sdc"
ROOT_PART = f"{DEVICES}/pci0000:00/0000:00:1d.0/0000:01:00.0/nvme/nvme0/nvme0n1/nvme0n1p2"
PS2 = f"{DEVICES}/platform/i8042/serio0/input/input0"

# How a 64-bit kernel prints them (a QEMU USB keyboard and mouse, an AT keyboard).
KBD_EV, KBD_KEY = "120013", "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe"
MOUSE_EV, MOUSE_KEY = "17", "1f0000 0 0 0 0"

# "/" comes last yet wins; the stick is also bind-mounted (the first mount names
# it); /media/backup is LUKS on the whole USB disk sdc; sdb2 is swap.
MOUNTINFO = r"""40 22 8:17 / /media/my\040stick rw,relatime shared:40 - vfat /dev/sdb1 rw
41 22 254:1 / /media/backup rw,relatime shared:41 - ext4 /dev/mapper/backup rw
42 22 8:17 / /srv/stick rw,relatime shared:40 - vfat /dev/sdb1 rw
25 22 0:25 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1600000k,mode=755
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
"""
SWAPS = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 1048572 0 -2\n"

EXPECTED_MOUNTS = {
    ROOT_PART: "/ (nvme0n1p2)",
    f"{SDB}/sdb1": "/media/my stick (sdb1)",
    f"{DEVICES}/virtual/block/dm-1": "/media/backup (backup)",
    SDC: "/media/backup (backup)",
    f"{SDB}/sdb2": "[SWAP] (sdb2)",
}


@pytest.fixture
def tb() -> UMockdev.Testbed:
    return testbed.new_testbed()


def desk(tb: UMockdev.Testbed, ps2: bool = True) -> pci_tree.PciTree:
    """The host: NVMe root disk, and on the xHCI controller a hub (1-1) with a
    keyboard (1-1.2) and a mouse (1-1.3), a stick (1-2) and a USB disk (1-3)."""
    tree = pci_tree.build(tb, (NVME_PORT, NVME, XHCI))
    nvme = tree.add_disk(NVME.address, "nvme/nvme0", "nvme0n1", "259:0")
    tree.add_partition(nvme, "nvme0n1p2", "259:2")

    tree.add_usb_bus(XHCI.address)
    tree.add_usb("1-1", 2, device_class="09", interface="090000")
    tree.add_usb("1-1.2", 3)
    tree.add_input("0003:0627:0001.0001/input/input5", "QEMU QEMU USB Keyboard", KBD_EV,
                   KBD_KEY, parent="1-1.2:1.0")
    tree.add_usb("1-1.3", 4, interface="030102")
    tree.add_input("0003:0627:0001.0002/input/input6", "QEMU QEMU USB Mouse", MOUSE_EV,
                   MOUSE_KEY, parent="1-1.3:1.0")

    tree.add_usb("1-2", 5, interface="080650")
    sdb = tree.add_disk("1-2:1.0", "host6/target6:0:0/6:0:0:0/block", "sdb", "8:16")
    tree.add_partition(sdb, "sdb1", "8:17")
    tree.add_partition(sdb, "sdb2", "8:18")
    tree.add_usb("1-3", 6, interface="080650")
    tree.add_disk("1-3:1.0", "host7/target7:0:0/7:0:0:0/block", "sdc", "8:32")
    tree.add_dm("dm-1", "backup", "254:1", ["sdc"])

    if ps2:
        tree.add_input("platform/i8042/serio0/input/input0", "AT Translated Set 2 keyboard",
                       "120013", "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe")
    # Keys only in a higher word (KEY_POWER is 116): a key device, not a keyboard.
    tree.add_input("LNXSYSTM:00/LNXPWRBN:00/input/input1", "Power Button", "3",
                   "10000000000000 0")
    # A full keyboard, but virtual (uinput, ydotool): no hub can take it away.
    tree.add_input("virtual/input/input9", "ydotoold virtual device", KBD_EV, KBD_KEY)
    return tree


def test_paths_are_where_the_kernel_puts_them(tb):
    """The fixture itself: helpers that filed devices elsewhere would void the rest."""
    tree = desk(tb)
    assert tree.paths["1-1"] == HUB
    assert tree.paths["1-2"] == STICK
    assert os.path.realpath("/sys/class/input/input5") == KEYBOARD
    assert os.path.realpath("/sys/class/block/sdb1") == f"{SDB}/sdb1"
    assert os.path.realpath("/sys/dev/block/8:32") == SDC


def test_block_mounts(tb):
    desk(tb)
    got = block_mounts(SYS, MOUNTINFO, SWAPS)
    assert got == EXPECTED_MOUNTS
    # What a USB device carries is what lies below its path (the hub carries
    # nothing: sdb's path shares the prefix "…/usb1/1-" with it, not "…/1-1/").
    assert _below(got, STICK) == {f"{SDB}/sdb1": "/media/my stick (sdb1)",
                                  f"{SDB}/sdb2": "[SWAP] (sdb2)"}
    assert _below(got, USB_DISK) == {SDC: "/media/backup (backup)"}
    assert _below(got, HUB) == {}
    # The PCI view reads the same mounts: the controller carries the first one.
    assert mounted_pci(SYS, MOUNTINFO, SWAPS) == {
        NVME_PORT.address: "/ (nvme0n1p2)",
        NVME.address: "/ (nvme0n1p2)",
        XHCI.address: "/media/my stick (sdb1)",
    }


def test_block_mounts_from_proc_mounts_and_nothing_mounted(tb):
    desk(tb)
    proc_mounts = "/dev/sdb1 /media/stick vfat rw 0 0\n/dev/mapper/backup /mnt ext4 rw 0 0\n"
    assert block_mounts(SYS, proc_mounts) == {
        f"{SDB}/sdb1": "/media/stick (sdb1)",
        f"{DEVICES}/virtual/block/dm-1": "/mnt (backup)",
        SDC: "/mnt (backup)",
    }
    assert block_mounts(SYS, "tmpfs /run tmpfs rw 0 0\n", "") == {}


def test_host_keyboards(tb):
    desk(tb)
    assert host_keyboards(SYS) == {
        KEYBOARD: "QEMU QEMU USB Keyboard",
        PS2: "AT Translated Set 2 keyboard",
    }
    assert _below(host_keyboards(SYS), HUB) == {KEYBOARD: "QEMU QEMU USB Keyboard"}


def test_keyboard_test_is_udevs(tb):
    """input_id's rule to the bit: EV_KEY, and KEY_ESC…KEY_D in the lowest word."""
    tree = desk(tb, ps2=False)
    tree.add_usb("1-1.4", 7)
    cases = [
        # As a 32-bit kernel prints it: 32-bit words, the lowest still last.
        ("120013", "10000 7 ff9f207a c14057ff febeffdf ffefffff fffffffe", True),
        # KEY_ESC (bit 1) missing: a keypad, not a keyboard.
        ("120013", "fffffffc", False),
        # KEY_RESERVED (bit 0) does not count either way.
        ("120013", "ffffffff", True),
        # Every key, but no EV_KEY: the kernel sends it no key events.
        ("120011", KBD_KEY, False),
        ("", "", False),
        ("120013", "not hex", False),
    ]
    expected = {KEYBOARD: "QEMU QEMU USB Keyboard"}
    for n, (ev, key, is_keyboard) in enumerate(cases, start=10):
        hid = f"0003:0627:0001.{n:04X}"
        tree.add_input(f"{hid}/input/input{n}", f"Test {n}", ev, key, parent="1-1.4:1.0")
        if is_keyboard:
            expected[f"{HUB}/1-1.4/1-1.4:1.0/{hid}/input/input{n}"] = f"Test {n}"
    assert len(expected) == 3
    assert host_keyboards(SYS) == expected


def test_keyboard_names_are_made_safe(tb):
    """A device names itself: the name is kept without control characters, ≤ 256 chars."""
    tree = desk(tb, ps2=False)
    tree.add_usb("1-1.4", 7)
    tree.add_input("0003:0627:0001.0003/input/input10", "  Evil\x1b]0;pwned\x07\tKbd" + "K" * 300,
                   KBD_EV, KBD_KEY, parent="1-1.4:1.0")
    name = host_keyboards(SYS)[f"{HUB}/1-1.4/1-1.4:1.0/0003:0627:0001.0003/input/input10"]
    assert name == ("Evil\ufffd]0;pwned\ufffd\ufffdKbd" + "K" * 300)[:256]
    assert len(name) == 256


def test_read_from_a_plain_directory_names_paths_under_sys(tb, tmp_path):
    """The same tree read straight from the testbed's directory (no redirection),
    and through a symlink to it: paths still read /sys/devices/…"""
    tree = desk(tb)
    raw = tree.root / "sys"
    assert not str(raw).startswith("/sys")
    (tmp_path / "sysroot").symlink_to(raw)
    for root in (raw, tmp_path / "sysroot"):
        assert block_mounts(root, MOUNTINFO, SWAPS) == EXPECTED_MOUNTS
        assert host_keyboards(root) == {KEYBOARD: "QEMU QEMU USB Keyboard",
                                        PS2: "AT Translated Set 2 keyboard"}


def test_read_host_facts_fills_both(tb):
    desk(tb)
    facts = read_host_facts(SYS, cmdline="intel_iommu=on", mounts=MOUNTINFO, swaps=SWAPS)
    assert facts.block_mounts == EXPECTED_MOUNTS
    assert facts.keyboards == {KEYBOARD: "QEMU QEMU USB Keyboard",
                               PS2: "AT Translated Set 2 keyboard"}
    assert facts.functions[XHCI.address].reset_method == "flr"
    assert facts.functions[NVME.address].reset_method == "flr bus"


def test_odd_input_and_block_entries_are_skipped(tb):
    tree = desk(tb, ps2=False)
    inputs = tree.root / "sys" / "class" / "input"
    (inputs / "input40").symlink_to("../../devices/nowhere/input40")  # gone
    (inputs / "input41").symlink_to("input41")  # a loop
    (tree.root / "sys" / "class" / "block" / "dm-1" / "slaves" / "dm-1").symlink_to(
        "../../dm-1")  # a cycle
    assert host_keyboards(SYS) == {KEYBOARD: "QEMU QEMU USB Keyboard"}
    assert block_mounts(SYS, MOUNTINFO, SWAPS) == EXPECTED_MOUNTS


def test_a_class_link_of_another_form_is_followed_step_by_step(tb):
    """The kernel's class links are relative, straight to /sys/devices (read once and
    joined); one through another link is followed step by step, and one that leads
    out of /sys/devices is skipped."""
    tree = desk(tb, ps2=False)
    raw = tree.root / "sys"
    inputs = raw / "class" / "input"
    (raw / "alias").symlink_to("devices")
    for link in [p for p in inputs.iterdir() if p.name.startswith("input")]:
        below = link.resolve().relative_to((raw / "devices").resolve())
        link.unlink()
        link.symlink_to(f"../../alias/{below}")
    (inputs / "input43").symlink_to("../../../etc")  # out of /sys/devices
    assert host_keyboards(SYS) == {KEYBOARD: "QEMU QEMU USB Keyboard"}


def test_missing_sysfs_gives_nothing(tmp_path):
    assert block_mounts(tmp_path / "nothing", MOUNTINFO, SWAPS) == {}
    assert host_keyboards(tmp_path / "nothing") == {}


@pytest.mark.parametrize("ps2", [True, False])
def test_verdicts_over_read_facts(tb, ps2):
    """core/safety (usb, pci) over what was read: the stick holds a mount; the
    keyboard itself, its hub and the controller block only when they carry the
    host's only keyboard (the host loses the same whichever of them leaves)."""
    desk(tb, ps2=ps2)
    facts = read_host_facts(SYS, cmdline="intel_iommu=on", mounts=MOUNTINFO, swaps=SWAPS)

    stick = usb_verdict(Device(subsystem=Subsystem.USB, sys_path=STICK, port="1-2"), facts)
    assert [f.risk for f in stick.blocking] == [Risk.HOST_STORAGE]
    assert stick.reason() == ("usb:1-2 holds /media/my stick (sdb1), [SWAP] (sdb2) on the "
                              "host; unmount it first")
    keyboard = usb_verdict(Device(subsystem=Subsystem.USB, sys_path=f"{HUB}/1-1.2", port="1-1.2"),
                           facts)
    mouse = usb_verdict(Device(subsystem=Subsystem.USB, sys_path=f"{HUB}/1-1.3", port="1-1.3"),
                        facts)
    assert mouse.ok and not mouse.warnings

    hub = usb_verdict(Device(subsystem=Subsystem.USB, sys_path=HUB, port="1-1",
                             device_class="09"), facts)
    controller = pci_verdict(XHCI.address, facts)
    if ps2:
        assert hub.ok
        assert keyboard.ok and not keyboard.warnings
        assert Risk.HOST_KEYBOARD not in [f.risk for f in controller.blocking]
    else:
        assert [f.risk for f in keyboard.blocking] == [Risk.HOST_KEYBOARD]
        assert keyboard.reason().startswith("usb:1-1.2 carries the host's only keyboard, "
                                            "QEMU QEMU USB Keyboard (usb:1-1.2)")
        assert [f.risk for f in hub.blocking] == [Risk.HOST_KEYBOARD]
        assert "QEMU QEMU USB Keyboard (usb:1-1.2)" in hub.reason()
        assert Risk.HOST_KEYBOARD in [f.risk for f in controller.blocking]


def _below(entries: dict[str, str], sys_path: str) -> dict[str, str]:
    return {path: what for path, what in entries.items() if path.startswith(sys_path + "/")}
