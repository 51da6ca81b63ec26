"""libvirt adapter: guests and their hostdevs as model values; attach, detach, events.

Threading, chosen deliberately: libvirt's own default event loop runs in one
dedicated thread, and every blocking call runs on a single worker thread
(which also serializes them). Events cross to asyncio only through
``call_soon_threadsafe``. ``libvirtaio`` was measured here to touch the
asyncio loop from executor threads whenever a call was made off the loop
thread, a latent race; the default impl is thread-safe by design and lets a
slow attach never block the daemon's loop.

Both threads are daemon threads: a hung libvirtd never answers
``libvirt.open`` (it has no timeout), and a worker the interpreter joins at
exit, as ``ThreadPoolExecutor``'s are, would then keep phyllod from ever
exiting after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import libvirt

from phyllod.core.hostdev_xml import parse_hostdevs
from phyllod.core.model import Guest, GuestState
from phyllod.host import trace

log = logging.getLogger(__name__)
T = TypeVar("T")

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTDOWN: GuestState.STOPPING,
    libvirt.VIR_DOMAIN_PAUSED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: GuestState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: GuestState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: GuestState.SUSPENDED,
}

_event_thread_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def _ensure_event_thread() -> None:
    """Register libvirt's default event loop once per process and run it."""
    global _event_thread
    with _event_thread_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


class _Worker:
    """One daemon thread running blocking calls in the order they were submitted.

    A call submitted with ``handoff`` is not left waiting for the GIL: the
    worker wakes at once, but runs Python only once the loop's thread lets
    go of the GIL, which it does at its next blocking wait, after the rest of
    the turn (0.5 ms at desk scale, 10 ms in the lab's L1, between the step
    handed over and the call on the wire: issue 18). So the submitter waits,
    bounded, until an idle worker has taken the call; the worker lets go of
    the GIL again in libvirt's blocking C call. A busy worker is not waited
    for: the call queues behind the one it runs.
    """

    #: The longest a submitter waits for an idle worker to take its call (s).
    HANDOFF_TIMEOUT = 0.005

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[
            tuple[Future, Callable[..., Any], tuple, threading.Event | None] | None] = (
            queue.SimpleQueue())
        #: Waiting for a call with nothing queued (read and written under the GIL).
        self._idle = False
        #: How many submitters waited for the worker to take their call (a test's count).
        self.handoffs = 0
        threading.Thread(target=self._run, name="libvirt-calls", daemon=True).start()

    def submit(self, fn: Callable[..., T], *args: Any, handoff: bool = False) -> Future[T]:
        future: Future[T] = Future()
        taken = threading.Event() if handoff and self._idle else None
        self._queue.put((future, fn, args, taken))
        if taken is not None:
            self.handoffs += 1
            taken.wait(self.HANDOFF_TIMEOUT)
        return future

    def shutdown(self) -> None:
        """End the thread after the calls already submitted (at once if none hangs)."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            self._idle = self._queue.empty()
            item = self._queue.get()
            self._idle = False
            if item is None:
                return
            future, fn, args, taken = item
            if taken is not None:
                taken.set()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the awaiting coroutine
                future.set_exception(e)


class LibvirtError(Exception):
    """A libvirt call failed; ``message`` is libvirt's own text."""

    def __init__(self, message: str, code: int = 0, connection_lost: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.connection_lost = connection_lost


class LibvirtClient:
    """One long-lived connection (reopened by ``connect`` after a loss).

    Callbacks run on the asyncio loop: ``on_guest(name, run, ending)`` when a
    domain's lifecycle changed (``run``: the domain id the event names, -1 once
    stopped; ``ending``: libvirt said it stopped or is shutting down),
    ``on_device_removed(name, alias)`` when QEMU released a device,
    ``on_lost(reason)`` when the connection closed.
    """

    #: How long closing waits for the worker (a call a hung libvirtd holds).
    CLOSE_TIMEOUT = 5.0

    def __init__(
        self,
        uri: str,
        on_guest: Callable[[str, int, bool], None],
        on_device_removed: Callable[[str, str], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.uri = uri
        self._on_guest = on_guest
        self._on_device_removed = on_device_removed
        self._on_lost = on_lost
        self._worker = _Worker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: dict[int, list[int]] = {}  # id(conn) -> event callback ids
        #: Domain handles by name, for the open connection (see :meth:`_domain`).
        self._domains: dict[str, libvirt.virDomain] = {}

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _submit(self, fn: Callable[..., T], *args: Any,
                handoff: bool = False) -> asyncio.Future[T]:
        """Hand ``fn`` to the worker now (``handoff``: and see it taken, as
        :class:`_Worker` says); the future ends with its result or a LibvirtError
        (converted in the worker, where the connection is used)."""
        return asyncio.wrap_future(
            self._worker.submit(self._converted, fn, *args, handoff=handoff))

    def _converted(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except libvirt.libvirtError as e:
            raise self._error(e) from None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(fn, *args)

    def _error(self, e: libvirt.libvirtError) -> LibvirtError:
        conn = self._conn
        lost = conn is not None and not self._alive(conn)
        return LibvirtError(e.get_error_message() or str(e), e.get_error_code() or 0, lost)

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    # ------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Open the connection and subscribe to domain events."""
        _ensure_event_thread()
        self._loop = asyncio.get_running_loop()
        self._conn = await self._call(self._open)

    def _open(self) -> libvirt.virConnect:
        conn = libvirt.open(self.uri)
        self._domains.clear()
        # Drivers without a remote side (test:///) have no keepalive.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(5, 3)
        conn.registerCloseCallback(self._closed_cb, None)
        ids = self._callback_ids[id(conn)] = []
        for event, cb in (
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._removed_cb),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, self._removal_failed_cb),
        ):
            ids.append(conn.domainEventRegisterAny(None, event, cb, None))
        return conn

    async def close(self) -> None:
        """Close the connection; bounded, since a hung libvirtd may hold the worker."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(TimeoutError, LibvirtError):
                await asyncio.wait_for(self._call(self._close, conn), self.CLOSE_TIMEOUT)
        self._worker.shutdown()

    def _close(self, conn: libvirt.virConnect) -> None:
        # A dead connection has nothing left to deregister, and may fail to close.
        with contextlib.suppress(libvirt.libvirtError):
            for cid in self._callback_ids.pop(id(conn), []):
                conn.domainEventDeregisterAny(cid)
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def mark_lost(self) -> None:
        """Drop a connection found dead by a failed call (the close callback may lag)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._worker.submit(self._close, conn)

    # ------------------------------------------------------------ events (libvirt thread)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _lifecycle_cb(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        self._domains.pop(dom.name(), None)  # redefined, renamed, or a new run (its ID)
        ending = event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN)
        self._post(self._on_guest, dom.name(), dom.ID(), ending)

    def _removed_cb(self, _conn: Any, dom: Any, alias: str, _opaque: Any) -> None:
        self._post(self._on_device_removed, dom.name(), alias)

    def _removal_failed_cb(self, _conn: Any, dom: Any, alias: str, _opaque: Any) -> None:
        log.warning("guest %s refused to release %s", dom.name(), alias)
        self._post(self._on_guest, dom.name(), dom.ID(), False)

    def _closed_cb(self, conn: Any, reason: int, _opaque: Any) -> None:
        reasons = {
            libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
            libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
            libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
            libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
        }
        self._post(self._lost, conn, reasons.get(reason, f"reason {reason}"))

    def _lost(self, conn: Any, reason: str) -> None:
        if conn is self._conn:
            self.mark_lost()
            self._on_lost(reason)

    # ------------------------------------------------------------ reads

    def _require(self) -> libvirt.virConnect:
        if self._conn is None:
            raise libvirt.libvirtError("not connected to libvirt")
        return self._conn

    @staticmethod
    def _guest(dom: libvirt.virDomain) -> Guest:
        state = _STATES.get(dom.state()[0], GuestState.OTHER)
        hostdevs = parse_hostdevs(dom.XMLDesc(0)) if state.active else ()
        return Guest(name=dom.name(), uuid=dom.UUIDString(), state=state, hostdevs=hostdevs,
                     run=dom.ID())

    def _all_guests(self) -> dict[str, Guest]:
        guests = {}
        for dom in self._require().listAllDomains(0):
            try:
                g = self._guest(dom)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined while we listed
                raise
            guests[g.name] = g
        return guests

    def _domain(self, name: str) -> libvirt.virDomain:
        """The handle of the domain called ``name`` for attach and detach calls, looked
        up once per connection and guest life.

        A lookup is a round trip to libvirtd (tens of ms in a slow VM, on the
        way to every attach). A handle names its domain by UUID, so it stays
        right until the name goes to another domain (redefined, renamed); it
        also keeps the run's ID from its lookup. Every lifecycle event of the
        domain (defined, undefined, started, stopped…) drops its handle
        (:meth:`_lifecycle_cb`); a call that meets a gone domain before that
        event drops it and looks again once (:meth:`_on_domain`). Guest
        re-reads (:meth:`_one_guest`) look up afresh: they report the run's ID.
        """
        dom = self._domains.get(name)
        if dom is None:
            dom = self._domains[name] = self._require().lookupByName(name)
        return dom

    def _on_domain(self, name: str, fn: Callable[[libvirt.virDomain], T]) -> T:
        """``fn(handle)``, again with a fresh handle if the kept one's domain is gone."""
        kept = name in self._domains
        try:
            return fn(self._domain(name))
        except libvirt.libvirtError as e:
            if not kept or e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            self._domains.pop(name, None)
            return fn(self._domain(name))

    def _one_guest(self, name: str) -> Guest | None:
        try:
            return self._guest(self._require().lookupByName(name))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    async def guests(self) -> dict[str, Guest]:
        """Every defined guest, with the hostdevs the running ones hold."""
        return await self._call(self._all_guests)

    async def guest(self, name: str) -> Guest | None:
        """One guest re-read, or None if it is no longer defined."""
        return await self._call(self._one_guest, name)

    # ------------------------------------------------------------ changes

    def _attach(self, name: str, xml: str) -> Guest | None:
        self._on_domain(name, lambda dom: _traced(
            "attach-call", "attach-returned", name,
            lambda: dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)))
        return self._one_guest(name)

    def attach(self, name: str, xml: str) -> asyncio.Future[Guest | None]:
        """Hot-plug ``xml`` into the running guest; the future holds the guest re-read.

        Submitted at once, not when the future is first awaited, and seen taken
        by the worker: a plug's turn puts its call on the wire before the loop
        runs anything else (issue 18).
        """
        return self._submit(self._attach, name, xml, handoff=True)

    def _detach(self, name: str, alias: str) -> Guest | None:
        self._on_domain(name, lambda dom: _traced(
            "detach-call", "detach-returned", name,
            lambda: dom.detachDeviceAlias(alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)))
        return self._one_guest(name)

    def detach(self, name: str, alias: str) -> asyncio.Future[Guest | None]:
        """Ask the guest to release the device (submitted at once, as ``attach``);
        the future holds the guest re-read.

        A returned call is not a removal: QEMU may take seconds, or a guest
        may never let go. The device is gone when the re-read guest or a
        DEVICE_REMOVED event says so.
        """
        return self._submit(self._detach, name, alias, handoff=True)

    # ------------------------------------------------------------ PCI host drivers

    @staticmethod
    def _node_device_name(address: str) -> str:
        """libvirt's node device name of a PCI function: ``pci_0000_03_00_0``."""
        return "pci_" + address.replace(":", "_").replace(".", "_")

    def _to_vfio(self, address: str) -> None:
        dev = self._require().nodeDeviceLookupByName(self._node_device_name(address))
        dev.detachFlags("vfio", 0)

    async def to_vfio(self, address: str) -> None:
        """Take a function from its host driver and bind it to vfio-pci.

        Needed only for group mates of a device being attached: libvirt's
        managed attach checks that the whole IOMMU group is off host drivers.
        """
        await self._call(self._to_vfio, address)

    def _to_host(self, address: str) -> None:
        self._require().nodeDeviceLookupByName(self._node_device_name(address)).reAttach()

    async def to_host(self, address: str) -> None:
        """Give a function prepared by ``to_vfio`` back to its host driver."""
        await self._call(self._to_host, address)


def _traced(before: str, after: str, guest: str, call: Callable[[], object]) -> None:
    """``call()``, the bare libvirt call, between two trace points (host/trace)."""
    trace.point(before, guest)
    try:
        call()
    finally:
        trace.point(after, guest)
