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
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dbus_fast import BusType, DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from phyllod.bus import (
    compat,  # noqa: F401  (before any message is read)
    polkit,
)
from phyllod.bus.strings import (
    MAX_ARGUMENT,
    MAX_EXPLAIN,
    PremarshalledReply,
    fit,
    guard_writer,
    marshal_body,
    oversized,
)
from phyllod.core import errors
from phyllod.core.bounds import bounded, excerpt
from phyllod.core.model import (
    Assignment,
    Device,
    Guest,
    Override,
    OverrideKind,
    Request,
    State,
    Subsystem,
    find_guest,
)
from phyllod.core.safety.pci import TableRow

log = logging.getLogger("phyllod")

BUS_NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
MANAGER = "me.phyllo.Phyllod1.Manager"
DEVICE = "me.phyllo.Phyllod1.Device"
GUEST = "me.phyllo.Phyllod1.Guest"
REQUEST = "me.phyllo.Phyllod1.Request"
ERROR = "me.phyllo.Phyllod1.Error."
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
#: GetManagedObjects calls of one caller waiting for their answer (see _serve_objects).
MAX_QUEUED_READS = 8
_OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
_OBJECTS_SIGNATURE = "a{oa{sa{sv}}}"
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
        return self._service.iommu_groups()

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
    """A mutating call understood before anyone is asked: the polkit action and its
    details, the device it acts on (checked again once authorized), what it runs."""

    action: str
    details: Mapping[str, str]
    device: Device | None
    run: Callable[[], Awaitable[None]]


#: The ``guest`` detail of a ClearOverride: the policy, not the caller, picks it.
_POLICY_GUEST = "the one its policy names"


def _override(kind: OverrideKind | None, on_object: bool
              ) -> Callable[["BusService", _Call], _Plan]:
    """Attach, Detach or ClearOverride, on the Manager (device named) or a Device object."""
    def plan(s: "BusService", call: _Call) -> _Plan:
        args = list(call.args)
        device_id = s.device_at(call.path) if on_object else s.resolve(args.pop(0))
        d = s.device(device_id)
        override: Override | None
        if kind is OverrideKind.ATTACH:
            guest = s.guest_name(args[0])
            override = Override(OverrideKind.ATTACH, args[0])
            action = polkit.ATTACH_PCI if d.subsystem is Subsystem.PCI else polkit.ATTACH
        elif kind is OverrideKind.HOST:
            guest, override, action = s.current_guest(device_id), Override(kind), polkit.DETACH
        else:
            guest, override = _POLICY_GUEST, None
            action = polkit.ATTACH_PCI if d.subsystem is Subsystem.PCI else polkit.ATTACH
        return _Plan(action, _details(d, guest), d,
                     lambda: s.ops.set_override(device_id, override))
    return plan


def _reload(s: "BusService", call: _Call) -> _Plan:
    async def run() -> None:
        s.ops.reload_policy()
    return _Plan(polkit.RELOAD, {}, None, run)


def _forget(s: "BusService", call: _Call) -> _Plan:
    """A present device (named as usual), or the identity of one that is gone."""
    ref = call.args[0]
    try:
        d: Device | None = s.device(s.resolve(ref))
    except errors.NoSuchDevice:
        d = None
    identity = d.identity if d is not None else ref
    details = _details(d, "") if d is not None else {
        "identity": identity, "device": identity, "device_description": bounded(identity, 256)}
    return _Plan(polkit.ANSWER, details, d, lambda: s.ops.forget(identity))


def _answer(s: "BusService", call: _Call) -> _Plan:
    number = s.request_at(call.path)
    guest, remember = call.args
    assert s.snapshot is not None
    d = s.device(s.snapshot.requests[number].device_id)
    # Not checked here: the daemon says which guests were offered if it is not one.
    guests = s.snapshot.guests or {}
    found = find_guest(guest, guests) if guest else None
    shown = "the host" if not guest else found.name if found else guest
    return _Plan(polkit.ANSWER, _details(d, shown), d,
                 lambda: s.ops.answer(number, guest, remember))


def _details(d: Device, guest: str) -> dict[str, str]:
    """polkit details of a call on ``d``: in the prompt (``$(device_description)``,
    ``$(guest)``) and for rules (``action.lookup("subsystem")``)."""
    return {"device": d.id, "device_description": d.describe(), "subsystem": str(d.subsystem),
            "vendor": d.vendor, "product": d.product, "identity": d.identity,
            "guest": bounded(guest, 256)}


#: Every mutating method: its signature and how it is understood (see _Plan).
MUTATIONS: Mapping[tuple[str, str], tuple[str, Callable[["BusService", _Call], _Plan]]] = {
    (MANAGER, "Attach"): ("ss", _override(OverrideKind.ATTACH, on_object=False)),
    (MANAGER, "Detach"): ("s", _override(OverrideKind.HOST, on_object=False)),
    (MANAGER, "ClearOverride"): ("s", _override(None, on_object=False)),
    (MANAGER, "Reload"): ("", _reload),
    (MANAGER, "Forget"): ("s", _forget),
    (REQUEST, "Answer"): ("sb", _answer),
    (DEVICE, "Attach"): ("s", _override(OverrideKind.ATTACH, on_object=True)),
    (DEVICE, "Detach"): ("", _override(OverrideKind.HOST, on_object=True)),
    (DEVICE, "ClearOverride"): ("", _override(None, on_object=True)),
}


@dataclass(slots=True)
class Stats:
    """Counts since start (SIGUSR1's log line, the tests): what the bus costs phyllod."""

    generations: int = 0  # states published
    objects_built: int = 0  # GetManagedObjects answers built (once per state and path)
    objects_served: int = 0
    oversized: int = 0  # calls refused for their size
    reads_refused: int = 0  # GetManagedObjects refused: too many of one caller waiting
    skipped: int = 0  # objects not shown: a value did not fit its D-Bus type


class BusError(Exception):
    """The bus cannot be used (unreachable, or the name is taken)."""


class BusService:
    """phyllod's presence on one bus connection."""

    def __init__(self, address: str, ops: Operations, on_lost: Callable[[], None],
                 limits: polkit.Limits = polkit.DEFAULT_LIMITS) -> None:
        self.address = address
        self.ops = ops
        self._on_lost = on_lost
        self.limits = limits
        self.bus: _Bus | None = None
        self.authority: polkit.Authority | None = None
        self.stats = Stats()
        #: GetManagedObjects' answers by path, marshalled, for the state published last.
        self._objects_cache: dict[str, bytes] = {}
        #: Objects left out of the bus because a value does not fit its D-Bus type.
        self._unfit: set[str] = set()
        self._unfit_now: set[str] = set()
        #: GetManagedObjects calls waiting, by caller: (serial, path), answered in turn.
        self._object_reads: dict[str, deque[tuple[int, str]]] = {}
        self._serving_objects = False
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
        self.authority = polkit.Authority(bus, self.limits)
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
        """Make the exported objects match ``s``; emit only what changed.

        An object with a value that does not fit its D-Bus type (a device number
        past ``u``) is left out, and logged once: marshalling it would fail
        every signal and every GetManagedObjects, for every object.
        """
        self.snapshot = s
        self._objects_cache.clear()
        self.stats.generations += 1
        if self.bus is None or self.manager is None:
            return
        held: dict[str, list[str]] = {}
        wanted: dict[str, dict[str, Any]] = {}
        self._device_ids = {}
        for device_id, d in s.devices.items():
            a = s.assignments.get(device_id)
            path = device_path(device_id)
            values = self._fit(path, _device_values(d, a, s.overrides.get(d.identity),
                                                    s.remembered.get(d.identity)),
                               _DEVICE_PROPS)
            if values is None:
                continue
            wanted[path] = values
            self._device_ids[path] = device_id
            if a is not None and a.state in _HELD and a.guest:
                held.setdefault(a.guest, []).append(path)
        self._sync(self._devices, wanted, lambda v: DeviceInterface(DEVICE, v))
        guests = {}
        for g in (s.guests or {}).values():
            path = guest_path(g.uuid)
            values = self._fit(path, {"Name": g.name, "UUID": g.uuid, "State": str(g.state),
                                      "Devices": sorted(held.get(g.name, []))}, _GUEST_PROPS)
            if values is not None:
                guests[path] = values
        if s.guests is not None:
            self._sync(self._guests, guests, lambda v: GuestInterface(GUEST, v))
        requests = {}
        for n, r in s.requests.items():
            values = self._fit(request_path(n), _request_values(r), _REQUEST_PROPS)
            if values is not None:
                requests[request_path(n)] = values
        self._request_numbers = {request_path(n): n for n in s.requests
                                 if request_path(n) in requests}
        self._sync(self._requests, requests, lambda v: RequestInterface(REQUEST, v))
        manager = self._fit(ROOT, _manager_values(s), _MANAGER_PROPS)
        if manager is not None:
            self.manager.update(manager)
        self._unfit, self._unfit_now = self._unfit_now, set()

    def _fit(self, path: str, values: dict[str, Any], signatures: Mapping[str, str]
             ) -> dict[str, Any] | None:
        """``values`` with every text bounded, or None (logged once) if one does not fit."""
        out = {}
        for name, value in values.items():
            fitted = fit(signatures[name], value)
            if fitted is None:
                self.stats.skipped += 1
                self._unfit_now.add(path)
                if path not in self._unfit:
                    self._unfit.add(path)
                    log.error("%s is not shown on the bus: its %s (%s) does not fit D-Bus "
                              "type %s", path, name, bounded(repr(value), 200), signatures[name])
                return None
            out[name] = fitted
        return out

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
        raise errors.NoSuchDevice(f"no present device is named {excerpt(ref)}")

    def device(self, device_id: str) -> Device:
        assert self.snapshot is not None
        return self.snapshot.devices[device_id]

    def device_at(self, path: str) -> str:
        device_id = self._device_ids.get(path)
        if device_id is None:
            raise errors.NoSuchDevice(f"the device {excerpt(path)} is gone")
        return device_id

    def identity_of(self, device_id: str) -> str:
        return self.device(device_id).identity

    def guest_name(self, ref: str) -> str:
        """The defined guest ``ref`` names (NoSuchGuest if none), or ``ref`` itself
        while libvirt is not connected (the daemon then says so)."""
        guests = self.snapshot.guests if self.snapshot else None
        if guests is None:
            return ref
        g = find_guest(ref, guests)
        if g is None:
            raise errors.NoSuchGuest(f"no guest named {excerpt(ref)} is defined")
        return g.name

    def current_guest(self, device_id: str) -> str:
        """The guest holding (or getting) the device now, "" if none."""
        a = self.snapshot.assignments.get(device_id) if self.snapshot else None
        return a.guest if a is not None else ""

    def request_at(self, path: str) -> int:
        number = self._request_numbers.get(path)
        if number is None:
            raise errors.NoSuchRequest(f"the request {excerpt(path)} was answered, "
                                       "expired or withdrawn")
        return number

    def device_object(self, ref: str) -> str:
        try:
            return device_path(self.resolve(ref))
        except errors.PhyllodError as e:
            raise DBusError(error_name(e), bounded(str(e))) from None

    def explain(self, ref: str) -> str:
        try:
            return bounded(self.ops.explain(self.resolve(ref)), MAX_EXPLAIN)
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

    def _same_device(self, d: Device) -> None:
        """After a (maybe long, interactive) authorization: still the device authorized?"""
        now = self.snapshot.devices.get(d.id) if self.snapshot else None
        if now is None or (now.identity, now.vendor, now.product) != \
                (d.identity, d.vendor, d.product):
            what = "unplugged" if now is None else f"replaced by {now.describe()}"
            raise errors.NoSuchDevice(f"{d.describe()} was {what} while authorization was "
                                      "pending; nothing was done")

    # ------------------------------------------------------------ the gate

    def _gate(self, msg: Message) -> bool | Message:
        """Every call passes here first: bound it, serve cached object lists, take over
        every mutating call (see the module docstring); pass the rest on."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path is None:
            return False
        why = oversized(msg.path, msg.body)
        if why:
            self.stats.oversized += 1
            if self._unanswered(msg):
                return True
            return Message.new_error(msg, INVALID_ARGS, f"{why}; nothing was done")
        if msg.interface == _OBJECT_MANAGER and msg.member == "GetManagedObjects":
            return self._queue_objects(msg)
        interface = msg.interface or (MANAGER if msg.path == ROOT
                                      else REQUEST if msg.path in self._requests else DEVICE)
        entry = MUTATIONS.get((interface, msg.member or ""))
        if entry is None or msg.signature != entry[0]:
            return self._unanswered(msg)  # a read, or wrong arguments: dbus-fast answers
        exported = (msg.path == ROOT if interface == MANAGER
                    # A request that just went away gets NoSuchRequest, not UnknownObject.
                    else msg.path.startswith(f"{ROOT}/requests/") if interface == REQUEST
                    else msg.path in self._devices)
        if not exported:
            return self._unanswered(msg)  # unknown object: dbus-fast answers
        call = _Call(sender=msg.sender or "", serial=msg.serial, path=msg.path,
                     args=tuple(msg.body), name=f"{interface.rsplit('.', 1)[-1]}.{msg.member}",
                     interactive=bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
                     wants_reply=not msg.flags & MessageFlag.NO_REPLY_EXPECTED)
        self._spawn(self._serve(call, entry[1]))
        return True

    @staticmethod
    def _unanswered(msg: Message) -> bool:
        """Drop a call the gate does not serve when its caller waits for no reply.

        Such calls only read, so dropping them loses nothing; passed on, each one
        that fails made dbus-fast log "Unexpected error processing message" and a
        traceback at ERROR: any client could fill the journal with them.
        """
        return bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED)

    def _queue_objects(self, msg: Message) -> bool | Message:
        """Queue a GetManagedObjects call, to be answered in turn (see _serve_objects).

        Each caller may have :data:`MAX_QUEUED_READS` waiting; past that it is
        told to wait for its answers (``LimitsExceeded``).
        """
        if self._unanswered(msg):
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
            while self._object_reads and self.bus is not None and self.bus.connected:
                for sender in list(self._object_reads):
                    queue = self._object_reads[sender]
                    serial, path = queue.popleft()
                    if not queue:
                        del self._object_reads[sender]
                    await self.bus.send(PremarshalledReply(
                        serial, sender, _OBJECTS_SIGNATURE, self._managed_objects(path), {}))
        finally:
            self._serving_objects = False
            self._object_reads.clear()

    def _managed_objects(self, path: str) -> bytes:
        """GetManagedObjects' answer below ``path``, marshalled once per published state.

        Reads are open to everyone: dbus-fast rebuilt and marshalled the whole
        tree (every property of every object) for each call, so a flood of
        them from any user delayed everyone's answers. publish() drops the cache.
        """
        cached = self._objects_cache.get(path)
        if cached is None:
            self.stats.objects_built += 1
            exported: dict[str, _Published] = {**self._devices, **self._guests, **self._requests}
            if self.manager is not None:
                exported[ROOT] = self.manager
            objects = {p: {obj.name: obj.variants()} for p, obj in exported.items()
                       if path == "/" or p.startswith(path + "/")}
            cached = marshal_body(_OBJECTS_SIGNATURE, objects)
            if objects or path in exported:  # only ancestors of objects: a bounded set
                self._objects_cache[path] = cached
        self.stats.objects_served += 1
        return cached

    async def _serve(self, call: _Call, understand: Callable[["BusService", _Call], _Plan]
                     ) -> None:
        assert self.bus is not None and self.authority is not None
        try:
            plan = understand(self, call)
            await self.authority.check(call.sender, plan.action, call.interactive,
                                       plan.details)
            if plan.device is not None:
                self._same_device(plan.device)
            await plan.run()
            reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                            destination=call.sender)
        except errors.PhyllodError as e:
            reply = self._error(call, error_name(e), str(e))
        except Exception:
            log.exception("%s failed", call.name)
            reply = self._error(call, ERROR + "Failed",
                                "internal error in phyllod; its log has the details")
        if call.wants_reply and self.bus.connected:
            self.bus.send(reply)

    @staticmethod
    def _error(call: _Call, name: str, text: str) -> Message:
        return Message(message_type=MessageType.ERROR, reply_serial=call.serial,
                       destination=call.sender, error_name=name, signature="s",
                       body=[bounded(text)])

    def stats_line(self) -> str:
        """Counts for SIGUSR1's log line: what reads cost and what polkit checks wait."""
        st = self.stats
        line = (f"bus: {st.generations} states published, object list built "
                f"{st.objects_built} times for {st.objects_served} GetManagedObjects, "
                f"{st.reads_refused} refused (too many waiting), {st.oversized} oversized calls "
                f"refused, {st.skipped} objects not shown")
        a = self.authority
        if a is not None:
            line += (f"; polkit: {a.in_flight} checks waiting, {a.stats.asked} asked, "
                     f"{a.stats.root} root, {a.stats.busy} busy, {a.stats.timed_out} timed out, "
                     f"{a.stats.caller_left} callers left")
        return line

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
