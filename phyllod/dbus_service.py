"""``me.phyllo.Phyllod1`` on the bus: objects that mirror the daemon's snapshot.

The daemon hands a ``Snapshot`` over after every reconcile; this module diffs
it against what is exported and turns the difference into exported and
unexported objects (``InterfacesAdded``/``InterfacesRemoved``) and one
``PropertiesChanged`` per changed object, so clients never poll.

Every mutating call goes through one gate (``_Gate``), a message handler that
sees the call before dbus-fast dispatches it: dbus-fast hands a method handler
only the arguments, and polkit needs the caller's unique bus name. The gate
checks polkit, runs the operation and maps phyllod's error classes to D-Bus
error names; anything unexpected becomes ``Error.Failed`` with no traceback on
the bus. The method bodies of mutating methods exist for introspection and
refuse if ever reached, so a call can never slip past authorization.

Signatures are dbus-fast's classic string annotations (``-> "s"``), which every
dbus-fast release understands (Debian 12 ships 1.84).
"""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dbus_fast import BusType, DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from phyllod import (
    dbus_flags,  # noqa: F401  (before any message is read)
    errors,
    polkit,
)
from phyllod.dbus_strings import guard_writer
from phyllod.model import Assignment, Device, Guest, Override, OverrideKind, Request, State
from phyllod.pci_safety import TableRow

log = logging.getLogger("phyllod")

BUS_NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
MANAGER = "me.phyllo.Phyllod1.Manager"
DEVICE = "me.phyllo.Phyllod1.Device"
GUEST = "me.phyllo.Phyllod1.Guest"
REQUEST = "me.phyllo.Phyllod1.Request"
ERROR = "me.phyllo.Phyllod1.Error."
_OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
_HELD = (State.ATTACHED, State.DETACHING)


def device_path(device_id: str) -> str:
    """``usb:1-2.3`` → ``/me/phyllo/Phyllod1/devices/usb_1_2_3``.

    Port paths and PCI addresses have a fixed shape, so this stays one-to-one.
    """
    return f"{ROOT}/devices/{re.sub('[^A-Za-z0-9]', '_', device_id)}"


def guest_path(uuid: str) -> str:
    return f"{ROOT}/guests/{re.sub('[^A-Za-z0-9]', '_', uuid)}"


def request_path(number: int) -> str:
    return f"{ROOT}/requests/{number}"


def error_name(e: errors.PhyllodError) -> str:
    return ERROR + type(e).__name__


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the bus shows, taken by the daemon after each reconcile."""

    devices: Mapping[str, Device]
    assignments: Mapping[str, Assignment]
    guests: Mapping[str, Guest] | None
    overrides: Mapping[str, Override]
    version: str
    iommu_enabled: bool
    policy_errors: tuple[str, ...]
    policy_files: tuple[str, ...]
    libvirt_uri: str
    remembered: Mapping[str, str]
    requests: Mapping[int, Request]
    ask_timeout: int


class Operations(Protocol):
    """What the bus may ask of the daemon; each raises ``errors.PhyllodError`` subclasses."""

    def explain(self, device_id: str) -> str: ...

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]: ...

    async def set_override(self, device_id: str, override: Override | None) -> None: ...

    def reload_policy(self) -> None: ...

    async def answer(self, number: int, guest: str, remember: bool) -> None: ...

    async def forget(self, identity: str) -> None: ...


# ------------------------------------------------------------ published objects


def _read(name: str, signature: str) -> Any:
    """A read-only property served from the object's current values."""
    def getter(self: "_Published") -> Any:
        return self.values[name]
    getter.__name__ = name
    getter.__annotations__ = {"return": signature}
    return dbus_property(access=PropertyAccess.READ, name=name)(getter)


class _Published(ServiceInterface):
    """An interface whose properties are a dict of values replaced as a whole."""

    SIGNATURES: Mapping[str, str] = {}

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        super().__init__(name)
        self.values = values

    def update(self, values: dict[str, Any]) -> None:
        changed = {k: v for k, v in values.items() if self.values.get(k) != v}
        self.values = values
        if changed:
            self.emit_properties_changed(changed)

    def variants(self) -> dict[str, Variant]:
        return {k: Variant(self.SIGNATURES[k], v) for k, v in self.values.items()}


def _properties(props: Mapping[str, str]) -> Callable[[type[_Published]], type[_Published]]:
    """Class decorator: declare read-only properties ``props`` (name → signature)."""
    def declare(cls: type[_Published]) -> type[_Published]:
        cls.SIGNATURES = props
        for name, signature in props.items():
            setattr(cls, name, _read(name, signature))
        return cls
    return declare


def _refuse() -> None:
    """Mutating methods are served by the gate; reaching a body means it was bypassed."""
    raise DBusError(ERROR + "NotAuthorized", "this call did not pass authorization")


_DEVICE_PROPS = {
    "Id": "s", "Subsystem": "s", "Vendor": "s", "Product": "s", "Serial": "s",
    "Manufacturer": "s", "Name": "s", "Port": "s", "Address": "s", "Bus": "u",
    "DeviceNumber": "u", "DeviceClass": "s", "InterfaceClasses": "as", "Driver": "s",
    "IommuGroup": "i", "State": "s",
    "Guest": "s", "Rule": "s", "Reason": "s", "Override": "s", "OverrideGuest": "s",
    "Identity": "s", "Remembered": "b", "RememberedGuest": "s",
    "VendorFromDatabase": "s", "ModelFromDatabase": "s", "SerialDoubt": "s",
}
_REQUEST_PROPS = {
    "Device": "o", "DeviceId": "s", "Description": "s", "Candidates": "as", "Deadline": "t",
    "Rule": "s",
}
_GUEST_PROPS = {"Name": "s", "UUID": "s", "State": "s", "Devices": "ao"}
_MANAGER_PROPS = {
    "Version": "s", "IommuEnabled": "b", "PolicyStatus": "s", "PolicyError": "s",
    "PolicyFiles": "as", "LibvirtUri": "s", "LibvirtConnected": "b",
    "Remembered": "a{ss}", "AskTimeout": "u",
}


@_properties(_DEVICE_PROPS)
class DeviceInterface(_Published):
    """One present device: identity, where it is and why (docs/dbus-api.md)."""

    @method()
    def Attach(self, guest: "s") -> None:
        _refuse()

    @method()
    def Detach(self) -> None:
        _refuse()

    @method()
    def ClearOverride(self) -> None:
        _refuse()


@_properties(_GUEST_PROPS)
class GuestInterface(_Published):
    """One defined guest and the present devices it holds."""


@_properties(_REQUEST_PROPS)
class RequestInterface(_Published):
    """A question to the person at the machine: where does this newly plugged device go?"""

    @method()
    def Answer(self, guest: "s", remember: "b") -> None:
        _refuse()


@_properties(_MANAGER_PROPS)
class ManagerInterface(_Published):
    """The daemon as a whole: policy and libvirt status, and calls by device name."""

    def __init__(self, service: "BusService", values: dict[str, Any]) -> None:
        super().__init__(MANAGER, values)
        self._service = service

    @method()
    def GetDevice(self, device: "s") -> "o":
        return self._service.device_object(device)

    @method()
    def Explain(self, device: "s") -> "s":
        return self._service.explain(device)

    @method()
    def GetIommuGroups(self) -> "a(ua(ssssss))":
        return self._service.ops.iommu_groups()

    @method()
    def Attach(self, device: "s", guest: "s") -> None:
        _refuse()

    @method()
    def Detach(self, device: "s") -> None:
        _refuse()

    @method()
    def ClearOverride(self, device: "s") -> None:
        _refuse()

    @method()
    def Forget(self, device: "s") -> None:
        _refuse()

    @method()
    def Reload(self) -> None:
        _refuse()


def _device_values(d: Device, a: Assignment | None, o: Override | None,
                   remembered: str | None) -> dict[str, Any]:
    return {
        "Id": d.id, "Subsystem": str(d.subsystem), "Vendor": d.vendor, "Product": d.product,
        "Serial": d.serial, "Manufacturer": d.manufacturer, "Name": d.product_name,
        "Port": d.port, "Address": d.address, "Bus": d.busnum, "DeviceNumber": d.devnum,
        "DeviceClass": d.device_class, "InterfaceClasses": list(d.interface_classes),
        "Driver": d.driver, "IommuGroup": -1 if d.iommu_group is None else d.iommu_group,
        "State": str(a.state) if a else str(State.HOST), "Guest": a.guest if a else "",
        "Rule": a.rule if a else "", "Reason": a.reason if a else "",
        "Override": str(o.kind) if o else "",
        "OverrideGuest": o.guest if o and o.kind is OverrideKind.ATTACH else "",
        "Identity": d.identity, "Remembered": remembered is not None,
        "RememberedGuest": remembered or "",
        "VendorFromDatabase": d.vendor_db, "ModelFromDatabase": d.model_db,
        "SerialDoubt": d.serial_doubt,
    }


def _request_values(r: Request) -> dict[str, Any]:
    return {"Device": device_path(r.device_id), "DeviceId": r.device_id,
            "Description": r.description, "Candidates": list(r.candidates),
            "Deadline": r.deadline_usec, "Rule": r.rule}


def _manager_values(s: Snapshot) -> dict[str, Any]:
    return {
        "Version": s.version, "IommuEnabled": s.iommu_enabled,
        "PolicyStatus": "error" if s.policy_errors else "ok",
        "PolicyError": "\n".join(s.policy_errors), "PolicyFiles": list(s.policy_files),
        "LibvirtUri": s.libvirt_uri, "LibvirtConnected": s.guests is not None,
        "Remembered": dict(s.remembered), "AskTimeout": s.ask_timeout,
    }


# ------------------------------------------------------------ the bus connection


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
        if self._disconnected or path == ROOT or not isinstance(interface, _Published):
            return
        self.send(Message.new_signal(ROOT, _OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                                     [path, {interface.name: interface.variants()}]))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not self._disconnected and path != ROOT:
            self.send(Message.new_signal(ROOT, _OBJECT_MANAGER, "InterfacesRemoved", "oas",
                                         [path, removed_interfaces]))


@dataclass(frozen=True, slots=True)
class _Mutation:
    signature: str
    action: str
    run: Callable[["BusService", Message], Awaitable[None]]


async def _attach(s: "BusService", m: Message) -> None:
    await s.ops.set_override(s.resolve(m.body[0]), Override(OverrideKind.ATTACH, m.body[1]))


async def _detach(s: "BusService", m: Message) -> None:
    await s.ops.set_override(s.resolve(m.body[0]), Override(OverrideKind.HOST))


async def _clear(s: "BusService", m: Message) -> None:
    await s.ops.set_override(s.resolve(m.body[0]), None)


async def _reload(s: "BusService", m: Message) -> None:
    s.ops.reload_policy()


async def _device_attach(s: "BusService", m: Message) -> None:
    await s.ops.set_override(s.device_at(m.path), Override(OverrideKind.ATTACH, m.body[0]))


async def _device_detach(s: "BusService", m: Message) -> None:
    await s.ops.set_override(s.device_at(m.path), Override(OverrideKind.HOST))


async def _device_clear(s: "BusService", m: Message) -> None:
    await s.ops.set_override(s.device_at(m.path), None)


async def _forget(s: "BusService", m: Message) -> None:
    """A present device (named as usual), or the identity of one that is gone."""
    ref = m.body[0]
    try:
        identity = s.identity_of(s.resolve(ref))
    except errors.NoSuchDevice:
        identity = ref
    await s.ops.forget(identity)


async def _answer(s: "BusService", m: Message) -> None:
    await s.ops.answer(s.request_at(m.path), m.body[0], m.body[1])


#: Every mutating method: its signature, the polkit action it needs, what it does.
MUTATIONS: Mapping[tuple[str, str], _Mutation] = {
    (MANAGER, "Attach"): _Mutation("ss", polkit.ATTACH, _attach),
    (MANAGER, "Detach"): _Mutation("s", polkit.ATTACH, _detach),
    (MANAGER, "ClearOverride"): _Mutation("s", polkit.ATTACH, _clear),
    (MANAGER, "Reload"): _Mutation("", polkit.RELOAD, _reload),
    (MANAGER, "Forget"): _Mutation("s", polkit.ANSWER, _forget),
    (REQUEST, "Answer"): _Mutation("sb", polkit.ANSWER, _answer),
    (DEVICE, "Attach"): _Mutation("s", polkit.ATTACH, _device_attach),
    (DEVICE, "Detach"): _Mutation("", polkit.ATTACH, _device_detach),
    (DEVICE, "ClearOverride"): _Mutation("", polkit.ATTACH, _device_clear),
}


class BusError(Exception):
    """The bus cannot be used (unreachable, or the name is taken)."""


class BusService:
    """phyllod's presence on one bus connection."""

    def __init__(self, address: str, ops: Operations, on_lost: Callable[[], None]) -> None:
        self.address = address
        self.ops = ops
        self._on_lost = on_lost
        self.bus: _Bus | None = None
        self.authority: polkit.Authority | None = None
        self.snapshot: Snapshot | None = None
        self.manager: ManagerInterface | None = None
        self._devices: dict[str, DeviceInterface] = {}
        self._device_ids: dict[str, str] = {}
        self._guests: dict[str, GuestInterface] = {}
        self._requests: dict[str, RequestInterface] = {}
        self._request_numbers: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closing = False

    async def connect(self, snapshot: Snapshot) -> None:
        """Connect, export what ``snapshot`` shows, then take the well-known name."""
        try:
            if self.address in ("system", "session"):
                bus_type = BusType.SYSTEM if self.address == "system" else BusType.SESSION
                bus = _Bus(bus_type=bus_type)
            else:
                bus = _Bus(bus_address=self.address)
            await bus.connect()
        except Exception as e:  # dbus-fast raises OSError, AuthError, ValueError, …
            raise BusError(f"cannot connect to the {self.address} bus: {e}") from e
        self.bus = bus
        self.authority = polkit.Authority(bus)
        bus.add_message_handler(self._gate)
        self.manager = ManagerInterface(self, _manager_values(snapshot))
        bus.export(ROOT, self.manager)
        self.publish(snapshot)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise BusError(f"{BUS_NAME} is already owned on the {self.address} bus "
                           "(is another phyllod running?)")
        self._spawn(self._watch(bus))
        log.info("on the %s bus as %s", self.address, BUS_NAME)

    async def _watch(self, bus: _Bus) -> None:
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

    # ------------------------------------------------------------ publishing

    def publish(self, s: Snapshot) -> None:
        """Make the exported objects match ``s``; emit only what changed."""
        self.snapshot = s
        if self.bus is None or self.manager is None:
            return
        held: dict[str, list[str]] = {}
        wanted: dict[str, dict[str, Any]] = {}
        for device_id, d in s.devices.items():
            a = s.assignments.get(device_id)
            path = device_path(device_id)
            wanted[path] = _device_values(d, a, s.overrides.get(d.identity),
                                          s.remembered.get(d.identity))
            self._device_ids[path] = device_id
            if a is not None and a.state in _HELD and a.guest:
                held.setdefault(a.guest, []).append(path)
        self._sync(self._devices, wanted, lambda v: DeviceInterface(DEVICE, v))
        self._device_ids = {p: i for p, i in self._device_ids.items() if p in wanted}
        guests = {guest_path(g.uuid): {"Name": g.name, "UUID": g.uuid, "State": str(g.state),
                                       "Devices": sorted(held.get(g.name, []))}
                  for g in (s.guests or {}).values()}
        if s.guests is not None:
            self._sync(self._guests, guests, lambda v: GuestInterface(GUEST, v))
        requests = {request_path(n): _request_values(r) for n, r in s.requests.items()}
        self._request_numbers = {request_path(n): n for n in s.requests}
        self._sync(self._requests, requests, lambda v: RequestInterface(REQUEST, v))
        self.manager.update(_manager_values(s))

    def _sync(self, exported: dict[str, Any], wanted: dict[str, dict[str, Any]],
              make: Callable[[dict[str, Any]], _Published]) -> None:
        assert self.bus is not None
        for path in [p for p in exported if p not in wanted]:
            self.bus.unexport(path)
            del exported[path]
        for path, values in wanted.items():
            obj = exported.get(path)
            if obj is None:
                exported[path] = obj = make(values)
                self.bus.export(path, obj)
            else:
                obj.update(values)

    # ------------------------------------------------------------ naming devices

    def resolve(self, ref: str) -> str:
        """A device named by object path, id or ``vendor:product`` → its id."""
        s = self.snapshot
        devices = s.devices if s else {}
        if ref in self._device_ids:
            return self._device_ids[ref]
        if ref in devices:
            return ref
        if re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", ref):
            vendor, product = ref.lower().split(":")
            found = sorted(i for i, d in devices.items()
                           if (d.vendor, d.product) == (vendor, product))
            if len(found) == 1:
                return found[0]
            if found:
                raise errors.NoSuchDevice(f"{ref} matches {len(found)} devices "
                                          f"({', '.join(found)}); name one by its id")
        raise errors.NoSuchDevice(f"no present device is named {ref!r}")

    def device_at(self, path: str) -> str:
        device_id = self._device_ids.get(path)
        if device_id is None:
            raise errors.NoSuchDevice(f"the device {path} is gone")
        return device_id

    def identity_of(self, device_id: str) -> str:
        assert self.snapshot is not None
        return self.snapshot.devices[device_id].identity

    def request_at(self, path: str) -> int:
        number = self._request_numbers.get(path)
        if number is None:
            raise errors.NoSuchRequest(f"the request {path} was answered, expired or withdrawn")
        return number

    def device_object(self, ref: str) -> str:
        try:
            return device_path(self.resolve(ref))
        except errors.PhyllodError as e:
            raise DBusError(error_name(e), str(e)) from None

    def explain(self, ref: str) -> str:
        try:
            return self.ops.explain(self.resolve(ref))
        except errors.PhyllodError as e:
            raise DBusError(error_name(e), str(e)) from None

    # ------------------------------------------------------------ the gate

    def _gate(self, msg: Message) -> bool:
        """Take over every mutating call (see the module docstring); pass the rest on."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path is None:
            return False
        interface = msg.interface or (MANAGER if msg.path == ROOT
                                      else REQUEST if msg.path in self._requests else DEVICE)
        mutation = MUTATIONS.get((interface, msg.member or ""))
        if mutation is None or msg.signature != mutation.signature:
            return self._unanswered(msg)  # a read, or wrong arguments: dbus-fast answers
        exported = (msg.path == ROOT if interface == MANAGER
                    # A request that just went away gets NoSuchRequest, not UnknownObject.
                    else msg.path.startswith(f"{ROOT}/requests/") if interface == REQUEST
                    else msg.path in self._devices)
        if not exported:
            return self._unanswered(msg)  # unknown object: dbus-fast answers
        self._spawn(self._serve(msg, mutation))
        return True

    @staticmethod
    def _unanswered(msg: Message) -> bool:
        """Drop a call the gate does not serve when its caller waits for no reply.

        Such calls only read, so dropping them loses nothing; passed on, each one
        that fails made dbus-fast log "Unexpected error processing message" and a
        traceback at ERROR: any client could fill the journal with them.
        """
        return bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED)

    async def _serve(self, msg: Message, mutation: _Mutation) -> None:
        assert self.bus is not None and self.authority is not None
        try:
            interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
            await self.authority.check(msg.sender or "", mutation.action, interactive)
            await mutation.run(self, msg)
            reply = Message.new_method_return(msg)
        except errors.PhyllodError as e:
            reply = Message.new_error(msg, error_name(e), str(e))
        except Exception:
            log.exception("%s.%s failed", msg.interface, msg.member)
            reply = Message.new_error(msg, ERROR + "Failed",
                                      "internal error in phyllod; its log has the details")
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus.connected:
            self.bus.send(reply)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
