"""phyllod's objects as the applet sees them: plain values read from D-Bus properties.

The GObject side hands over each object's properties already unpacked to
Python values (``{interface: {property: value}}``); these classes give them
names and defaults, so the menu and notification logic never touches GLib and
is tested with dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from phyllod.contract import DEVICE_IFACE, GUEST_IFACE, MANAGER_IFACE, REQUEST_IFACE

Properties = Mapping[str, Any]
#: One object's interfaces and their properties, as the bus adapter reads them.
ObjectProperties = Mapping[str, Properties]


def _text(props: Properties, key: str) -> str:
    """A string property, "" when absent (an older phyllod may not have it)."""
    value = props.get(key, "")
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class DeviceView:
    """One present device (``me.phyllo.Phyllod1.Device``)."""

    path: str
    id: str
    name: str
    vendor: str = ""
    product: str = ""
    state: str = "host"
    guest: str = ""
    rule: str = ""
    reason: str = ""
    override: str = ""
    override_guest: str = ""
    identity: str = ""
    remembered: bool = False
    remembered_guest: str = ""
    vendor_db: str = ""
    model_db: str = ""

    @classmethod
    def from_properties(cls, path: str, props: Properties) -> DeviceView:
        return cls(
            path=path, id=_text(props, "Id"), name=_text(props, "Name"),
            vendor=_text(props, "Vendor"), product=_text(props, "Product"),
            state=_text(props, "State") or "host", guest=_text(props, "Guest"),
            rule=_text(props, "Rule"), reason=_text(props, "Reason"),
            override=_text(props, "Override"), override_guest=_text(props, "OverrideGuest"),
            identity=_text(props, "Identity") or _text(props, "Id"),
            remembered=bool(props.get("Remembered", False)),
            remembered_guest=_text(props, "RememberedGuest"),
            vendor_db=_text(props, "VendorFromDatabase"),
            model_db=_text(props, "ModelFromDatabase"))

    @property
    def title(self) -> str:
        """What a person recognises the device by: its own name, else the hardware
        database's names for its ids (every PCI function, USB devices that report no
        strings; as ``phyllodctl list``), else vendor:product, else its id."""
        if self.name:
            return self.name
        database = " ".join(s for s in (self.vendor_db, self.model_db) if s)
        if database:
            return database
        if self.vendor and self.product:
            return f"{self.vendor}:{self.product}"
        return self.id or self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class GuestView:
    """One defined guest (``me.phyllo.Phyllod1.Guest``)."""

    path: str
    name: str
    uuid: str = ""
    state: str = "other"

    @classmethod
    def from_properties(cls, path: str, props: Properties) -> GuestView:
        return cls(path=path, name=_text(props, "Name"), uuid=_text(props, "UUID"),
                   state=_text(props, "State") or "other")

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class RequestView:
    """One open question (``me.phyllo.Phyllod1.Request``): where should a new device go?"""

    path: str
    device: str
    device_id: str
    description: str
    candidates: tuple[str, ...] = ()
    deadline_us: int = 0
    rule: str = ""

    @classmethod
    def from_properties(cls, path: str, props: Properties) -> RequestView:
        candidates = props.get("Candidates", ())
        return cls(path=path, device=_text(props, "Device"), device_id=_text(props, "DeviceId"),
                   description=_text(props, "Description") or _text(props, "DeviceId"),
                   candidates=tuple(str(c) for c in candidates),
                   deadline_us=int(props.get("Deadline", 0) or 0), rule=_text(props, "Rule"))


@dataclass(frozen=True)
class Snapshot:
    """Everything phyllod exports at one moment, or ``connected=False`` when it is not running."""

    connected: bool
    devices: tuple[DeviceView, ...] = ()
    guests: tuple[GuestView, ...] = ()
    requests: tuple[RequestView, ...] = ()
    policy_status: str = "ok"
    policy_error: str = ""
    problem: str = ""  # why the applet cannot reach phyllod at all (no system bus)
    manager: Properties = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: Mapping[str, ObjectProperties]) -> Snapshot:
        """Build from ``{path: {interface: {property: value}}}`` (GetManagedObjects' shape)."""
        devices, guests, requests = [], [], []
        manager: Properties = {}
        for path, interfaces in objects.items():
            if DEVICE_IFACE in interfaces:
                devices.append(DeviceView.from_properties(path, interfaces[DEVICE_IFACE]))
            if GUEST_IFACE in interfaces:
                guests.append(GuestView.from_properties(path, interfaces[GUEST_IFACE]))
            if REQUEST_IFACE in interfaces:
                requests.append(RequestView.from_properties(path, interfaces[REQUEST_IFACE]))
            if MANAGER_IFACE in interfaces:
                manager = interfaces[MANAGER_IFACE]
        return cls(connected=True,
                   devices=tuple(sorted(devices, key=lambda d: (d.id, d.path))),
                   guests=tuple(sorted(guests, key=lambda g: g.name)),
                   requests=tuple(sorted(requests, key=_request_order)),
                   policy_status=_text(manager, "PolicyStatus") or "ok",
                   policy_error=_text(manager, "PolicyError"), manager=dict(manager))

    @property
    def running_guests(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.guests if g.running)


def _request_order(request: RequestView) -> tuple[int, str]:
    """Requests in the order phyllod opened them (``…/requests/<n>``)."""
    tail = request.path.rsplit("/", 1)[-1]
    return (int(tail) if tail.isdigit() else 0, request.path)
