"""``me.phyllo.Phyllod1`` on the bus: phyllod's presence on one connection, start to end.

The parts, each in its own module: :mod:`.interfaces` declares what each
object looks like (contract.py's tables), :mod:`.objects` keeps the exported
objects in step with the daemon's snapshot, :mod:`.gate` sees every call
first (bounds, GetManagedObjects, authorization of every change). This module
connects, wires them to the connection, takes the well-known name, and tells
the daemon when the connection is lost.

The daemon's root hands over the authority that decides who may change what
(:class:`~.gate.Authorizer`, polkit's in production): the bus service never
builds it, as bolt's manager hands its bouncer to each exported object.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import Message
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import ServiceInterface

from phyllod.bus.connect import open_bus
from phyllod.bus.gate import Authorizer, Gate, Operations
from phyllod.bus.interfaces import ManagerInterface, Published
from phyllod.bus.objects import ObjectTree, Snapshot, Stats, manager_values
from phyllod.bus.strings import guard_writer
from phyllod.contract import (
    BUS_NAME,
    INTERFACES_ADDED,
    INTERFACES_REMOVED,
    OBJECT_MANAGER,
    ROOT,
)

log = logging.getLogger("phyllod")


class _SendSocket:
    """The bus socket as dbus-fast's writer sees it: a full send buffer is no error.

    dbus-fast's writer (1.84 to 5.x, like dbus-next before it, whose issue
    #153 is still open) takes EAGAIN from ``send`` at a message boundary for a
    broken connection and drops it. A burst of signals larger than the
    socket's buffer (hundreds of devices at start, a storm of udev events)
    did exactly that: phyllod fell off the bus, or hung before READY=1.
    Sending nothing instead makes the writer wait until the socket is
    writable, as it does after a partial send. (``sendmsg``, used only for
    messages carrying fds, which phyllod never sends, is left as it is.)
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Bus(MessageBus):
    """dbus-fast's bus, with ObjectManager signals sent from the manager's path,
    and a writer that survives a full socket buffer (:class:`_SendSocket`).

    dbus-fast emits ``InterfacesAdded``/``Removed`` from the new object's own
    path; the specification, sd-bus, GDBus and ``GDBusObjectManagerClient``
    (what desktop applets use) expect them from the ObjectManager object.
    """

    async def connect(self) -> "_Bus":
        await super().connect()
        writer = self._writer  # made in __init__ (1.84) or connect (5.x)
        if not isinstance(writer.sock, _SendSocket):
            writer.sock = _SendSocket(writer.sock)
        guard_writer(writer)  # dbus-fast 1.84: non-ASCII strings sent escaped
        return self

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected or path == ROOT or not isinstance(interface, Published):
            return
        self.send(Message.new_signal(ROOT, OBJECT_MANAGER, INTERFACES_ADDED, "oa{sa{sv}}",
                                     [path, {interface.name: interface.variants()}]))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not self._disconnected and path != ROOT:
            self.send(Message.new_signal(ROOT, OBJECT_MANAGER, INTERFACES_REMOVED, "oas",
                                         [path, removed_interfaces]))


class BusError(Exception):
    """The bus cannot be used (unreachable, or the name is taken)."""


class BusService:
    """phyllod's presence on one bus connection."""

    def __init__(self, address: str, ops: Operations, on_lost: Callable[[], None],
                 authority: Authorizer) -> None:
        """``address`` as phyllod's ``--bus``; ``ops`` serves the calls; ``on_lost`` is
        called once if the connection goes while not closing; ``authority`` decides
        every change."""
        self.address = address
        self.ops = ops
        self._on_lost = on_lost
        self.authority = authority
        self.bus: _Bus | None = None
        self.stats = Stats()
        self.tree = ObjectTree(self.stats)
        self._tasks: set[asyncio.Task] = set()
        self._closing = False

    async def connect(self, snapshot: Snapshot) -> None:
        """Connect, export what ``snapshot`` shows, then take the well-known name."""
        try:
            bus = await open_bus(self.address, bus_class=_Bus)
        except Exception as e:  # dbus-fast raises OSError, AuthError, ValueError, …
            raise BusError(f"cannot connect to the {self.address} bus: {e}") from e
        self.bus = bus
        self.authority.attach(bus)
        gate = Gate(bus=bus, tree=self.tree, ops=self.ops, authority=self.authority,
                    spawn=self._spawn)
        bus.add_message_handler(gate.handle)
        self.tree.export(bus, ManagerInterface(gate, manager_values(snapshot)), snapshot)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise BusError(f"{BUS_NAME} is already owned on the {self.address} bus "
                           "(is another phyllod running?)")
        self._spawn(self._watch(bus))
        log.info("on the %s bus as %s", self.address, BUS_NAME)

    async def _watch(self, bus: MessageBus) -> None:
        why = ""
        try:
            await bus.wait_for_disconnect()
        except Exception as e:  # a connection that broke raises what broke it
            why = f" ({str(e) or type(e).__name__})"
        if not self._closing:
            log.error("lost the connection to the %s bus%s", self.address, why)
            self._on_lost()

    def close(self) -> None:
        self._closing = True
        if self.bus is not None:
            self.bus.disconnect()

    def publish(self, snapshot: Snapshot) -> None:
        """Show ``snapshot`` on the bus; only what changed is signalled (see objects.py)."""
        self.tree.publish(snapshot)

    def stats_line(self) -> str:
        """Counts for SIGUSR1's log line: what reads cost and what polkit checks wait."""
        st = self.stats
        line = (f"bus: {st.generations} states published, {self.tree.objects.marshalled} "
                f"object entries marshalled, {st.objects_served} GetManagedObjects answered, "
                f"{st.reads_refused} refused (too many waiting), {st.oversized} oversized calls "
                f"refused, {st.skipped} objects not shown")
        if self.bus is not None:
            line += f"; {self.authority.stats_line()}"
        return line

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
