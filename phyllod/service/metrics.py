"""Metrics: the counts of calls that ended, and the rate-limited write of the snapshot.

The part holds the one state no other part keeps, the calls' outcomes and
durations (the steps report each end: :meth:`Metrics.call_ended`); everything
else (devices, the policy, libvirt, the requests) is read from the other
parts through the root's callables when the text is made.

A turn only says that something may have changed (:meth:`Metrics.changed`);
the write comes later, from a timer: at least ``settle`` seconds after the
change (a plug's turns, its attach and its result, make one write, and the
file never competes with the libvirt call it follows: issue 18), at most one
write per ``interval``, and a trailing one, so that the last state always
lands. Nothing changing arms no timer at all: an idle daemon makes no
wake-ups. An unchanged text is not written again; one that could not be
written is tried again at the next change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from phyllod.core.metrics import Calls, Snapshot, exposition
from phyllod.core.model import Subsystem
from phyllod.core.plan import OpKind

#: Seconds between a change and its write, at least.
SETTLE = 1.0
#: Seconds between two writes, at least.
INTERVAL = 5.0


class Metrics:
    """The calls' outcomes by kind and subsystem, and the pending write."""

    def __init__(self, *, snapshot: Callable[[dict[tuple[OpKind, Subsystem], Calls]], Snapshot],
                 write: Callable[[str], bool] | None, settle: float = SETTLE,
                 interval: float = INTERVAL) -> None:
        self._snapshot = snapshot
        self._write = write
        self._settle = settle
        self._interval = interval
        self.calls: dict[tuple[OpKind, Subsystem], Calls] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._written_at: float | None = None
        self._text = ""
        #: How many times a text was written (tests count them).
        self.writes = 0

    def call_ended(self, kind: OpKind, subsystem: Subsystem, ok: bool, seconds: float) -> None:
        """A step's libvirt call ended (``ok`` or failed) after ``seconds``."""
        key = (kind, subsystem)
        self.calls[key] = self.calls.get(key, Calls()).observed(ok, seconds)
        self.changed()

    def changed(self) -> None:
        """Something shown may have changed: write within the limits, from a timer
        (nothing, with no file to write)."""
        if self._handle is not None or self._write is None:
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + self._settle
        if self._written_at is not None:
            at = max(at, self._written_at + self._interval)
        self._handle = loop.call_at(at, self._flush)

    def cancel(self) -> None:
        """At stop: nothing more is written (the root then removes the file)."""
        self._write = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _flush(self) -> None:
        self._handle = None
        self._written_at = asyncio.get_running_loop().time()
        text = exposition(self._snapshot(self.calls))
        if text != self._text and self._write is not None:
            self.writes += 1
            if self._write(text):  # one that failed is tried again at the next change
                self._text = text
