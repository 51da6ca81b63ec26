"""A USB plug or unplug arrives twice: the kernel's uevent, then udev's copy of it.

Why two: udev passes a USB device's ``add`` on only once it has run its
rules, and in the lab (a slow VM) that was 15 to 135 ms after the kernel had
finished probing the device (its ``bind``: configuration set, interface
drivers bound, a keyboard's input device registered); a udev rule's script
starts only then too. So the udev adapter also listens to the kernel's own
uevents, for a USB device's ``bind`` and ``remove`` only, and takes the plug
at the kernel's ``bind``: not at its ``add``, which comes before the probe,
when the device's ``descriptors`` are locked (a read waits for the probe)
and a keyboard is not a keyboard yet, so the verdict that the host must keep
one could not see it. udev's copy still counts: it adds the hardware
database's names.

This is the bookkeeping, with no pyudev in it: which copy is the first
(deliver it), which the second of a pair (judge it against the first), and
which is stale: udev's events older than one already delivered for the same
device, such as its ``add`` after the kernel's ``bind`` (that copy carries
nothing the ``bind`` lacks) or after a quick unplug's ``remove`` (it must not
bring the device back). The kernel's sequence number, which udev's copy
keeps, orders them. Bounded: a pair whose second copy never comes (a socket
that overflowed) is forgotten after ``limit`` others, and a rescan forgets all.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Generic, TypeVar

Delivered = TypeVar("Delivered")

Key = tuple[str, str, int]


class Copy(enum.Enum):
    FIRST = "first"  # deliver it
    SECOND = "second"  # the other copy was delivered: judge this one against it
    STALE = "stale"  # older than an event already delivered for the device: drop it


class UeventCopies(Generic[Delivered]):
    """The first copies delivered (by device path, action and sequence number) and the
    newest sequence number delivered for each device path."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._first: OrderedDict[Key, Delivered] = OrderedDict()
        self._newest: OrderedDict[str, int] = OrderedDict()

    def arrived(self, devpath: str, action: str, seqnum: int) -> tuple[Copy, Delivered | None]:
        """Which copy an event is; for the second, what the first delivered. A
        sequence number of 0 (none) is never stale."""
        missing = object()
        first = self._first.pop((devpath, action, seqnum), missing)
        if 0 < seqnum < self._newest.get(devpath, 0):
            return Copy.STALE, None  # a second copy too: the device moved on since
        if first is missing:
            return Copy.FIRST, None
        if action == "remove":
            self._newest.pop(devpath, None)  # nothing older can follow both copies
        return Copy.SECOND, first  # type: ignore[return-value]

    def delivered(self, devpath: str, action: str, seqnum: int, what: Delivered,
                  paired: bool) -> None:
        """``what`` was delivered for this event; ``paired``: its other copy will come."""
        if seqnum > 0:
            self._newest[devpath] = max(seqnum, self._newest.get(devpath, 0))
            self._newest.move_to_end(devpath)
            if len(self._newest) > self._limit:
                self._newest.popitem(last=False)
        if paired:
            self._first[(devpath, action, seqnum)] = what
            if len(self._first) > self._limit:
                self._first.popitem(last=False)

    def current(self, devpath: str, seqnum: int) -> bool:
        """Whether nothing newer than event ``seqnum`` was delivered for the device
        since, its remove included (a second copy judged later must not outlive it)."""
        return self._newest.get(devpath, 0) == seqnum

    def forget(self) -> None:
        """Events were lost and every device is read again: no pair is waited for."""
        self._first.clear()
        self._newest.clear()
