"""Steps: carrying out reconcile's planned libvirt calls (Attach, Detach).

Work in flight is marked before its task starts, so no second reconcile can
issue it again; each step's end (done, failed, the connection lost) comes
back as a change that asks for a reconcile. A failed call is recorded
against the guest run it went to, with its backoff (core's record_failure).
A returned detach is not a removal: the step waits for DEVICE_REMOVED (or
for the guest's run to end), at most ``detach_timeout``. Each call's end,
its result and how long it took since the step started, is told to
``call_ended`` (the metrics, service/metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from phyllod.core.guest_runs import Run, run_of
from phyllod.core.hostdev_xml import hostdev_xml
from phyllod.core.model import Guest, Hostdev, State, Subsystem
from phyllod.core.plan import Attach, Detach, Failure, Operation, OpKind, Step, record_failure
from phyllod.host import trace
from phyllod.host.libvirt_client import LibvirtClient, LibvirtError
from phyllod.host.systemd_glue import MessageId
from phyllod.host.usb_reset import UsbResetError, reset_usb_device
from phyllod.service.journal import fields, log

T = TypeVar("T")


class FaultPoints(Protocol):
    """The seams a reliability test holds a step at (service/fault_points)."""

    def holds(self, name: str) -> bool: ...

    async def point(self, name: str) -> None: ...

    async def around(self, name: str, call: Awaitable[T]) -> T: ...


def still_held(guest: Guest | None, hostdev: Hostdev) -> bool:
    """After a detach returned: does the guest still hold the device (QEMU has not
    let go yet), so that the step must wait for DEVICE_REMOVED?"""
    return guest is not None and guest.state.active and hostdev in guest.hostdevs


class Steps:
    """Steps in flight (by slot), the last failure per slot, and the detaches
    waiting for their guest to release the device (by guest and alias)."""

    def __init__(self, *, client: LibvirtClient, faults: FaultPoints,
                 guests: Callable[[], Mapping[str, Guest] | None],
                 store_guest: Callable[[str, Guest | None], None],
                 refresh_guest: Callable[[str], Coroutine[Any, Any, None]],
                 connection_failed: Callable[[LibvirtError], None],
                 unwatch_bind: Callable[[str], None],
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 changed: Callable[[], None], detach_timeout: float,
                 to_host_timeout: float,
                 call_ended: Callable[[OpKind, Subsystem, bool, float], None]) -> None:
        self._client = client
        self._faults = faults
        self._guests = guests
        self._store_guest = store_guest
        self._refresh_guest = refresh_guest
        self._connection_failed = connection_failed
        self._unwatch_bind = unwatch_bind
        self._spawn = spawn
        self._changed = changed
        self._detach_timeout = detach_timeout
        self._to_host_timeout = to_host_timeout
        self._call_ended = call_ended
        self.inflight: dict[str, Operation] = {}
        self.failures: dict[str, Failure] = {}
        self._detach_waiters: dict[tuple[str, str], asyncio.Event] = {}

    def start(self, steps: Iterable[Step]) -> None:
        """Mark each step in flight, issue its libvirt call, then await it as a task.

        The call is issued here, in the turn that planned it: as a task's first
        move it would wait behind every callback already queued (a plug's other
        uevents, the rest of the turn), 0.1 to 0.2 s in the lab's L1 (issue 18).
        A step issues its call from its task only when something must come
        first: PCI group mates moved to vfio, or an armed fault point.
        """
        for step in steps:
            # The guest run the call goes to: a failure is counted against it alone.
            run = run_of((self._guests() or {}).get(step.guest))
            if isinstance(step, Attach):
                self.inflight[step.slot] = Operation(OpKind.ATTACH, step.guest,
                                                     step.device.alias)
                started = time.monotonic()
                if step.reset:
                    _reset(step)
                issued = (None if step.prepare or self._faults.holds("attach-before")
                          else self._issue_attach(step))
                self._announce_attach(step)  # after the call, which the worker has taken
                self._spawn(self._attach(step, run, started, issued))
            else:
                self.inflight[step.slot] = Operation(OpKind.DETACH, step.guest,
                                                     step.hostdev.alias)
                released = self._detach_waiters[(step.guest, step.hostdev.alias)] = (
                    asyncio.Event())
                started = time.monotonic()
                issued = (None if self._faults.holds("detach-before")
                          else self._issue_detach(step))
                log.info("detaching %s from %s (%s): libvirt detachDeviceAlias",
                         step.hostdev.alias, step.guest, step.why,
                         **fields(step.device_id, step.guest, state=State.DETACHING))
                self._spawn(self._detach(step, run, released, started, issued))

    def forget_failure(self, slot: str) -> None:
        self.failures.pop(slot, None)

    def forget_failures(self, which: Callable[[Failure], bool]) -> None:
        """Drop the failures ``which`` says are void (their guest or run changed)."""
        for slot, failure in list(self.failures.items()):
            if which(failure):
                del self.failures[slot]

    def released(self, guest: str, alias: str) -> None:
        """libvirt's DEVICE_REMOVED: the detach waiting for it is done."""
        waiter = self._detach_waiters.get((guest, alias))
        if waiter is not None:
            waiter.set()

    def release_waiters(self, guest: str) -> None:
        """End the detaches waiting for QEMU in a guest whose run is over."""
        for (holder, _alias), waiter in self._detach_waiters.items():
            if holder == guest:
                waiter.set()

    def release_all(self) -> None:
        """At stop: the detach calls have returned; do not wait for QEMU."""
        for waiter in self._detach_waiters.values():
            waiter.set()

    def _failed(self, slot: str, kind: OpKind, guest: str, run: Run | None,
                error: LibvirtError) -> None:
        """Record a failed call against the guest run it went to, for backoff, and
        re-read the guest (it may have stopped: the failure is then void).

        A lost connection is no failure of the device: the reconnect resyncs.
        """
        if error.connection_lost:
            self._connection_failed(error)
            return
        now = asyncio.get_running_loop().time()
        self.failures[slot] = record_failure(self.failures.get(slot), kind, guest,
                                             error.message, now, run)
        self._spawn(self._refresh_guest(guest))

    @staticmethod
    def _announce_attach(a: Attach) -> None:
        """The attach's journal line."""
        d = a.device
        source = (f"managed, host {d.address}" if d.subsystem is Subsystem.PCI
                  else f"bus {d.busnum} device {d.devnum}")
        by = a.decided_by or (f"by rule '{a.rule}'" if a.rule else "by a manual override")
        log.info("attaching %s to %s %s: libvirt attachDeviceFlags (%s)",
                 d.describe(), a.guest, by, source,
                 **fields(d.id, a.guest, a.rule, State.ATTACHING))

    def _issue_attach(self, a: Attach) -> Awaitable[Guest | None]:
        trace.point("step-issued", a.device.id)
        return self._client.attach(a.guest, hostdev_xml(a.device))

    def _issue_detach(self, a: Detach) -> Awaitable[Guest | None]:
        trace.point("step-issued", a.hostdev.alias)
        return self._client.detach(a.guest, a.hostdev.alias)

    async def _attach(self, a: Attach, run: Run | None, started: float,
                      issued: Awaitable[Guest | None] | None) -> None:
        """Await the attach ``start`` issued, or issue it after the group mates'
        move to vfio (or an armed ``attach-before``)."""
        d = a.device
        prepared: list[str] = []
        try:
            if issued is None:
                for address in a.prepare:
                    log.info("moving %s (IOMMU group of %s) to vfio-pci first", address, d.id,
                             **fields(d.id, a.guest, a.rule, State.ATTACHING))
                    await self._client.to_vfio(address)
                    prepared.append(address)
                await self._faults.point("attach-before")
                issued = self._issue_attach(a)
            guest = await self._faults.around("attach", issued)
        except LibvirtError as e:
            log.warning("attach %s to %s failed: %s", d.id, a.guest, e.message,
                        **fields(d.id, a.guest, a.rule, State.FAILED, MessageId.ATTACH_FAILED))
            self._call_ended(OpKind.ATTACH, d.subsystem, False, time.monotonic() - started)
            await self._give_back(prepared)
            self._failed(a.slot, OpKind.ATTACH, a.guest, run, e)
        else:
            took = time.monotonic() - started
            self._call_ended(OpKind.ATTACH, d.subsystem, True, took)
            log.info("attached %s to %s in %.0f ms", d.id, a.guest, took * 1000,
                     **fields(d.id, a.guest, a.rule, State.ATTACHED, MessageId.ATTACHED))
            self._store_guest(a.guest, guest)
            self.failures.pop(a.slot, None)
        finally:
            self.inflight.pop(a.slot, None)
            self._changed()

    async def _give_back(self, addresses: list[str]) -> None:
        """After a failed group move, return the functions taken for it to their drivers.

        Bounded in time: a function without a working reset can hang on its
        way back; it is then reported as left without its driver.
        """
        for address in addresses:
            try:
                await asyncio.wait_for(self._client.to_host(address), self._to_host_timeout)
            except LibvirtError as e:
                log.warning("cannot give %s back to its host driver: %s", address, e.message,
                            **fields(device=f"pci:{address}"))
            except TimeoutError:
                log.warning("%s did not return to its host driver within %.0fs; it stays "
                            "unbound until a reset or reboot", address,
                            self._to_host_timeout, **fields(device=f"pci:{address}"))

    async def _detach(self, a: Detach, run: Run | None, released: asyncio.Event,
                      started: float, issued: Awaitable[Guest | None] | None) -> None:
        """Await the detach ``start`` issued (or issue it after an armed
        ``detach-before``), then QEMU's release."""
        alias = a.hostdev.alias
        failed = fields(a.device_id, a.guest, "", State.FAILED, MessageId.DETACH_FAILED)
        subsystem = a.hostdev.subsystem
        try:
            if issued is None:
                await self._faults.point("detach-before")
                issued = self._issue_detach(a)
            guest = await self._faults.around("detach", issued)
            self._store_guest(a.guest, guest)
            if still_held(guest, a.hostdev):
                try:
                    await asyncio.wait_for(released.wait(), self._detach_timeout)
                except TimeoutError:
                    error = (f"guest {a.guest} did not release the device within "
                             f"{self._detach_timeout:.0f}s")
                    log.warning("detach %s: %s", alias, error, **failed)
                    self._call_ended(OpKind.DETACH, subsystem, False,
                                     time.monotonic() - started)
                    self._failed(a.slot, OpKind.DETACH, a.guest, run, LibvirtError(error))
                    return
                self._store_guest(a.guest, await self._client.guest(a.guest))
            self._call_ended(OpKind.DETACH, subsystem, True, time.monotonic() - started)
            log.info("detached %s from %s", alias, a.guest,
                     **fields(a.device_id, a.guest, "", State.HOST, MessageId.DETACHED))
            self.failures.pop(a.slot, None)
            self._unwatch_bind(a.slot)
        except LibvirtError as e:
            self._call_ended(OpKind.DETACH, subsystem, False, time.monotonic() - started)
            log.warning("detach %s from %s failed: %s", alias, a.guest, e.message, **failed)
            self._failed(a.slot, OpKind.DETACH, a.guest, run, e)
        finally:
            self._detach_waiters.pop((a.guest, alias), None)
            self.inflight.pop(a.slot, None)
            self._changed()


def _reset(a: Attach) -> None:
    """The rule's reset_before_attach: a USB port reset, then the attach regardless.

    It blocks the loop for the reset (tens of milliseconds): the kernel
    re-enumerates in place, keeping the device's numbers.
    """
    d = a.device
    where = fields(d.id, a.guest, a.rule, State.ATTACHING)
    try:
        reset_usb_device(d.busnum, d.devnum)
    except UsbResetError as e:
        log.warning("reset before attach failed: %s; attaching anyway", e, **where)
    else:
        log.info("reset %s before attaching it", d.id, **where)
