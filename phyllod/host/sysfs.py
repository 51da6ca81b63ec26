"""Readers of host facts in sysfs, over a root path so tests can point them at a fixture.

Plain file reads, no libudev: under umockdev libudev returns None for symlink
attributes (``iommu_group``, ``driver``), while ``os.readlink`` is
redirected into the testbed like every other call here. Every reader treats
a missing or unreadable file as absent: the host is what it is, and a verdict
over partial facts errs on the blocking side (an unknown group member blocks).

Paths handed out (``block_mounts``, ``host_keyboards``) are written as the
running system names them, ``/sys/devices/…``, whatever root they were read
under: that is what pyudev's ``Device.sys_path`` says for the same device, so
a caller compares them with a device's path without knowing about the root.

Every value read is checked against the shape the kernel writes
(kernel_values) and device text is cleaned (device_text): a value of another
shape is absent (an id ""), said once in the log, never an exception that
would stop every loop turn while the device is there.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from phyllod.core import kernel_values as kv
from phyllod.core.device_text import clean
from phyllod.core.model import ALL_PARTS, FactsPart, HostFacts, PciFunction
from phyllod.host.sysfs_acs import kernel_ignores_acs_override
from phyllod.host.sysfs_keyboards import host_keyboards
from phyllod.host.sysfs_paths import MAX_ATTRIBUTE as _MAX_ATTRIBUTE
from phyllod.host.sysfs_paths import SYS as _SYS
from phyllod.host.sysfs_paths import read_attribute as _read_attribute
from phyllod.host.sysfs_paths import resolve as _resolve
from phyllod.host.sysfs_paths import resolved_root as _resolved_root
from phyllod.host.sysfs_paths import sys_path as _sys_path

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_PROC = Path("/proc")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_FIELD_SEPARATOR = re.compile(r"[ \t]+")
#: Host facts are read on every loop turn: each bad value is told once.
_reported = kv.ReportedOnce()


def iommu_enabled(sys_root: Path = _SYS) -> bool:
    """Whether the kernel runs an IOMMU that isolates devices.

    It registers one under /sys/class/iommu and puts devices in groups under
    /sys/kernel/iommu_groups; ``intel_iommu=on`` on a machine without VT-d, or
    an IOMMU the kernel disabled, leaves them empty. That decides PCI passthrough.
    """
    return _has_entries(sys_root / "class" / "iommu") and _has_entries(
        sys_root / "kernel" / "iommu_groups")


def read_host_facts(sys_root: Path = _SYS, cmdline: str | None = None,
                    mounts: str | None = None, swaps: str | None = None,
                    proc_root: Path = _PROC,
                    parts: Collection[FactsPart] = ALL_PARTS,
                    holds: HoldsReader | None = None) -> HostFacts:
    """Everything the safety verdicts weigh, read in one pass; only ``parts`` of it
    (the fields of the others are left empty, for :meth:`HostFacts.merged`).

    ``cmdline``, ``mounts`` (/proc/self/mountinfo or /proc/mounts format) and
    ``swaps`` (/proc/swaps) default to the running kernel's; tests pass text.
    Active swap counts as mounted: passing its disk's controller is as fatal.
    ``proc_root`` is where /proc/kallsyms is looked for (see
    :func:`kernel_ignores_acs_override`). ``holds`` computes the HOLDS part
    from the root and the mount texts (:func:`read_holds`, or a memo of it:
    host/holds_memo).
    """
    facts = HostFacts()
    if FactsPart.PCI in parts:
        if cmdline is None:
            cmdline = _read(proc_root / "cmdline")
        acs_asked = any(w.startswith("pcie_acs_override=") for w in cmdline.split())
        acs_ignored = acs_asked and kernel_ignores_acs_override(sys_root, proc_root)
        facts = replace(facts, iommu_enabled=iommu_enabled(sys_root),
                        acs_override=acs_asked and not acs_ignored,
                        acs_override_ignored=acs_ignored,
                        functions={f.address: f for f in _pci_functions(sys_root)},
                        groups=iommu_groups(sys_root))
    if FactsPart.HOLDS in parts:
        def texts() -> tuple[str, str]:
            return (_read(Path("/proc/self/mountinfo")) or _read(Path("/proc/mounts"))
                    if mounts is None else mounts,
                    _read(Path("/proc/swaps")) if swaps is None else swaps)

        mounted, by_path, keyboards = (holds or read_holds)(sys_root, texts)
        facts = replace(facts, mounted=mounted, block_mounts=by_path, keyboards=keyboards)
    return facts


#: What the host holds: mounted PCI functions, mounted block devices, keyboards.
Holds = tuple[dict[str, str], dict[str, str], dict[str, str]]
#: The HOLDS part from the root and the mount and swap texts, read when asked for.
HoldsReader = Callable[[Path, Callable[[], tuple[str, str]]], Holds]


def read_holds(sys_root: Path, texts: Callable[[], tuple[str, str]]) -> Holds:
    """The HOLDS part: what is mounted or swapped on (by PCI function, by block device
    path) and the host's keyboards, from the mount texts and sysfs."""
    return (*read_mounted(sys_root, *texts()), host_keyboards(sys_root))


def read_mounted(sys_root: Path, mounts: str, swaps: str) -> tuple[dict[str, str],
                                                                  dict[str, str]]:
    """What is mounted or swapped on: by PCI function, by block device path."""
    held = list(_held_blocks(sys_root, mounts, swaps))
    return _by_pci_address(held), _by_sys_path(sys_root, held)


def pci_function(sys_root: Path, address: str) -> PciFunction | None:
    """The function at ``address`` (``0000:03:00.0``) as sysfs shows it now, or None."""
    path = sys_root / "bus" / "pci" / "devices" / address
    if not path.is_dir():
        return None
    reset_method, reset_shown = _reset_method(path)
    real = _resolve(path)
    return PciFunction(
        address=address,
        vendor=_hex(path / "vendor", 4),
        device=_hex(path / "device", 4),
        class_code=_hex(path / "class", 6),
        driver=kv.driver_name(_link_name(path / "driver") or _link_target(path / "driver")),
        iommu_group=_checked(path / "iommu_group", _link_target(path / "iommu_group"),
                             kv.iommu_group, "an IOMMU group link"),
        boot_vga=_read_attribute(path / "boot_vga").strip() == "1",
        reset_method=reset_method,
        reset_shown=reset_shown,
        parent=(real.parent.name if real is not None
                and kv.pci_address(real.parent.name) is not None else ""),
    )


def iommu_groups(sys_root: Path = _SYS) -> dict[int, tuple[str, ...]]:
    """IOMMU group number → the sorted addresses of its member functions."""
    groups = {}
    for group in _entries(sys_root / "kernel" / "iommu_groups"):
        number = _checked(group, group.name, kv.iommu_group_name, "an IOMMU group number")
        if number is not None:
            # A member of any name counts (and, unknown, blocks): only its text is cleaned.
            groups[number] = tuple(sorted(clean(d.name) for d in _entries(group / "devices")))
    return groups


def mounted_pci(sys_root: Path, mounts: str, swaps: str = "") -> dict[str, str]:
    """PCI address → what the host has mounted through it ("/ (nvme0n1p2)").

    Each mounted block device, and the devices it is built on (device-mapper
    ``slaves``), is followed to its place under /sys/devices; every PCI
    function on that path carries it (the controller and the ports above).
    The first mount wins, "/" before all others. Sources that are no block
    device (tmpfs, overlay, NFS) are skipped.
    """
    return _by_pci_address(_held_blocks(sys_root, mounts, swaps))


def block_mounts(sys_root: Path, mounts: str, swaps: str = "") -> dict[str, str]:
    """/sys/devices path of each block device the host uses → what it has mounted from it.

    The same devices and labels as :func:`mounted_pci` (a mounted or
    swapped-on device and the ones it is built on; first mount wins, "/"
    first), keyed by where each one sits: a USB device carries every entry
    whose path lies below its own, so passing a stick, or the hub it hangs
    off, cannot pull a mounted filesystem (or the disk under a LUKS mapping)
    from under the host.
    """
    return _by_sys_path(sys_root, _held_blocks(sys_root, mounts, swaps))


@dataclass(frozen=True)
class _Mount:
    point: str
    source: str
    dev: str = ""  # "major:minor" from mountinfo; "" from /proc/mounts and swaps


def _parse_mounts(text: str) -> Iterator[_Mount]:
    """Lines of /proc/self/mountinfo or /proc/mounts, whichever the text is."""
    for fields in _lines_of_fields(text):
        if len(fields) >= 10 and "-" in fields[6:]:
            dash = fields.index("-", 6)
            if len(fields) > dash + 2:
                yield _Mount(_unescape(fields[4]), _unescape(fields[dash + 2]), fields[2])
        elif len(fields) >= 2:
            yield _Mount(_unescape(fields[1]), _unescape(fields[0]))


def _parse_swaps(text: str) -> Iterator[_Mount]:
    """Swap partitions from /proc/swaps (swap files live on a mount already seen)."""
    for fields in _lines_of_fields(text)[1:]:
        if len(fields) >= 2 and fields[1] == "partition":
            yield _Mount("[SWAP]", _unescape(fields[0]))


def _lines_of_fields(text: str) -> list[list[str]]:
    """The kernel's lines and fields: only a newline ends a line, only spaces and tabs
    part fields (it escapes those in a field), never the U+2028, U+0085 or \\x1c
    that str.splitlines and str.split also break at, which a label's mount point
    (/media/user/LABEL) may hold."""
    return [_FIELD_SEPARATOR.split(line.strip(" \t")) for line in text.split("\n")
            if line.strip(" \t")]


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in mount fields as \\ooo."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def _held_blocks(sys_root: Path, mounts: str, swaps: str) -> Iterator[tuple[Path, str]]:
    """(real /sys/devices path, "mount point (name)") of every block device in use.

    Mounts and swaps in priority order, "/" first, each followed by the
    devices it is built on; one device may come more than once (the first
    label is the one to keep). Devices whose link leads nowhere are skipped.
    """
    entries = [*_parse_mounts(mounts), *_parse_swaps(swaps)]
    for entry in sorted(entries, key=lambda e: e.point != "/"):
        name = _block_name(sys_root, entry)
        if not name:
            continue
        # A mount point often holds a filesystem label (/media/user/LABEL): device text.
        label = f"{clean(entry.point)} ({clean(_display_name(sys_root, name))})"
        for backing in _backing_devices(sys_root, name, set()):
            real = _resolve(sys_root / "class" / "block" / backing)
            if real is not None:
                yield real, label


def _by_pci_address(held: Iterable[tuple[Path, str]]) -> dict[str, str]:
    """Every PCI function on a held device's path (controller, ports above) → first label."""
    by_address: dict[str, str] = {}
    for real, label in held:
        for address in (p for p in real.parts if kv.pci_address(p)):
            by_address.setdefault(address, label)
    return by_address


def _by_sys_path(sys_root: Path, held: Iterable[tuple[Path, str]]) -> dict[str, str]:
    devices = _resolved_root(sys_root) / "devices"
    by_path: dict[str, str] = {}
    for real, label in held:
        if real.is_relative_to(devices):
            by_path.setdefault(_sys_path(sys_root, real), label)
    return by_path


def _block_name(sys_root: Path, mount: _Mount) -> str:
    """The kernel name (``nvme0n1p2``, ``dm-0``) of the block device behind a mount, or "".

    mountinfo's major:minor is the truth when it names a block device (it
    also covers sources like /dev/root); btrfs and the like report an
    anonymous 0:N, so the source path is the fallback.
    """
    if mount.dev and not mount.dev.startswith("0:"):
        link = sys_root / "dev" / "block" / mount.dev
        if link.exists():
            return link.resolve().name
    if mount.source.startswith("/dev/mapper/"):
        return _dm_by_name(sys_root, mount.source.removeprefix("/dev/mapper/"))
    name = mount.source.removeprefix("/dev/")
    if name != mount.source and "/" not in name and (sys_root / "class" / "block" / name).exists():
        return name
    return ""


def _dm_by_name(sys_root: Path, mapper_name: str) -> str:
    for dev in _entries(sys_root / "class" / "block"):
        if (dev.name.startswith("dm-")
                and _read_attribute(dev / "dm" / "name").strip() == mapper_name):
            return dev.name
    return ""


def _display_name(sys_root: Path, name: str) -> str:
    """What a person knows the device as: the mapper name of a dm device, else its name."""
    return _read_attribute(sys_root / "class" / "block" / name / "dm" / "name").strip() or name


def _backing_devices(sys_root: Path, name: str, seen: set[str]) -> Iterator[str]:
    """``name`` and, recursively, the devices under it (LUKS on LVM on a partition…)."""
    if name in seen:
        return
    seen.add(name)
    yield name
    for slave in _entries(sys_root / "class" / "block" / name / "slaves"):
        yield from _backing_devices(sys_root, slave.name, seen)


def usb_host_drivers(sys_path: str, sys_root: Path = _SYS) -> tuple[str, ...]:
    """The host drivers bound now to the interfaces of the USB device at ``sys_path``
    (``/sys/devices/…/1-2``), sorted; usbfs (a guest's QEMU, through libusb) is none.

    A bind uevent says a driver took an interface; this says whether one still
    holds it. During a guest's reset of the device the kernel rebinds its
    interfaces, a host driver may bind for a moment and QEMU claims them back:
    only a driver still bound after the grace window took the device back.
    """
    path = Path(sys_path)
    if not path.is_relative_to(_SYS):
        return ()
    port = path.name
    found = set()
    for entry in _entries(sys_root / path.relative_to(_SYS)):
        if not entry.name.startswith(f"{port}:"):
            continue  # not an interface (1-2:1.0): an attribute, a child device, a port
        try:
            driver = os.path.basename(os.readlink(entry / "driver"))
        except OSError:
            continue  # no driver bound
        if driver != "usbfs":
            found.add(driver)
    return tuple(sorted(found))


def _pci_functions(sys_root: Path) -> Iterator[PciFunction]:
    for entry in sorted(_entries(sys_root / "bus" / "pci" / "devices")):
        if _checked(entry, entry.name, kv.pci_address, "a PCI address") is None:
            continue  # no function of ours; a group listing it still counts it (and blocks)
        function = pci_function(sys_root, entry.name)
        if function is not None:
            yield function


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _has_entries(directory: Path) -> bool:
    return bool(_entries(directory))


def _reset_method(function: Path) -> tuple[str | None, bool]:
    """The kernel's reset methods ("flr bus"; "" none; None cannot say) and whether
    it shows a reset file at all.

    The kernel shows ``reset_method`` (5.15 and later) and ``reset`` (all
    kernels) only for a function that can be reset, deciding when the
    function appears; a person may also write ``reset_method`` empty to
    disable every method. So: ``reset_method`` readable → its text; no
    ``reset_method`` but a ``reset`` → a kernel before 5.15, None (it can be
    reset, by a method we cannot name); neither → ("", False): the kernel
    found no reset method at all.
    """
    try:
        with (function / "reset_method").open("rb") as f:
            text = f.read(_MAX_ATTRIBUTE + 1).decode("utf-8", errors="replace")
    except OSError:
        return (None, True) if (function / "reset").exists() else ("", False)
    methods = _checked(function / "reset_method", text.strip(), kv.reset_methods,
                       "a list of reset methods")
    return ("" if methods is None else methods), True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _checked(path: Path, value: str, parse: Callable[[str], _T | None],
             expected: str) -> _T | None:
    """``parse(value)``; None, said once in the log, if a value is there but of no kernel's
    shape."""
    parsed = parse(value)
    if parsed is None and value and _reported.first(str(path), value[:256]):
        log.warning("%s: %s is not %s; taken as absent", clean(str(path), 200),
                    kv.shown(value), expected)
    return parsed


def _hex(path: Path, width: int) -> str:
    """A sysfs id ("0x8086\\n") as ``width`` lower-case hex digits, "" if absent or garbled."""
    text = _read_attribute(path).strip()
    return _checked(path, text, lambda v: kv.hex_id(v, width), f"{width} hex digits") or ""


def _link_target(path: Path) -> str:
    """Where a symlink points (as written), "" if no link."""
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _link_name(path: Path) -> str:
    """The basename of a symlink's target (``driver`` → "iwlwifi"), "" if no link."""
    return os.path.basename(_link_target(path).rstrip("/"))
