"""The trace hook: ``PHYLLOD_TRACE=FILE`` makes the daemon append one line per point.

Issue 18 measures phyllod's own share of a plug (udev event received →
libvirt call issued) to a millisecond or better; the journal's timestamps
are wall-clock, taken after formatting, and cover only what is logged. So
the event path marks its points here, and a bench (bench/share_bench.py)
reads them back. A line is ``MONOTONIC_NS POINT SUBJECT``: CLOCK_MONOTONIC
is the same clock in every process of the machine, so the bench can put its
own moments (the plug, a bare libvirt call) on the same axis.

Points: ``udev-received`` (a uevent drained from the monitor; subject: the
device), ``udev-handled`` (its event taken in by the daemon's parts),
``turn-start``/``turn-end`` (a loop turn; subject: its number), within a turn
``turn-facts`` (host facts read) and ``turn-planned`` (replanned),
``step-issued`` (a step handed to the libvirt worker; subject: the device or
alias), ``attach-call``/``attach-returned`` and ``detach-call``/
``detach-returned`` (the worker thread right before and after
``attachDeviceFlags``/``detachDeviceAlias``; subject: the guest).

Unset (production), :func:`point` is one global test and a return: the
subject is not formatted, the clock not read, nothing written.
Each line is one ``write(2)`` on an ``O_APPEND`` descriptor, so lines from
the loop and from the libvirt worker thread never interleave.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

_PATH = os.environ.get("PHYLLOD_TRACE", "")
_fd = -1


def _open() -> int:
    global _fd
    if _fd < 0:
        _fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return _fd


def point(name: str, subject: object = "-") -> None:
    """Mark ``name`` now, about ``subject`` (``str()`` is taken only when tracing)."""
    if not _PATH:
        return
    line = f"{time.monotonic_ns()} {name} {subject}\n".encode(errors="replace")
    with contextlib.suppress(OSError):  # a trace that cannot be written costs nothing
        os.write(_open(), line)


def _collected(phase: str, info: dict[str, int]) -> None:
    """The garbage collector's pauses, on the same axis (subject: the generation)."""
    point(f"gc-{phase}", info["generation"])


if _PATH:
    gc.callbacks.append(_collected)
