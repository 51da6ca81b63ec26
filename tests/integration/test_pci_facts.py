"""Host facts read from a umockdev sysfs, then weighed: host/sysfs and core/safety/pci.

The reader is pointed at /sys itself: umockdev-wrapper redirects it (and
os.readlink, which the symlink attributes need) into the testbed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pci_tree
import pytest
import testbed
from gi.repository import UMockdev
from pci_tree import Fn

from phyllod.core import kernel_values as kv
from phyllod.core.device_text import clean
from phyllod.core.model import HostFacts, PciFunction
from phyllod.core.safety.pci import Risk, iommu_table, pci_verdict
from phyllod.host import sysfs, sysfs_acs, udev_devices
from phyllod.host.sysfs import mounted_pci, pci_function, read_host_facts
from phyllod.host.udev_source import present_devices

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(testbed.available()), reason=testbed.available())]

SYS = Path("/sys")
#: No /proc/kallsyms: the tests' kernel listings are faked under the testbed's /sys
#: (or written to a directory of their own), never the running kernel's.
NO_PROC = Path("/nonexistent-proc")

NVME_PORT = Fn("0000:00:1d.0", "060400", driver="pcieport", group=1)
NVME = Fn("0000:01:00.0", "010802", vendor="144d", device="a808", parent=NVME_PORT.address,
          driver="nvme", group=1, reset_method="flr bus")
WIFI_PORT = Fn("0000:00:1c.0", "060400", driver="pcieport", group=2)
WIFI = Fn("0000:02:00.0", "028000", vendor="8086", device="2723", subsystem_vendor="8086",
          subsystem_device="0084", parent=WIFI_PORT.address, driver="iwlwifi", group=2,
          reset_method="flr bus")
GPU_PORT = Fn("0000:00:01.0", "060400", driver="pcieport", group=3)
GPU = Fn("0000:03:00.0", "030000", vendor="10de", device="1f91", parent=GPU_PORT.address,
         driver="nouveau", group=3, boot_vga=True, reset_method="bus")
GPU_AUDIO = Fn("0000:03:00.1", "040300", vendor="10de", device="10fa", parent=GPU_PORT.address,
               driver="snd_hda_intel", group=3)
USB = Fn("0000:00:14.0", "0c0330", device="a36d", driver="xhci_hcd", group=4)
SATA = Fn("0000:00:17.0", "010601", device="a353", driver="ahci", group=4)
LAPTOP = (NVME_PORT, NVME, WIFI_PORT, WIFI, GPU_PORT, GPU, GPU_AUDIO, USB, SATA)

# /boot/efi comes first, yet "/" names the NVMe; /home is LUKS on sda1 behind the SATA
# controller; the rest are no block devices, or one that is gone.
MOUNTINFO = r"""26 22 259:1 / /boot/efi rw,relatime shared:30 - vfat /dev/nvme0n1p1 rw
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=8000000k
25 22 0:25 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1600000k,mode=755
27 22 254:0 / /home rw,relatime shared:31 - ext4 /dev/mapper/home rw
28 22 0:40 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a:/b
29 22 8:65 / /media/my\040stick rw,relatime - vfat /dev/sdz1 rw
30 22 0:41 / /mnt/nas rw - nfs4 nas:/export rw
garbage
"""


@pytest.fixture
def tb() -> UMockdev.Testbed:
    return testbed.new_testbed()


def laptop(tb: UMockdev.Testbed) -> pci_tree.PciTree:
    tree = pci_tree.build(tb, LAPTOP)
    disk = tree.add_disk(NVME.address, "nvme/nvme0", "nvme0n1", "259:0")
    tree.add_partition(disk, "nvme0n1p1", "259:1")
    tree.add_partition(disk, "nvme0n1p2", "259:2")
    sda = tree.add_disk(SATA.address, "ata1/host0/target0:0:0/0:0:0:0/block", "sda", "8:0")
    tree.add_partition(sda, "sda1", "8:1")
    tree.add_partition(sda, "sda2", "8:2")
    tree.add_dm("dm-0", "home", "254:0", ["sda1"])
    return tree


def facts(cmdline: str = "BOOT_IMAGE=/vmlinuz root=UUID=x intel_iommu=on",
          mounts: str = MOUNTINFO, swaps: str = "", proc: Path = NO_PROC) -> HostFacts:
    return read_host_facts(SYS, cmdline=cmdline, mounts=mounts, swaps=swaps, proc_root=proc)


def test_laptop_facts(tb):
    laptop(tb)
    got = facts()
    assert got.iommu_enabled
    assert not got.acs_override
    assert set(got.functions) == {f.address for f in LAPTOP}
    assert got.functions[WIFI.address] == PciFunction(
        address=WIFI.address, vendor="8086", device="2723", class_code="028000",
        driver="iwlwifi", iommu_group=2,
        reset_method="flr bus", parent=WIFI_PORT.address)
    assert got.functions[GPU.address] == PciFunction(
        address=GPU.address, vendor="10de", device="1f91", class_code="030000",
        driver="nouveau", iommu_group=3,
        boot_vga=True, reset_method="bus", parent=GPU_PORT.address)
    for spec in LAPTOP:
        fn = got.functions[spec.address]
        assert (fn.class_code, fn.driver, fn.iommu_group, fn.boot_vga) == (
            spec.class_code, spec.driver, spec.group, spec.boot_vga)
    assert got.groups == {
        1: (NVME_PORT.address, NVME.address),
        2: (WIFI_PORT.address, WIFI.address),
        3: (GPU_PORT.address, GPU.address, GPU_AUDIO.address),
        4: (USB.address, SATA.address),
    }
    assert got.mounted == {
        NVME_PORT.address: "/ (nvme0n1p2)",
        NVME.address: "/ (nvme0n1p2)",
        SATA.address: "/home (home)",
    }


def test_laptop_verdicts(tb):
    laptop(tb)
    got = facts()

    assert pci_verdict(WIFI.address, got).ok
    assert pci_verdict(WIFI.address, got).reason() == ""

    nvme = pci_verdict(NVME.address, got)
    assert [f.risk for f in nvme.blocking] == [Risk.HOST_STORAGE]
    assert nvme.reason() == "0000:01:00.0 holds / (nvme0n1p2)"

    gpu = pci_verdict(GPU.address, got)
    assert [f.risk for f in gpu.blocking] == [Risk.GROUP, Risk.BOOT_VGA]
    assert gpu.blocking[0].text == ("IOMMU group 3 is shared with 0000:03:00.1 (class 040300, "
                                    "bound to snd_hda_intel) which stays on the host")
    gpu = pci_verdict(GPU.address, got, together=frozenset({GPU_AUDIO.address}))
    assert [f.risk for f in gpu.blocking] == [Risk.BOOT_VGA]
    gpu = pci_verdict(GPU.address, got, allowed=frozenset({"boot-vga"}),
                      together=frozenset({GPU_AUDIO.address}))
    assert gpu.ok and [f.risk for f in gpu.warnings] == [Risk.BOOT_VGA]
    assert gpu.reason().startswith("security warning: 0000:03:00.0 is the boot VGA device")
    # The audio function alone: the GPU stays on the host driver.
    assert [f.risk for f in pci_verdict(GPU_AUDIO.address, got).blocking] == [Risk.GROUP]

    usb = pci_verdict(USB.address, got)
    assert [f.risk for f in usb.blocking] == [Risk.GROUP, Risk.HOST_STORAGE]
    assert usb.blocking[1].text == "IOMMU group 4 member 0000:00:17.0 holds /home (home)"
    usb = pci_verdict(USB.address, got, together=frozenset({SATA.address}))
    assert [f.risk for f in usb.blocking] == [Risk.HOST_STORAGE]

    assert [f.risk for f in pci_verdict(WIFI_PORT.address, got).blocking] == [Risk.BRIDGE]
    assert [f.risk for f in pci_verdict("0000:09:00.0", got).blocking] == [Risk.NOT_FOUND]


def test_acs_override_on_the_command_line(tb):
    laptop(tb)
    got = facts(cmdline="root=/dev/nvme0n1p2 pcie_acs_override=downstream,multifunction")
    assert got.acs_override
    wifi = pci_verdict(WIFI.address, got)
    assert [f.risk for f in wifi.blocking] == [Risk.ACS_OVERRIDE]
    wifi = pci_verdict(WIFI.address, got, allowed=frozenset({"acs-override"}))
    assert wifi.ok
    assert wifi.reason() == ("security warning: the kernel runs with pcie_acs_override, "
                             "so IOMMU groups may not isolate this device")


def test_mounts_by_device_number_proc_mounts_and_swap(tb):
    laptop(tb)
    # /dev/root names nothing in /sys/class/block: mountinfo's 259:2 does.
    root_only = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
    assert mounted_pci(SYS, root_only) == {NVME_PORT.address: "/ (nvme0n1p2)",
                                           NVME.address: "/ (nvme0n1p2)"}
    proc_mounts = "/dev/mapper/home /home ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n"
    assert mounted_pci(SYS, proc_mounts) == {SATA.address: "/home (home)"}
    swaps = ("Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 8388604 0 -2\n"
             "/swapfile file 1048572 0 -3\n")
    assert mounted_pci(SYS, "", swaps) == {SATA.address: "[SWAP] (sda2)"}


def test_no_iommu(tb):
    unisolated = [replace(f, group=None) for f in LAPTOP]
    pci_tree.build(tb, unisolated, iommu=False)
    got = facts(mounts="")
    assert not got.iommu_enabled
    assert got.groups == {}
    assert all(f.iommu_group is None for f in got.functions.values())
    wifi = pci_verdict(WIFI.address, got)
    assert [f.risk for f in wifi.blocking] == [Risk.NO_IOMMU]
    assert "intel_iommu=on" in wifi.reason()
    assert not pci_verdict(WIFI.address, got, allowed=frozenset({"boot-vga", "acs-override"})).ok


def test_iommu_unit_without_groups_is_no_iommu(tb):
    tree = pci_tree.PciTree(tb)
    tree.add_iommu()
    tree.add([replace(WIFI, parent="", group=None)])
    assert not facts(mounts="").iommu_enabled


def test_sriov_virtual_functions(tb):
    port = Fn("0000:00:1b.0", "060400", driver="pcieport", group=6)
    pf = Fn("0000:05:00.0", "020000", device="10fb", parent=port.address, driver="ixgbe",
            group=7, sriov_totalvfs=63, reset_method="flr")
    vfs = [Fn(a, "020000", device="10ed", parent=port.address, driver="ixgbevf", group=g,
              physfn=pf.address, reset_method="flr")
           for a, g in (("0000:05:10.0", 8), ("0000:05:10.2", 9))]
    tree = pci_tree.build(tb, [port, pf, vfs[0]])
    # A VF created later (sriov_numvfs written) is read like any hotplugged function.
    assert pci_function(SYS, vfs[1].address) is None
    tree.add([vfs[1]])
    assert pci_function(SYS, vfs[1].address) == PciFunction(
        address="0000:05:10.2", vendor="8086", device="10ed", class_code="020000",
        driver="ixgbevf", iommu_group=9, reset_method="flr", parent=port.address)
    got = facts(mounts="")
    assert {p.name for p in tree.real(tree.paths[pf.address]).iterdir()} >= {"virtfn0",
                                                                           "virtfn1"}
    for address in (pf.address, *(v.address for v in vfs)):
        assert pci_verdict(address, got).ok, address


def test_odd_sysfs_is_read_without_crashing(tb):
    tree = laptop(tb)
    wifi = tree.real(tree.paths[WIFI.address])
    (wifi / "vendor").write_text("garbage\n")
    (wifi / "reset_method").unlink()
    (wifi / "reset_method").mkdir()  # unreadable as a file: as good as absent
    (wifi / "reset").unlink()
    (wifi / "iommu_group").unlink()
    (wifi / "iommu_group").symlink_to("../../../kernel/iommu_groups/not-a-number")
    block = tree.root / "sys" / "class" / "block"
    (block / "dm-0" / "slaves" / "dm-0").symlink_to("../../dm-0")  # a cycle
    (block / "gone").symlink_to("../../devices/nowhere/gone")
    got = facts(mounts=MOUNTINFO + "31 22 8:99 / /x rw - ext4 /dev/gone rw\n")
    fn = got.functions[WIFI.address]
    assert (fn.vendor, fn.reset_method, fn.iommu_group) == ("", "", None)
    assert got.mounted[SATA.address] == "/home (home)"
    assert pci_verdict(WIFI.address, got).blocking[0].risk is Risk.GROUP


def test_reset_method_listed_disabled_none_or_unknown(tb):
    """"flr bus" as the kernel lists it; "" when all were disabled (the file is
    there, empty) or when the function has no reset at all (the kernel shows
    neither reset_method nor reset); None when a kernel before 5.15 shows
    ``reset`` but no ``reset_method``."""
    port = Fn("0000:00:1c.4", "060400", driver="pcieport", group=5, resettable=False)
    listed = Fn("0000:04:00.0", "020000", parent=port.address, group=6, reset_method="flr bus")
    disabled = Fn("0000:04:00.1", "020000", parent=port.address, group=7, reset_method="")
    none = Fn("0000:04:00.2", "020000", parent=port.address, group=8, resettable=False)
    old = Fn("0000:04:00.3", "020000", parent=port.address, group=9, old_kernel=True)
    tree = pci_tree.build(tb, [port, listed, disabled, none, old])
    assert (tree.real(tree.paths[disabled.address]) / "reset_method").read_text() == ""
    got = facts(mounts="")
    assert {a: f.reset_method for a, f in got.functions.items()} == {
        port.address: "", listed.address: "flr bus", disabled.address: "", none.address: "",
        old.address: None}
    for blocked in (disabled, none):
        assert [f.risk for f in pci_verdict(blocked.address, got).blocking] == [Risk.NO_RESET]
    assert pci_verdict(listed.address, got).ok
    assert pci_verdict(old.address, got).ok


def test_missing_sysfs_gives_empty_facts(tmp_path):
    assert read_host_facts(tmp_path / "nothing", cmdline="", mounts=MOUNTINFO,
                           swaps="") == HostFacts()


# ------------------------------------------------------------ pcie_acs_override=, applied or not

ACS_CMDLINE = "root=/dev/nvme0n1p2 pcie_acs_override=downstream,multifunction"
PATCH = "pcie_acs_overrides"  # a function the out-of-tree ACS override patch adds
CONTROL = "pci_quirk_intel_pch_acs"  # its neighbour in quirks.c on every kernel


def kallsyms(directory: Path, *names: str) -> Path:
    """A /proc/kallsyms as an unprivileged reader sees it: addresses zeroed."""
    directory.mkdir(exist_ok=True)
    (directory / "kallsyms").write_text(
        "0000000000000000 T _text\n"
        + "".join(f"0000000000000000 t {n}\n" for n in names)
        + "0000000000000000 t e1000_probe\t[e1000e]\n")
    return directory


@pytest.mark.parametrize(("btf", "syms", "applied"), [
    ([PATCH, CONTROL, "pcie_acs_override_setup"], None, True),  # linux-zen, Proxmox
    ([CONTROL, "pci_quirk_amd_sb_acs"], None, False),  # Debian/Fedora stock
    (["pci_dev_specific_acs_enabled"], [CONTROL], False),  # BTF silent, kallsyms tells
    (None, [CONTROL, "pcie_acs_override_setup"], True),
    (None, [f"{CONTROL}.cold", f"x{PATCH}", f"{PATCH}_helper"], False),  # whole names only
    (["e1000_probe"], ["e1000_probe"], True),  # neither proves anything: taken as applied
    (None, None, True),
], ids=["btf-patched", "btf-stock", "kallsyms-stock", "kallsyms-patched", "whole-names",
        "silent", "nothing-readable"])
def test_acs_override_applied_or_ignored_by_this_kernel(tb, tmp_path, btf, syms, applied):
    """The word on the command line is weighed only if this kernel has the patch that
    reads it; a kernel that ignores it gets a note instead of the risk."""
    tree = laptop(tb)
    if btf is not None:
        tree.add_kernel_btf(btf)
    proc = kallsyms(tmp_path / "proc", *syms) if syms is not None else NO_PROC
    got = facts(cmdline=ACS_CMDLINE, proc=proc)
    assert (got.acs_override, got.acs_override_ignored) == (applied, not applied)
    wifi = pci_verdict(WIFI.address, got)
    if applied:
        assert [f.risk for f in wifi.blocking] == [Risk.ACS_OVERRIDE]
    else:
        assert wifi.ok and wifi.reason() == (
            "pcie_acs_override= is on the command line but this kernel ignores it (it lacks "
            "the out-of-tree ACS override patch): the IOMMU groups are the hardware's own")
        assert pci_table_row(got, WIFI.address)[4:] == ("ok", wifi.reason())
    # Without the word on the command line nothing is read and nothing is said.
    plain = facts(proc=proc)
    assert (plain.acs_override, plain.acs_override_ignored) == (False, False)


def pci_table_row(got: HostFacts, address: str) -> tuple[str, ...]:
    return next(row for _, rows in iommu_table(got) for row in rows if row[0] == address)


def test_kernel_listings_are_streamed_once_per_boot(tb, tmp_path, monkeypatch):
    """kallsyms is ~12 MiB: read in chunks (a name across two chunks is still found),
    at most up to a cap, and only once while the file stays the same."""
    laptop(tb)
    monkeypatch.setattr(sysfs_acs, "_CHUNK", 64)
    monkeypatch.setattr(sysfs_acs, "_LISTING_CAP", 64 * 64)
    proc = tmp_path / "proc"
    proc.mkdir()
    filler = "0000000000000000 t pad\n" * 50  # 1150 bytes: the name straddles a chunk edge
    (proc / "kallsyms").write_text(filler + f"0000000000000000 t {CONTROL}\n")
    sysfs_acs._scan.cache_clear()
    assert facts(cmdline=ACS_CMDLINE, proc=proc).acs_override_ignored
    assert facts(cmdline=ACS_CMDLINE, proc=proc).acs_override_ignored
    assert (sysfs_acs._scan.cache_info().misses, sysfs_acs._scan.cache_info().hits) == (1, 1)
    # Past the cap nothing more is read: the name there proves nothing.
    (proc / "kallsyms").write_text("0000000000000000 t pad\n" * 200
                                   + f"0000000000000000 t {CONTROL}\n")
    assert facts(cmdline=ACS_CMDLINE, proc=proc).acs_override
    assert sysfs_acs._scan.cache_info().misses == 2


# ------------------------------------------------------------ reset files and the bus

def test_a_gpu_and_its_audio_without_reset_files_move_as_one_bus(tb):
    """NVIDIA GPUs often have no FLR: the kernel shows no reset file for either
    function (a bus reset would hit both). Going together, a bus reset covers them."""
    port = Fn("0000:00:01.0", "060400", driver="pcieport", group=1)
    gpu = Fn("0000:01:00.0", "030000", vendor="10de", device="11e1", parent=port.address,
             driver="nouveau", group=1, resettable=False)
    audio = Fn("0000:01:00.1", "040300", vendor="10de", device="0e0b", parent=port.address,
               driver="snd_hda_intel", group=1, resettable=False)
    pci_tree.build(tb, [port, gpu, audio])
    got = facts(mounts="")
    assert [(got.functions[a].parent, got.functions[a].reset_method,
             got.functions[a].reset_shown) for a in (gpu.address, audio.address)] == [
        (port.address, "", False)] * 2
    assert got.functions[port.address].parent == ""
    both = frozenset({audio.address})
    assert pci_verdict(gpu.address, got, together=both, along=both).ok
    alone = pci_verdict(gpu.address, got)
    assert [f.risk for f in alone.blocking] == [Risk.GROUP, Risk.NO_RESET]
    assert "the kernel shows neither reset_method nor reset for it" in alone.reason()
    assert pci_table_row(got, gpu.address)[4] == "unsafe"


# ------------------------------------------------------------ chipset bridges in a group

def test_a_chipset_bridge_bound_to_a_driver_makes_its_group_not_viable(tb):
    """Intel's PCH: the LPC bridge (lpc_ich), SATA and SMBus share a group. The LPC
    bridge is a 06xx function but no PCI-to-PCI bridge: bound to its driver, the
    kernel refuses the group, and the reason names it."""
    lpc = Fn("0000:00:1f.0", "060100", device="8c4b", driver="lpc_ich", group=11)
    sata = Fn("0000:00:1f.2", "010400", device="282a", driver="ahci", group=11)
    smbus = Fn("0000:00:1f.3", "0c0500", device="8c22", driver="i801_smbus", group=11)
    tree = pci_tree.build(tb, [lpc, sata, smbus])
    got = facts(mounts="")
    verdict = pci_verdict(smbus.address, got, together=frozenset({sata.address, lpc.address}))
    assert verdict.reason() == ("IOMMU group 11 is shared with 0000:00:1f.0 (ISA bridge, "
                                "class 060100, bound to lpc_ich) which stays on the host")
    # Unbound (as on AMD's FCH), the same bridge is no obstacle: the kernel agrees.
    (tree.real(tree.paths[lpc.address]) / "driver").unlink()
    assert pci_verdict(smbus.address, facts(mounts=""),
                       together=frozenset({sata.address})).ok


@pytest.mark.reliability
def test_a_huge_or_garbled_kernel_listing_is_read_only_up_to_its_cap(tb, reliability):
    """A listing far past any real size (here a sparse 100 MiB BTF whose names lie beyond
    the cap) is read up to the cap and proves nothing: the override counts as applied.
    Binary garbage around the names does not hide them."""
    tree = laptop(tb)
    btf = tree.add_kernel_btf([])
    size = 100 << 20
    with btf.open("r+b") as f:
        f.truncate(size)
        f.seek(size - 64)
        f.write(b"\0" + CONTROL.encode() + b"\0")
    sysfs_acs._scan.cache_clear()
    huge = facts(cmdline=ACS_CMDLINE)
    assert (huge.acs_override, huge.acs_override_ignored) == (True, False)
    btf.write_bytes(bytes(range(256)) * 4096 + b"\xff" + CONTROL.encode() + b"\0"
                    + bytes(range(255, -1, -1)) * 4096)
    garbled = facts(cmdline=ACS_CMDLINE)
    assert (garbled.acs_override, garbled.acs_override_ignored) == (False, True)
    reliability.record("kernel listing (BTF/kallsyms) far past its size",
                       listing_mib=size >> 20, cap_mib=sysfs_acs._LISTING_CAP >> 20,
                       scans=sysfs_acs._scan.cache_info().misses, result="taken as applied")
# Every value the sysfs reader and the udev adapter read of a PCI function, out of
# the shape the kernel writes: absent (said once), never an exception that would
# stop every loop turn while the function is there.

def _replace_link(link: Path, target: str) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """The adapters' lines, with fresh memories of what they already said."""
    monkeypatch.setattr(sysfs, "_reported", kv.ReportedOnce(), raising=False)
    monkeypatch.setattr(udev_devices, "_reported", kv.ReportedOnce())
    caplog.set_level(logging.WARNING, logger="phyllod")
    return lambda: [r.getMessage() for r in caplog.records]


GROUP_LINK = "../../../kernel/iommu_groups/"
BAD_FUNCTION = [
    # (what, attribute files written, links replaced, the fields that read as absent)
    ("vendor zzzz", {"vendor": "zzzz\n"}, {}, {"vendor": ""}),
    ("device of 5 digits", {"device": "0x12345\n"}, {}, {"device": ""}),
    ("class 64 KiB", {"class": "0x" + "0" * 65536}, {}, {"class_code": ""}),
    ("class 7 digits", {"class": "0x0280001\n"}, {}, {"class_code": ""}),
    ("iommu_group -> ../../x", {}, {"iommu_group": "../../x"}, {"iommu_group": None}),
    ("iommu_group superscript two", {}, {"iommu_group": GROUP_LINK + "\u00b2"},
     {"iommu_group": None}),
    ("iommu_group 2**40", {}, {"iommu_group": GROUP_LINK + str(2 ** 40)},
     {"iommu_group": None}),
    ("iommu_group -1", {}, {"iommu_group": GROUP_LINK + "-1"}, {"iommu_group": None}),
    ("reset_method with an escape", {"reset_method": "flr\x1b[2J bus\n"}, {},
     {"reset_method": ""}),
    ("reset_method 64 KiB", {"reset_method": "flr " * 16384}, {}, {"reset_method": ""}),
]


@pytest.mark.parametrize(("files", "links", "absent"), [(f, ln, a) for _, f, ln, a in BAD_FUNCTION],
                         ids=[w for w, *_ in BAD_FUNCTION])
def test_a_bad_value_reads_as_absent_and_is_said_once(tb, told, files, links, absent):
    tree = pci_tree.build(tb, [WIFI_PORT, WIFI])
    here = tree.real(tree.paths[WIFI.address])
    for name, text in files.items():
        (here / name).write_text(text)
    for name, target in links.items():
        _replace_link(here / name, target)
    got = [facts(mounts="") for _ in range(3)]  # three loop turns
    fn = got[0].functions[WIFI.address]
    assert {k: getattr(fn, k) for k in absent} == absent
    assert got[0] == got[1] == got[2]
    assert len(told()) == len(absent), told()
    assert all(len(line) < 400 and line.isprintable() for line in told()), told()
    # Whatever was garbled, the verdict is reached and errs on the blocking side.
    assert pci_verdict(WIFI.address, got[0]) is not None


def test_odd_driver_links_never_read_as_unbound(tb):
    """"" is "no driver" (harmless in a group): a driver link with a name that is
    empty, garbled or long still names a driver, cleaned."""
    tree = pci_tree.build(tb, [WIFI_PORT, WIFI, SATA, USB])
    _replace_link(tree.real(tree.paths[WIFI.address]) / "driver", "../../../bus/pci/drivers/")
    _replace_link(tree.real(tree.paths[SATA.address]) / "driver",
                  "../../../bus/pci/drivers/ahci\x1b[2J\u202e")
    _replace_link(tree.real(tree.paths[USB.address]) / "driver",
                  "../../bus/pci/drivers/" + "x" * 200)
    got = facts(mounts="")
    drivers = {a: got.functions[a].driver for a in (WIFI.address, SATA.address, USB.address)}
    assert drivers == {WIFI.address: "drivers", SATA.address: "ahci\ufffd[2J\ufffd",
                       USB.address: "x" * kv.MAX_DRIVER_NAME}
    assert not pci_verdict(USB.address, got).ok, "its group mate is bound to a driver"


def test_odd_group_directories_and_member_names(tb, told):
    """A group named ``²`` (str.isdigit says yes, int says no) made every read raise;
    members of any name are kept (an unknown member blocks), cleaned."""
    tree = pci_tree.build(tb, [WIFI_PORT, WIFI])
    groups = tree.root / "sys" / "kernel" / "iommu_groups"
    (groups / "\u00b2" / "devices").mkdir(parents=True)
    (groups / ("9" * 30) / "devices").mkdir(parents=True)
    (groups / "2" / "devices" / "ff0d0000.smmu\u202e").mkdir()  # a platform device, say
    got = facts(mounts="")
    assert set(got.groups) == {2}
    assert got.groups[2] == tuple(sorted((WIFI_PORT.address, WIFI.address,
                                          "ff0d0000.smmu\ufffd")))
    assert not pci_verdict(WIFI.address, got).ok
    assert len(told()) == 2, told()


def test_entries_of_no_pci_address_are_no_functions(tb, told):
    tree = pci_tree.build(tb, [WIFI_PORT, WIFI])
    devices = tree.root / "sys" / "bus" / "pci" / "devices"
    (devices / "0000:02:00.9").symlink_to(tree.real(tree.paths[WIFI.address]))
    (devices / "..x").symlink_to(tree.real(tree.paths[WIFI.address]))
    assert set(facts(mounts="").functions) == {WIFI_PORT.address, WIFI.address}
    assert len(told()) == 2, told()


def test_vmd_domains_of_five_hex_digits_are_addresses(tb):
    """Intel VMD puts its NVMe functions in domain 10000 and up ("%04x" is a minimum)."""
    vmd = Fn("0000:00:0e.0", "010400", device="467f", driver="vmd", group=11)
    nvme = Fn("10000:e1:00.0", "010802", vendor="144d", device="a80a", parent=vmd.address,
              driver="nvme", group=11)
    tree = pci_tree.build(tb, [vmd, nvme])
    disk = tree.add_disk(nvme.address, "nvme/nvme0", "nvme0n1", "259:0")
    tree.add_partition(disk, "nvme0n1p1", "259:1")
    got = facts(mounts="22 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n")
    assert got.functions[nvme.address].iommu_group == 11
    assert got.mounted == {vmd.address: "/ (nvme0n1p1)", nvme.address: "/ (nvme0n1p1)"}


def test_mount_labels_and_keyboard_names_are_cleaned_like_udev_strings(tb):
    """One cleaner: a filesystem label in a mount point (``/media/u/LABEL``), a dm name and
    an input device's name read by sysfs come out as the udev adapter cleans a USB string."""
    tree = laptop(tb)
    hostile = "in\u202egnp.exe\u2066\x1b[2J\u2028x\u0085y\x1c\u200b"
    (tree.real(tree.paths[NVME.address]) / "nvme").mkdir(exist_ok=True)
    # The kernel escapes space, tab, newline and backslash in a mount point, nothing else.
    label = hostile + "\t\\ \n"
    octal = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in label)
    got = facts(mounts=f"22 1 259:2 / /media/u/{octal} rw - ext4 /dev/nvme0n1p2 rw\n")
    assert NVME.address in got.mounted, "U+2028 or U+0085 in a label split the line"
    assert got.mounted[NVME.address] == f"/media/u/{clean(label)} (nvme0n1p2)"
    assert "\u202e" not in got.mounted[NVME.address]
    tree.add_usb_bus(USB.address)
    tree.add_usb("1-1", devnum=2)
    tree.add_input("input7", hostile, "120013", "fffffffffffffffe", parent="1-1:1.0")
    names = list(sysfs.host_keyboards(SYS).values())
    assert names == [clean(hostile)] == [udev_devices._attr(_DeviceWith(hostile), "name")]


class _DeviceWith:
    """What pyudev hands the udev adapter for an attribute: the raw bytes."""

    def __init__(self, text: str) -> None:
        self.attributes = {"name": text.encode()}


def test_pci_devices_from_udev_are_checked_too(tb, told):
    """The udev adapter's own reading of a PCI function (the Device on the bus)."""
    odd = Fn("0000:05:00.0", "028000", vendor="8086", device="2723", driver="iwlwifi", group=5)
    tree = pci_tree.build(tb, [WIFI_PORT, WIFI, odd])
    here = tree.real(tree.paths[odd.address])
    (here / "vendor").write_text("zzzz\n")
    (here / "class").write_text("0x02800\n")  # five digits in sysfs: garbled
    _replace_link(here / "iommu_group", GROUP_LINK + str(2 ** 40))
    tb.add_device("pci", "pci0000:07/0000:07:00.9", None, ["class", "0x028000"],
                  ["PCI_CLASS", "28000", "PCI_SLOT_NAME", "0000:07:00.9"])
    devices = {d.id: d for d in present_devices() if d.subsystem == "pci"}
    assert set(devices) == {"pci:0000:02:00.0", "pci:0000:05:00.0"}
    d = devices["pci:0000:05:00.0"]
    assert (d.vendor, d.product, d.device_class, d.iommu_group) == ("", "2723", "", None)
    assert devices["pci:0000:02:00.0"].iommu_group == 2
    present_devices()
    assert len(told()) == 4, told()  # vendor, class, group, the address: each once
