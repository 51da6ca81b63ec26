"""Following sysfs links and reading attributes, shared by the sysfs readers.

Over a root path, so tests point them at a fixture tree; paths handed out
are named as the running system names them (``/sys/devices/…``).
"""

from __future__ import annotations

import os
from pathlib import Path

SYS = Path("/sys")
#: A sysfs attribute is at most a page (sysfs_emit); a longer file is no kernel's.
MAX_ATTRIBUTE = 4096


def resolve(link: Path) -> Path | None:
    """Where a sysfs link really leads, None if nowhere (gone, a loop)."""
    try:
        return link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def resolved_root(sys_root: Path) -> Path:
    return resolve(sys_root) or sys_root.absolute()


def sys_path(sys_root: Path, real: Path) -> str:
    """``real`` (resolved, under ``sys_root``) as the running system names it: /sys/…"""
    return str(SYS / real.relative_to(resolved_root(sys_root)))


def read_attribute(path: str | os.PathLike[str]) -> str:
    """A sysfs attribute's text, "" if absent; never more than a page is read.

    One ``read(2)`` on a plain descriptor: sysfs hands an attribute over whole,
    and a keyboard's plug reads three of these in its turn (issue 18).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, MAX_ATTRIBUTE).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def links(directory: Path) -> list[tuple[str, int]]:
    """(name, inode) of each entry of ``directory``, sorted, from one directory read:
    kernfs gives a node re-created under the same name a new inode."""
    try:
        with os.scandir(directory) as entries:
            return sorted((e.name, e.inode()) for e in entries)
    except OSError:
        return []
