"""Hears what can change the mounts the host holds, so no plug has to look for itself.

What is mounted or swapped on, followed down to its block devices, is
weighed for every USB verdict (host/holds_memo). Until this watch, every USB
uevent read the mount texts again and took a fingerprint of the block
devices in case something had changed unheard: in the lab that was most of
phyllod's share of a plug (issue 18: the turn's host facts read, 33 of
50 ms under TCG). But the kernel tells of every such change itself:

- /proc/self/mountinfo and /proc/swaps report a change to poll(2) as
  ``POLLPRI`` (``POLLERR`` too) once per change, the way systemd watches
  both (they are always readable, so ``POLLIN`` says nothing);
- a block device appears, goes, or changes what it is built on (a
  device-mapper table, an md array's members) with a uevent of the ``block``
  subsystem: a stick's disk, a re-created node under an old name, LVM
  extended onto a USB disk.

So the mounts are looked at again only after one of those, and a plug's turn
looks only at its keyboards. If any source cannot be watched, ``start``
says so and the memo looks on every USB uevent, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
from collections.abc import Callable
from pathlib import Path

import pyudev

log = logging.getLogger(__name__)

MOUNT_TABLES = (Path("/proc/self/mountinfo"), Path("/proc/swaps"))


class HoldsWatch:
    """Calls ``on_change`` on the loop after a mount, swap or block device change."""

    def __init__(self, on_change: Callable[[], None],
                 tables: tuple[Path, ...] = MOUNT_TABLES) -> None:
        self._on_change = on_change
        self._tables = tables
        self._fds: list[int] = []
        self._poll: select.epoll | None = None
        self._monitor: pyudev.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Watch every source; False (and nothing watched) if one cannot be."""
        self._loop = loop
        try:
            self._poll = select.epoll()
            for table in self._tables:
                fd = os.open(table, os.O_RDONLY | os.O_CLOEXEC)
                self._fds.append(fd)
                self._poll.register(fd, select.EPOLLPRI)
            self._monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
            self._monitor.filter_by("block")
            self._monitor.start()
        except (OSError, ValueError) as e:
            log.warning("cannot watch the mounts and block devices (%s): what the host "
                        "holds is looked at again on every USB uevent", e)
            self.stop()
            return False
        loop.add_reader(self._poll.fileno(), self._tables_changed)
        loop.add_reader(self._monitor.fileno(), self._blocks_changed)
        return True

    def stop(self) -> None:
        if self._loop is not None:
            for source in (self._poll, self._monitor):
                if source is not None:
                    self._loop.remove_reader(source.fileno())
        if self._poll is not None:
            self._poll.close()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._poll = self._monitor = None

    def _tables_changed(self) -> None:
        # The loop's own epoll found ours ready by polling the tables, and a
        # table's poll is what resets its "changed" (the kernel compares the
        # reader's last seen event): so the wake itself is the news, once per
        # change, and ours is drained of whatever is left (nothing, mostly).
        assert self._poll is not None
        self._poll.poll(0)
        self._on_change()

    def _blocks_changed(self) -> None:
        assert self._monitor is not None
        changed = False
        try:
            while self._monitor.poll(timeout=0) is not None:
                changed = True
        except OSError as e:  # ENOBUFS: events were lost, which is a change too
            log.warning("block device monitor: %s", e)
            changed = True
        if changed:
            self._on_change()
