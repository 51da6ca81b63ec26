"""Guests: the libvirt connection and the guests as last read from it.

libvirt is connected in the background (a hung libvirtd never answers
``open``) and again with backoff when the connection is lost; while it is
away ``guests`` is None and reconcile moves nothing. A lifecycle event makes
the guest be read again; STOPPED or SHUTDOWN ends its run at once (the
re-read may lag behind the host drivers binding what QEMU let go), and what
was noted about an ended run (its failures, the detaches waiting on it) is
void (core/guest_runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from phyllod.core.guest_runs import Run, run_of
from phyllod.core.model import Guest
from phyllod.core.plan import Failure
from phyllod.host.libvirt_client import LibvirtClient, LibvirtError
from phyllod.host.systemd_glue import MessageId
from phyllod.service.journal import fields, log

#: The longest wait between two connection attempts.
RECONNECT_MAX_DELAY = 30.0
#: After this long without an answer from libvirt, say so (and keep waiting).
CONNECT_PATIENCE = 10.0

GuestEvent = Callable[[str, int, bool], None]
DeviceRemoved = Callable[[str, str], None]
Lost = Callable[[str], None]


class OpenClient(Protocol):
    """How the part gets its libvirt client (LibvirtClient, or a test's fake)."""

    def __call__(self, uri: str, on_guest_event: GuestEvent, on_device_removed: DeviceRemoved,
                 on_lost: Lost) -> LibvirtClient: ...


def reconnect_delays() -> Iterator[float]:
    """The waits before each reconnection attempt: 0.5 s doubling to 30 s, then 30 s."""
    delay = 0.5
    while True:
        yield delay
        delay = min(delay * 2, RECONNECT_MAX_DELAY)


class Guests:
    """The connection, the guests (by name; None while libvirt is away), and the runs
    libvirt's lifecycle events said stopped or are shutting down (``ending``)."""

    def __init__(self, *, uri: str, open_client: OpenClient,
                 forget_failures: Callable[[Callable[[Failure], bool]], None],
                 device_released: Callable[[str, str], None],
                 run_over: Callable[[str], None], stopping: Callable[[], bool],
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 changed: Callable[[], None]) -> None:
        self.uri = uri
        self._forget_failures = forget_failures
        self._device_released = device_released
        self._run_over = run_over
        self._stopping = stopping
        self._spawn = spawn
        self._changed = changed
        self.client = open_client(uri, self._on_guest_event, self._on_device_removed,
                                  self._on_lost)
        self.guests: dict[str, Guest] | None = None
        #: Guest runs libvirt said stopped or are shutting down (before a re-read shows it).
        self.ending: set[Run] = set()
        #: Set once the first connection attempt ended, whatever its outcome.
        self.first_attempt = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    def connect_in_background(self, at_once: bool = False) -> None:
        if self._stopping() or (self._connecting is not None and not self._connecting.done()):
            return
        self._connecting = asyncio.get_running_loop().create_task(self._reconnect(at_once))

    def current_ending(self) -> frozenset[Run]:
        """The ending runs, forgetting those no longer current (the re-read caught up)."""
        if self.guests is not None:
            current = {run_of(g) for g in self.guests.values()}
            self.ending = {r for r in self.ending if r in current}
        return frozenset(self.ending)

    async def refresh(self, name: str) -> None:
        """Read one guest again (after an event or a call that may have changed it)."""
        try:
            self.store(name, await self.client.guest(name))
        except LibvirtError as e:
            if e.connection_lost:
                self.connection_failed(e)
            else:
                log.warning("cannot read guest %s: %s", name, e.message, **fields(guest=name))
        self._changed()

    def store(self, name: str, guest: Guest | None) -> None:
        """Keep a guest as just read (None: it is no longer defined)."""
        if self.guests is None:
            return
        before = self.guests.get(name)
        if guest is None:
            self.guests.pop(name, None)
        else:
            self.guests[name] = guest
        if before is None or guest is None or before.state != guest.state:
            state = guest.state if guest is not None else "undefined"
            log.info("guest %s is %s", name, state,
                     **fields(guest=name, event=MessageId.GUEST_STATE))
        ended = run_of(before)
        if ended is not None and ended != run_of(guest):
            # That run is over (stopped, or started again between two reads): it has
            # released everything, and what was noted about it is void.
            self._run_over(name)
            self._forget_failures(lambda failure: failure.run == ended)

    def connection_failed(self, error: LibvirtError) -> None:
        self.client.mark_lost()
        self._on_lost(error.message)

    def cancel(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()

    async def _try_connect(self, log_failure: bool) -> bool:
        attempt = asyncio.ensure_future(self._open())
        if not (await asyncio.wait({attempt}, timeout=CONNECT_PATIENCE))[0]:
            log.warning("%s does not answer after %.0fs; waiting for it (the bus is served "
                        "meanwhile, and changes that need libvirt are refused)",
                        self.uri, CONNECT_PATIENCE)
        try:
            guests = await attempt
        except LibvirtError as e:
            self.client.mark_lost()
            if log_failure:
                log.warning("cannot connect to %s: %s; retrying", self.uri, e.message)
            return False
        self.guests = guests
        self._forget_failures(lambda _failure: True)
        log.info("connected to %s: %d guests, %d running", self.uri, len(guests),
                 sum(g.state.active for g in guests.values()),
                 **fields(event=MessageId.LIBVIRT_CONNECTED))
        self._changed()
        return True

    async def _open(self) -> dict[str, Guest]:
        await self.client.connect()
        return await self.client.guests()

    async def _reconnect(self, at_once: bool = False) -> None:
        """Connect, with backoff; at start the first attempt is made at once and its
        failure logged (later ones only once the delay is at its longest)."""
        if at_once:
            connected = await self._try_connect(log_failure=True)
            self.first_attempt.set()
            if connected:
                return
        for delay in reconnect_delays():
            if self._stopping():
                return
            await asyncio.sleep(delay)
            if await self._try_connect(log_failure=delay >= RECONNECT_MAX_DELAY):
                return

    def _on_lost(self, reason: str) -> None:
        if self.guests is None:
            return
        log.warning("lost the connection to %s (%s); reconnecting", self.uri, reason,
                    **fields(event=MessageId.LIBVIRT_LOST))
        self.guests = None
        self._changed()
        self.connect_in_background()

    def _on_guest_event(self, name: str, run: int, ending: bool) -> None:
        """A lifecycle event: read the guest again. STOPPED or SHUTDOWN ends its run at
        once; a later event of the same run (a fake reboot resuming) takes that back."""
        self._forget_failures(lambda failure: failure.guest == name)
        known = (self.guests or {}).get(name)
        if known is not None:
            current = Run(known.uuid, run) if run > 0 else run_of(known)
            if ending and current is not None:
                self.ending.add(current)
                self._run_over(name)
            elif not ending:
                self.ending.discard(Run(known.uuid, run))
        self._spawn(self.refresh(name))
        self._changed()

    def _on_device_removed(self, name: str, alias: str) -> None:
        self._device_released(name, alias)
        self._spawn(self.refresh(name))
