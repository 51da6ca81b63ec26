"""The HOLDS part of the host facts, computed again only where what it is made of changed.

What the host holds (mounts and swaps followed down to their block devices,
and its keyboards) is weighed for every USB verdict, so a USB uevent makes
it stale; but computing it follows every mount's block device and every
input device through sysfs links, and in a slow VM that cost 0.1 to 0.8 s
of each plug's turn (issue 18, measured in the lab with the trace hook),
while a plug seldom changes what is mounted.

So the mounts are computed again only when a fingerprint of everything they
are made of differs: the mount and swap texts, each /sys/class/block and
/sys/dev/block entry's name and the inode of its link (one directory read
each: kernfs gives a node re-created under the same name, a re-plugged
``sdb``, a new inode), each block device's ``slaves`` (what a device-mapper
or md device is built on) and each dm device's name; a device's place in
sysfs does not change while its node lives. Where the kernel's own news of
mounts, swaps and block devices is heard (host/holds_watch), even the texts
and the fingerprint are taken only after such news (:meth:`HoldsMemo.stale`).
The keyboards are kept per
input device by the same kind of key (:func:`~phyllod.host.sysfs_keyboards.
host_keyboards`): a plugged keyboard is looked at, the others are not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from phyllod.host.sysfs_paths import links, read_attribute

Fingerprint = tuple[object, ...]
Mounted = tuple[dict[str, str], dict[str, str]]
#: (what the host has mounted, by PCI function and by block device path; its keyboards).
Holds = tuple[dict[str, str], dict[str, str], dict[str, str]]
#: The mount and swap texts, read when asked for (only when the mounts are looked at).
MountTexts = Callable[[], tuple[str, str]]
KeyboardsSeen = dict[tuple[str, int], tuple[str, str] | None]


def _names(directory: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(directory)))
    except OSError:
        return ()


def fingerprint(sys_root: Path) -> Fingerprint:
    """What the mounts' compute reads from sysfs, cheaply: block links by inode, stacked
    devices' slaves, dm names."""
    block_dir = sys_root / "class" / "block"
    blocks = tuple(links(block_dir))
    stacked = tuple((name, _names(block_dir / name / "slaves"),
                     read_attribute(block_dir / name / "dm" / "name")
                     if name.startswith("dm-") else "")
                    for name, _ino in blocks)
    return blocks, stacked, tuple(links(sys_root / "dev" / "block"))


class HoldsMemo:
    """The HOLDS part as :func:`phyllod.host.sysfs.read_host_facts` asks for it, with
    ``mounted`` (:func:`~phyllod.host.sysfs.read_mounted`) called only when the
    fingerprint, the root or the mount texts changed, and ``keyboards``
    (:func:`~phyllod.host.sysfs_keyboards.host_keyboards`) given the input devices
    already judged. While :attr:`heard` (the watch listens), the texts are read
    and the fingerprint taken only after :meth:`stale`. ``computed`` counts the
    mounts' computes, ``looked`` the times the texts and fingerprint were taken."""

    def __init__(self, mounted: Callable[[Path, str, str], Mounted],
                 keyboards: Callable[[Path, KeyboardsSeen], dict[str, str]]) -> None:
        self._mounted = mounted
        self._keyboards = keyboards
        self._key: tuple[object, ...] | None = None
        self._value: Mounted | None = None
        self._seen: KeyboardsSeen = {}
        self._stale = True
        #: Every change to the mounts, swaps and block devices is told (:meth:`stale`).
        self.heard = False
        self.computed = 0
        self.looked = 0

    def stale(self) -> None:
        """Something the mounts are made of may have changed: look again next time."""
        self._stale = True

    def hearing(self, heard: bool) -> None:
        """Whether the watch tells every change from now on; what came before it
        started was not heard, so the next call looks."""
        self.heard = heard
        self._stale = True

    def __call__(self, sys_root: Path, texts: MountTexts) -> Holds:
        if self._stale or not self.heard or self._key is None or self._key[0] != sys_root:
            self._stale = False
            mounts, swaps = texts()
            key = (sys_root, mounts, swaps, fingerprint(sys_root))
            self.looked += 1
            if self._value is None or key != self._key:
                self._value = self._mounted(sys_root, mounts, swaps)
                self._key = key
                self.computed += 1
        assert self._value is not None
        return (*self._value, self._keyboards(sys_root, self._seen))
