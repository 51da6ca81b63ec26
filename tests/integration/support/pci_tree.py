"""PCI functions, IOMMU groups, disks, USB devices and input devices in a umockdev testbed,
as a real host shows them.

``add_device`` makes the devices, their attributes, the /sys/bus and
/sys/class links, and emits ``add``. What umockdev cannot express is written
into the testbed's root directory by hand, as the kernel lays it out:
symlink attributes (``driver``, ``iommu_group``, ``physfn``/``virtfnN``),
/sys/kernel/iommu_groups, device-mapper ``slaves`` and /sys/dev/block
(umockdev files a block device under /sys/dev/char unless a ``block``
directory is on its path, as for sda but not for nvme0n1).

Under ``umockdev-wrapper`` code reading /sys sees all of it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402


@dataclass(frozen=True)
class Fn:
    """One PCI function to create; ``parent`` is the address of its upstream bridge."""

    address: str
    class_code: str
    vendor: str = "8086"
    device: str = "1234"
    subsystem_vendor: str = "17aa"
    subsystem_device: str = "2233"
    parent: str = ""
    driver: str = ""
    group: int | None = None
    boot_vga: bool = False
    physfn: str = ""
    sriov_totalvfs: int = 0
    #: The reset_method attribute; "": present but empty (all disabled by a person).
    reset_method: str = "flr bus"
    #: False: no reset method at all (neither reset_method nor reset is shown).
    resettable: bool = True
    #: A kernel before 5.15: reset but no reset_method.
    old_kernel: bool = False


@dataclass(frozen=True)
class Expect:
    """The verdict one function of a published layout must get (tests/data/pci/README.md)."""

    address: str
    verdict: str
    together: frozenset[str] = frozenset()
    risks: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()
    unnamed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A real machine's IOMMU groups as published, with the source they came from."""

    source: str
    functions: tuple[Fn, ...]
    expect: tuple[Expect, ...] = field(default=())


def load_layout(path: Path) -> Layout:
    """A tests/data/pci file: its functions ordered bridges first (parents before
    what is behind them). No listing shows reset files: each function reads as
    resettable by a method the kernel does not name (a kernel before 5.15)."""
    data = tomllib.loads(path.read_text())
    pending = [Fn(f["address"], f["class"].ljust(6, "0"), vendor=f["id"][:4],
                  device=f["id"][5:], parent=f.get("parent", ""), driver=f.get("driver", ""),
                  group=f["group"], boot_vga=f.get("boot_vga", False), old_kernel=True)
               for f in data["function"]]
    ordered: list[Fn] = []
    while pending:
        ready = [f for f in pending if not f.parent or f.parent in {o.address for o in ordered}]
        if not ready:
            raise ValueError(f"{path.name}: a parent is missing for {pending[0].address}")
        ordered += ready
        pending = [f for f in pending if f not in ready]
    expect = tuple(Expect(e["address"], e["verdict"], frozenset(e.get("together", ())),
                          tuple(e["risks"]) if "risks" in e else None,
                          tuple(e.get("names", ())), tuple(e.get("unnamed", ())))
                   for e in data.get("expect", ()))
    return Layout(data["source"], tuple(ordered), expect)


def build(tb: UMockdev.Testbed, functions: Sequence[Fn], iommu: bool = True) -> PciTree:
    """A host with ``functions`` in ``tb``, with an active IOMMU unless ``iommu`` is False.

    Without an IOMMU the kernel makes no groups, so the functions' ``group``
    must be None then.
    """
    tree = PciTree(tb)
    if iommu:
        tree.add_iommu()
    tree.add(functions)
    return tree


class PciTree:
    """A testbed's devices by name (PCI address, USB port or interface), and where each lives."""

    def __init__(self, tb: UMockdev.Testbed) -> None:
        self.tb = tb
        self.root = Path(tb.get_root_dir())
        self.paths: dict[str, str] = {}

    def real(self, sys_path: str) -> Path:
        """Where a /sys path lives on disk (for writing what umockdev cannot)."""
        return self.root / sys_path.lstrip("/")

    def add_iommu(self, name: str = "dmar0") -> None:
        """Register an IOMMU unit (/sys/class/iommu/NAME), as VT-d/AMD-Vi does at boot."""
        self.tb.add_device("iommu", f"virtual/iommu/{name}", None, [], [])
        (self.root / "sys" / "kernel" / "iommu_groups").mkdir(parents=True, exist_ok=True)

    def add_kernel_btf(self, names: Sequence[str]) -> Path:
        """/sys/kernel/btf/vmlinux naming ``names``: BTF's string section keeps each
        function's name NUL-terminated among binary type records."""
        btf = self.root / "sys" / "kernel" / "btf" / "vmlinux"
        btf.parent.mkdir(parents=True, exist_ok=True)
        btf.write_bytes(b"\x9f\xeb\x01\x00" + b"".join(
            b"\x00" + n.encode() + b"\x00\x0c\x00\x00\x00" for n in names))
        return btf

    def add(self, functions: Sequence[Fn]) -> None:
        """Create ``functions`` in order (bridges before what is behind them)."""
        for fn in functions:
            self._add(fn)

    def _add(self, fn: Fn) -> None:
        attrs = ["vendor", f"0x{fn.vendor}", "device", f"0x{fn.device}",
                 "subsystem_vendor", f"0x{fn.subsystem_vendor}",
                 "subsystem_device", f"0x{fn.subsystem_device}", "class", f"0x{fn.class_code}"]
        if fn.boot_vga:
            attrs += ["boot_vga", "1"]
        if fn.sriov_totalvfs:
            attrs += ["sriov_totalvfs", str(fn.sriov_totalvfs)]
        if fn.resettable:
            attrs += ["reset", ""]
            if not fn.old_kernel:
                attrs += ["reset_method", fn.reset_method]
        props = ["PCI_CLASS", fn.class_code.lstrip("0").upper(),
                 "PCI_ID", f"{fn.vendor}:{fn.device}".upper(),
                 "PCI_SUBSYS_ID", f"{fn.subsystem_vendor}:{fn.subsystem_device}".upper(),
                 "PCI_SLOT_NAME", fn.address]
        if fn.driver:
            props += ["DRIVER", fn.driver]
        if fn.parent:
            path = self.tb.add_device("pci", fn.address, self.paths[fn.parent], attrs, props)
        else:
            domain_bus = fn.address.rsplit(":", 1)[0]
            path = self.tb.add_device("pci", f"pci{domain_bus}/{fn.address}", None, attrs, props)
        self.paths[fn.address] = path
        self._links(fn, self.real(path))

    def _links(self, fn: Fn, here: Path) -> None:
        sys = self.root / "sys"
        if fn.driver:
            drivers = sys / "bus" / "pci" / "drivers" / fn.driver
            drivers.mkdir(parents=True, exist_ok=True)
            _link(here / "driver", drivers)
        if fn.group is not None:
            group = sys / "kernel" / "iommu_groups" / str(fn.group)
            (group / "devices").mkdir(parents=True, exist_ok=True)
            _link(here / "iommu_group", group)
            _link(group / "devices" / fn.address, here)
        if fn.physfn:
            pf = self.real(self.paths[fn.physfn])
            _link(here / "physfn", pf)
            index = sum(1 for p in pf.iterdir() if p.name.startswith("virtfn"))
            _link(pf / f"virtfn{index}", here)

    def add_usb_bus(self, controller: str, bus: int = 1) -> str:
        """The root hub ``usbN`` of the USB controller at PCI address ``controller``."""
        name = f"usb{bus}"
        self.paths[name] = self.tb.add_device(
            "usb", name, self.paths[controller],
            ["busnum", str(bus), "devnum", "1", "bDeviceClass", "09"],
            ["DEVTYPE", "usb_device", "BUSNUM", f"{bus:03d}", "DEVNUM", "001"])
        return self.paths[name]

    def add_usb(self, port: str, devnum: int, device_class: str = "00",
                interface: str = "030101") -> str:
        """A USB device at ``port`` (``1-2``, ``1-1.4`` behind hub ``1-1``) with one
        interface ``PORT:1.0`` of class/subclass/protocol ``interface``; returns its path.

        Its hub (root hub or ``1-1``) must exist; both are filed under ``paths``.
        """
        bus = int(port.split("-", 1)[0])
        parent = f"usb{bus}" if "." not in port else port.rsplit(".", 1)[0]
        self.paths[port] = self.tb.add_device(
            "usb", port, self.paths[parent],
            ["busnum", str(bus), "devnum", str(devnum), "bDeviceClass", device_class],
            ["DEVTYPE", "usb_device", "BUSNUM", f"{bus:03d}", "DEVNUM", f"{devnum:03d}"])
        self.paths[f"{port}:1.0"] = self.tb.add_device(
            "usb", f"{port}:1.0", self.paths[port],
            ["bInterfaceClass", interface[0:2], "bInterfaceSubClass", interface[2:4],
             "bInterfaceProtocol", interface[4:6]], ["DEVTYPE", "usb_interface"])
        return self.paths[port]

    def add_input(self, rel: str, name: str, ev: str, key: str, parent: str = "") -> str:
        """An input device ``inputN`` at ``rel`` below the device named ``parent``
        (top level, e.g. ``virtual/input/input9``, if none), with its ``eventN`` node.

        ``ev`` and ``key`` are the ``capabilities`` bitmaps as the kernel prints
        them: hex words, most significant first. ``name`` is written as is.
        """
        path = self.tb.add_device("input", rel, self.paths[parent] if parent else None,
                                  ["name", name + "\n", "capabilities/ev", ev + "\n",
                                   "capabilities/key", key + "\n"], [])
        number = rel.rsplit("input", 1)[1]
        self.tb.add_device("input", f"event{number}", path, ["dev", f"13:{64 + int(number)}"],
                           ["DEVNAME", f"/dev/input/event{number}"])
        return path

    def add_disk(self, controller: str, below: str, name: str, dev: str) -> str:
        """A whole disk ``name`` at ``below`` under ``controller``, a PCI address or a
        USB interface (``1-2:1.0``) added here.

        ``below`` is the kernel's path from the controller (``nvme/nvme0``,
        ``ata1/host0/target0:0:0/0:0:0:0/block``, ``host6/target6:0:0/6:0:0:0/block``
        for a USB stick); ``dev`` is major:minor.
        """
        return self._block(self.paths[controller], f"{below}/{name}", name, dev, "disk")

    def add_partition(self, disk: str, name: str, dev: str) -> str:
        return self._block(disk, name, name, dev, "partition")

    def add_dm(self, name: str, mapper_name: str, dev: str, slaves: Sequence[str]) -> str:
        """A device-mapper device (LUKS, LVM) on top of block devices named in ``slaves``."""
        path = self.tb.add_device("block", f"virtual/block/{name}", None,
                                  ["dev", dev, "dm/name", mapper_name],
                                  ["DEVNAME", f"/dev/{name}", "DEVTYPE", "disk",
                                   "DM_NAME", mapper_name])
        self._dev_block(dev, path)
        holders = self.real(path) / "slaves"
        holders.mkdir()
        for slave in slaves:
            _link(holders / slave, self.root / "sys" / "class" / "block" / slave)
        return path

    def _block(self, parent: str, rel: str, name: str, dev: str, devtype: str) -> str:
        path = self.tb.add_device("block", rel, parent, ["dev", dev],
                                  ["DEVNAME", f"/dev/{name}", "DEVTYPE", devtype])
        self._dev_block(dev, path)
        return path

    def _dev_block(self, dev: str, path: str) -> None:
        """/sys/dev/block/MAJ:MIN, where umockdev did not already make it."""
        link = self.root / "sys" / "dev" / "block" / dev
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            _link(link, self.real(path))


def _link(link: Path, target: Path) -> None:
    """A relative symlink, as sysfs has them (so it resolves inside the testbed too)."""
    os.symlink(os.path.relpath(target, link.parent), link)
