"""The HOLDS part of the host facts, computed again only when what it is made of changed.

What the host holds (mounts and swaps followed down to their block devices,
and its keyboards) is weighed for every USB verdict, so a USB uevent makes
it stale; but computing it follows every mount's block device and every
input device through sysfs links, and in a slow VM that cost 0.1 to 0.8 s of
each plug's turn (issue 18, measured in the lab with the trace hook), while
a plug almost never changes it.

So a compute is memoized under a fingerprint of everything it reads: the
mount and swap texts, and for /sys/class/block and /sys/class/input each
entry's name and the inode of its link (one directory read each: kernfs
gives a node re-created under the same name, a re-plugged ``sdb`` or a
reused ``input7``, a new inode), each block device's ``slaves`` (what a
device-mapper or md device is built on) and each dm device's name. A
device's place in sysfs and an input device's capabilities do not change
while its node lives. When any of that differs, the whole part is computed
again, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

Fingerprint = tuple[object, ...]
_T = TypeVar("_T")


def _links(directory: Path) -> tuple[tuple[str, int], ...]:
    """(name, inode) of each entry, from one directory read; () if absent."""
    try:
        with os.scandir(directory) as entries:
            return tuple(sorted((e.name, e.inode()) for e in entries))
    except OSError:
        return ()


def _names(directory: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(directory)))
    except OSError:
        return ()


def _text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return ""


def fingerprint(sys_root: Path) -> Fingerprint:
    """What :func:`~phyllod.host.sysfs.read_holds` reads from sysfs, cheaply: links by
    inode, stacked devices' slaves, dm names."""
    block_dir = sys_root / "class" / "block"
    blocks = _links(block_dir)
    stacked = tuple((name, _names(block_dir / name / "slaves"),
                     _text(block_dir / name / "dm" / "name") if name.startswith("dm-") else "")
                    for name, _ino in blocks)
    return blocks, stacked, _links(sys_root / "class" / "input"), _links(sys_root / "dev" / "block")


class HoldsMemo(Generic[_T]):
    """``compute`` (:func:`phyllod.host.sysfs.read_holds`, which the root passes) called
    only when the fingerprint, the root or the mount texts changed; ``computed``
    counts the computes."""

    def __init__(self, compute: Callable[[Path, str, str], _T]) -> None:
        self._compute = compute
        self._key: tuple[object, ...] | None = None
        self._value: _T | None = None
        self.computed = 0

    def __call__(self, sys_root: Path, mounts: str, swaps: str) -> _T:
        key = (sys_root, mounts, swaps, fingerprint(sys_root))
        if self._value is None or key != self._key:
            self._value = self._compute(sys_root, mounts, swaps)
            self._key = key
            self.computed += 1
        return self._value
