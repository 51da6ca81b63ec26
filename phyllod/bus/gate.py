"""The gate: every call to phyllod passes here before dbus-fast dispatches it.

dbus-fast hands a method handler only the arguments, and polkit needs the
caller's unique bus name, so the gate is a message handler. It refuses calls
too large to be honest (before any work), answers GetManagedObjects from the
tree's cache one caller after another, and takes over every mutating call:
understand it (:class:`_Plan`), ask the authority, check the device is still
the one authorized, run it, and map phyllod's error classes to D-Bus error
names once. Anything unexpected becomes ``Error.Failed`` with no traceback on
the bus. Reads pass on to dbus-fast, which serves them from the interfaces.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dbus_fast import DBusError, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from phyllod.bus.objects import ObjectTree
from phyllod.bus.strings import (
    MAX_ARGUMENT,
    MAX_EXPLAIN,
    PremarshalledReply,
    fit,
    oversized,
)
from phyllod.contract import (
    DEVICE_IFACE,
    ERROR_PREFIX,
    FAILED,
    INVALID_ARGS,
    LIMITS_EXCEEDED,
    MANAGED_OBJECTS_SIGNATURE,
    MANAGER_IFACE,
    OBJECT_MANAGER,
    POLKIT_ANSWER,
    POLKIT_ATTACH,
    POLKIT_ATTACH_PCI,
    POLKIT_DETACH,
    POLKIT_RELOAD,
    REQUEST_IFACE,
    ROOT,
    TABLES,
    device_path,
)
from phyllod.core import errors
from phyllod.core.bounds import bounded
from phyllod.core.model import Device, Override, OverrideKind, Subsystem, find_guest
from phyllod.core.safety.pci import TableRow

log = logging.getLogger("phyllod")

#: GetManagedObjects calls of one caller waiting for their answer (see _serve_objects).
MAX_QUEUED_READS = 8


class Operations(Protocol):
    """What the bus may ask of the daemon; each raises ``errors.PhyllodError`` subclasses."""

    def explain(self, device_id: str) -> str: ...

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]: ...

    async def set_override(self, device_id: str, override: Override | None) -> None: ...

    def reload_policy(self) -> None: ...

    async def answer(self, number: int, guest: str, remember: bool) -> None: ...

    async def forget(self, identity: str) -> None: ...


class Authorizer(Protocol):
    """Who may change what (polkit.Authority): the daemon's root hands one over."""

    def attach(self, bus: MessageBus) -> None:
        """Use ``bus``, the service's connection, for its checks."""

    async def check(self, sender: str, polkit_id: str, interactive: bool,
                    details: Mapping[str, str]) -> None:
        """Return if ``sender`` may; raise NotAuthorized or Busy otherwise."""

    def stats_line(self) -> str:
        """Its counts, for SIGUSR1's log line."""


def error_name(e: errors.PhyllodError) -> str:
    """The D-Bus error name of one of phyllod's errors (contract.ERRORS)."""
    return ERROR_PREFIX + type(e).__name__


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """What the gate keeps of a mutating call while polkit decides: small parsed values.

    The message itself is let go at once: a caller waiting for a password
    holds no more of phyllod's memory than this.
    """

    sender: str
    serial: int
    path: str
    args: tuple[Any, ...]
    interactive: bool
    wants_reply: bool
    name: str  # "Manager.Attach", for the log


@dataclass(frozen=True, slots=True)
class _Plan:
    """A mutating call understood before anyone is asked: the polkit action id and its
    details, the device it acts on (checked again once authorized), what it runs."""

    polkit_id: str
    details: Mapping[str, str]
    device: Device | None
    run: Callable[[], Awaitable[None]]


#: How a mutating call is understood: from the gate's view of the objects and the call.
_Understand = Callable[["Gate", _Call], _Plan]

#: The ``guest`` detail of a ClearOverride: the policy, not the caller, picks it.
_POLICY_GUEST = "the one its policy names"


def _override(kind: OverrideKind | None, on_object: bool) -> _Understand:
    """Attach, Detach or ClearOverride, on the Manager (device named) or a Device object."""
    def plan(g: Gate, call: _Call) -> _Plan:
        args = list(call.args)
        device_id = g.tree.device_at(call.path) if on_object else g.tree.resolve(args.pop(0))
        d = g.tree.device(device_id)
        override: Override | None
        attach_id = POLKIT_ATTACH_PCI if d.subsystem is Subsystem.PCI else POLKIT_ATTACH
        if kind is OverrideKind.ATTACH:
            guest, override, polkit_id = (g.tree.guest_name(args[0]),
                                          Override(OverrideKind.ATTACH, args[0]), attach_id)
        elif kind is OverrideKind.HOST:
            guest, override, polkit_id = g.tree.current_guest(device_id), Override(kind), \
                POLKIT_DETACH
        else:
            guest, override, polkit_id = _POLICY_GUEST, None, attach_id
        return _Plan(polkit_id, details(d, guest), d,
                     lambda: g.ops.set_override(device_id, override))
    return plan


def _reload(g: Gate, call: _Call) -> _Plan:
    async def run() -> None:
        g.ops.reload_policy()
    return _Plan(POLKIT_RELOAD, {}, None, run)


def _forget(g: Gate, call: _Call) -> _Plan:
    """A present device (named as usual), or the identity of one that is gone."""
    ref = call.args[0]
    try:
        d: Device | None = g.tree.device(g.tree.resolve(ref))
    except errors.NoSuchDevice:
        d = None
    identity = d.identity if d is not None else ref
    shown = details(d, "") if d is not None else {
        "identity": identity, "device": identity, "device_description": bounded(identity, 256)}
    return _Plan(POLKIT_ANSWER, shown, d, lambda: g.ops.forget(identity))


def _answer(g: Gate, call: _Call) -> _Plan:
    number = g.tree.request_at(call.path)
    guest, remember = call.args
    snapshot = g.tree.snapshot
    assert snapshot is not None
    d = g.tree.device(snapshot.requests[number].device_id)
    # Not checked here: the daemon says which guests were offered if it is not one.
    found = find_guest(guest, snapshot.guests or {}) if guest else None
    shown = "the host" if not guest else found.name if found else guest
    return _Plan(POLKIT_ANSWER, details(d, shown), d,
                 lambda: g.ops.answer(number, guest, remember))


def details(d: Device, guest: str) -> dict[str, str]:
    """polkit details of a call on ``d``: in the prompt (``$(device_description)``,
    ``$(guest)``) and for rules (``action.lookup("subsystem")``)."""
    return {"device": d.id, "device_description": d.describe(), "subsystem": str(d.subsystem),
            "vendor": d.vendor, "product": d.product, "identity": d.identity,
            "guest": bounded(guest, 256)}


#: Every mutating method (contract.py's ``mutates``) and how it is understood (see _Plan).
MUTATIONS: Mapping[tuple[str, str], _Understand] = {
    (MANAGER_IFACE, "Attach"): _override(OverrideKind.ATTACH, on_object=False),
    (MANAGER_IFACE, "Detach"): _override(OverrideKind.HOST, on_object=False),
    (MANAGER_IFACE, "ClearOverride"): _override(None, on_object=False),
    (MANAGER_IFACE, "Reload"): _reload,
    (MANAGER_IFACE, "Forget"): _forget,
    (REQUEST_IFACE, "Answer"): _answer,
    (DEVICE_IFACE, "Attach"): _override(OverrideKind.ATTACH, on_object=True),
    (DEVICE_IFACE, "Detach"): _override(OverrideKind.HOST, on_object=True),
    (DEVICE_IFACE, "ClearOverride"): _override(None, on_object=True),
}
#: Each mutating method's argument signature, from the contract.
_SIGNATURES = {(interface, member): TABLES[interface][1][member].takes
               for interface, member in MUTATIONS}


class Gate:
    """The message handler in front of phyllod's objects, and the Manager's read calls."""

    def __init__(self, *, bus: MessageBus, tree: ObjectTree, ops: Operations,
                 authority: Authorizer, spawn: Callable[[Awaitable[None]], None]) -> None:
        """``spawn`` runs a coroutine as a task the service holds on to until it ends."""
        self.bus, self.tree, self.ops, self.authority = bus, tree, ops, authority
        self.stats = tree.stats  # one set of counts for the whole service
        self._spawn = spawn
        #: GetManagedObjects calls waiting, by caller: (serial, path), answered in turn.
        self._object_reads: dict[str, deque[tuple[int, str]]] = {}
        self._serving_objects = False

    def handle(self, msg: Message) -> bool | Message:
        """Every call passes here first: bound it, serve cached object lists, take over
        every mutating call (see the module docstring); pass the rest on."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path is None:
            return False
        why = oversized(msg.path, msg.body)
        if why:
            self.stats.oversized += 1
            if _unanswered(msg):
                return True
            return Message.new_error(msg, INVALID_ARGS, f"{why}; nothing was done")
        if msg.interface == OBJECT_MANAGER and msg.member == "GetManagedObjects":
            return self._queue_objects(msg)
        interface = msg.interface or (MANAGER_IFACE if msg.path == ROOT
                                      else REQUEST_IFACE if msg.path in self.tree.requests
                                      else DEVICE_IFACE)
        key = (interface, msg.member or "")
        understand = MUTATIONS.get(key)
        if understand is None or msg.signature != _SIGNATURES[key]:
            return _unanswered(msg)  # a read, or wrong arguments: dbus-fast answers
        if not self.tree.has_object(interface, msg.path):
            return _unanswered(msg)  # unknown object: dbus-fast answers
        call = _Call(sender=msg.sender or "", serial=msg.serial, path=msg.path,
                     args=tuple(msg.body), name=f"{interface.rsplit('.', 1)[-1]}.{msg.member}",
                     interactive=bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
                     wants_reply=not msg.flags & MessageFlag.NO_REPLY_EXPECTED)
        self._spawn(self._serve(call, understand))
        return True

    def _queue_objects(self, msg: Message) -> bool | Message:
        """Queue a GetManagedObjects call, to be answered in turn (see _serve_objects).

        Each caller may have :data:`MAX_QUEUED_READS` waiting; past that it is
        told to wait for its answers (``LimitsExceeded``).
        """
        if _unanswered(msg):
            return True
        if msg.signature:
            return Message.new_error(msg, INVALID_ARGS, "GetManagedObjects takes no arguments")
        sender = msg.sender or ""
        queue = self._object_reads.setdefault(sender, deque())
        if len(queue) >= MAX_QUEUED_READS:
            self.stats.reads_refused += 1
            return Message.new_error(msg, LIMITS_EXCEEDED,
                                     f"{len(queue)} GetManagedObjects calls of this caller are "
                                     "still waiting; wait for their answers")
        queue.append((msg.serial, msg.path or ROOT))
        if not self._serving_objects:
            self._serving_objects = True
            self._spawn(self._serve_objects())
        return True

    async def _serve_objects(self) -> None:
        """Answer queued GetManagedObjects calls one at a time, one caller after another.

        The answer is large (about 800 bytes per device), so a flood of them
        from anyone, answered as they came, filled phyllod's send queue and
        every other caller's answer waited behind it (root's took seconds).
        Sent one at a time, each written before the next is made, a short
        answer to anyone waits behind one of them at most.
        """
        try:
            while self._object_reads and self.bus.connected:
                for sender in list(self._object_reads):
                    queue = self._object_reads[sender]
                    serial, path = queue.popleft()
                    if not queue:
                        del self._object_reads[sender]
                    await self.bus.send(PremarshalledReply(
                        serial, sender, MANAGED_OBJECTS_SIGNATURE,
                        self.tree.managed_objects(path), {}))
        finally:
            self._serving_objects = False
            self._object_reads.clear()

    async def _serve(self, call: _Call, understand: _Understand) -> None:
        try:
            plan = understand(self, call)
            await self.authority.check(call.sender, plan.polkit_id, call.interactive,
                                       plan.details)
            if plan.device is not None:
                self.tree.same_device(plan.device)
            await plan.run()
            reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                            destination=call.sender)
        except errors.PhyllodError as e:
            reply = _error(call, error_name(e), str(e))
        except Exception:
            log.exception("%s failed", call.name)
            reply = _error(call, FAILED, "internal error in phyllod; its log has the details")
        if call.wants_reply and self.bus.connected:
            self.bus.send(reply)

    # ------------------------------------------------------------ the Manager's reads

    def device_object(self, ref: str) -> str:
        """GetDevice: the object path of the device ``ref`` names."""
        try:
            return device_path(self.tree.resolve(ref))
        except errors.PhyllodError as e:
            raise DBusError(error_name(e), bounded(str(e))) from None

    def explain(self, ref: str) -> str:
        """Explain: the daemon's paragraph about the device ``ref`` names."""
        try:
            return bounded(self.ops.explain(self.tree.resolve(ref)), MAX_EXPLAIN)
        except errors.PhyllodError as e:
            raise DBusError(error_name(e), bounded(str(e))) from None

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]:
        """GetIommuGroups' answer: a group number past ``u`` leaves out only its group."""
        groups = []
        for number, rows in self.ops.iommu_groups():
            if fit("u", number) is None:
                log.error("IOMMU group %s is not shown on the bus: it does not fit D-Bus "
                          "type u", bounded(repr(number), 200))
                continue
            groups.append((number, [tuple(bounded(str(v), MAX_ARGUMENT) for v in row)
                                    for row in rows]))
        return groups


def _unanswered(msg: Message) -> bool:
    """Drop a call the gate does not serve when its caller waits for no reply.

    Such calls only read, so dropping them loses nothing; passed on, each one
    that fails made dbus-fast log "Unexpected error processing message" and a
    traceback at ERROR: any client could fill the journal with them.
    """
    return bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED)


def _error(call: _Call, name: str, text: str) -> Message:
    return Message(message_type=MessageType.ERROR, reply_serial=call.serial,
                   destination=call.sender, error_name=name, signature="s",
                   body=[bounded(text)])
