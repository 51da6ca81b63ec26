"""The objects on the bus: the daemon's last snapshot, exported and kept current.

The daemon hands a :class:`Snapshot` over after every reconcile;
:meth:`ObjectTree.publish` diffs it against what is exported and turns the
difference into exported and unexported objects (``InterfacesAdded`` and
``InterfacesRemoved``) and one ``PropertiesChanged`` per changed object, so
clients never poll. The tree also names devices and requests for the calls
(by path, id or ``vendor:product``), from what it published: a caller can only
act on what it could see.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dbus_fast.aio import MessageBus

from phyllod.bus.interfaces import (
    DeviceInterface,
    GuestInterface,
    ManagerInterface,
    Published,
    RequestInterface,
)
from phyllod.bus.managed import ManagedObjects
from phyllod.bus.strings import fit
from phyllod.contract import (
    DEVICE_PROPERTIES,
    GUEST_PROPERTIES,
    MANAGER_IFACE,
    MANAGER_PROPERTIES,
    REQUEST_IFACE,
    REQUEST_PROPERTIES,
    REQUESTS,
    ROOT,
    device_path,
    guest_path,
    request_path,
)
from phyllod.core import errors
from phyllod.core.bounds import bounded, excerpt
from phyllod.core.diff import changed_keys
from phyllod.core.model import (
    Assignment,
    Device,
    Guest,
    Override,
    OverrideKind,
    Request,
    State,
    find_guest,
)

log = logging.getLogger("phyllod")

V = TypeVar("V")

#: States in which a guest holds a device (listed in the guest's ``Devices``).
_HELD = (State.ATTACHED, State.DETACHING)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything the bus shows, taken by the daemon after each reconcile.

    The mappings may be the daemon's parts' own, changed in place later: the
    tree keeps copies of what it compares (see :class:`ObjectTree`); the calls
    it names devices and guests for read them as they are now.
    """

    devices: Mapping[str, Device]
    assignments: Mapping[str, Assignment]
    guests: Mapping[str, Guest] | None  # None while libvirt is not connected
    overrides: Mapping[str, Override]
    version: str
    iommu_enabled: bool
    policy_errors: tuple[str, ...]
    policy_files: tuple[str, ...]
    libvirt_uri: str
    remembered: Mapping[str, str]
    requests: Mapping[int, Request]
    ask_timeout: int


@dataclass(slots=True)
class Stats:
    """Counts since start (SIGUSR1's log line, the tests): what the bus costs phyllod."""

    generations: int = 0  # states published
    objects_served: int = 0
    oversized: int = 0  # calls refused for their size
    reads_refused: int = 0  # GetManagedObjects refused: too many of one caller waiting
    skipped: int = 0  # objects not shown: a value did not fit its D-Bus type


def device_values(d: Device, a: Assignment | None, o: Override | None,
                  remembered: str | None) -> dict[str, Any]:
    """A device's ``Device`` properties."""
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


def request_values(r: Request) -> dict[str, Any]:
    """An open request's ``Request`` properties."""
    return {"Device": device_path(r.device_id), "DeviceId": r.device_id,
            "Description": r.description, "Candidates": list(r.candidates),
            "Deadline": r.deadline_usec, "Rule": r.rule}


def manager_values(s: Snapshot) -> dict[str, Any]:
    """The ``Manager`` properties of the root object."""
    return {
        "Version": s.version, "IommuEnabled": s.iommu_enabled,
        "PolicyStatus": "error" if s.policy_errors else "ok",
        "PolicyError": "\n".join(s.policy_errors), "PolicyFiles": list(s.policy_files),
        "LibvirtUri": s.libvirt_uri, "LibvirtConnected": s.guests is not None,
        "Remembered": dict(s.remembered), "AskTimeout": s.ask_timeout,
    }


def _follow(seen: dict[str, V], now: Mapping[str, V], keys: set[str]) -> None:
    """Bring the copy ``seen`` level with ``now`` at ``keys`` (the others are equal)."""
    for k in keys:
        value = now.get(k)
        if value is None:
            seen.pop(k, None)
        else:
            seen[k] = value


class ObjectTree:
    """The exported objects, by path, for the snapshot published last.

    A publish costs what changed: the tree keeps its own copy of what it last
    published (the parts change their mappings in place) and re-evaluates only
    the devices whose device or assignment is another object, or whose choices
    (override, remembered answer) changed; the guests whose guest changed or
    whose held devices did. Only those objects are re-marshalled and signalled
    (``PropertiesChanged``; ``InterfacesAdded``/``Removed`` for those that came
    or went).
    """

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.snapshot: Snapshot | None = None
        self.bus: MessageBus | None = None
        self.manager: ManagerInterface | None = None
        self.devices: dict[str, DeviceInterface] = {}
        self.guests: dict[str, GuestInterface] = {}
        self.requests: dict[str, RequestInterface] = {}
        self._device_ids: dict[str, str] = {}  # path → device id
        self._request_numbers: dict[str, int] = {}  # path → request number
        #: GetManagedObjects' answers, marshalled object by object.
        self.objects = ManagedObjects()
        #: Objects left out of the bus because a value does not fit its D-Bus type.
        self._unfit: set[str] = set()
        #: What was published last, as copies: the devices and assignments by id,
        #: the choices, the guests by UUID.
        self._devices: dict[str, Device] = {}
        self._assignments: dict[str, Assignment] = {}
        self._choices: tuple[dict[str, Override], dict[str, str]] = ({}, {})
        self._guests: dict[str, Guest] = {}
        #: The guest holding each device object (by path), and the paths each guest holds.
        self._holder: dict[str, str] = {}
        self._held: dict[str, set[str]] = {}

    def export(self, bus: MessageBus, manager: ManagerInterface, snapshot: Snapshot) -> None:
        """Put the root object on ``bus``, then everything ``snapshot`` shows."""
        self.bus, self.manager = bus, manager
        bus.export(ROOT, manager)
        self.publish(snapshot)

    # ------------------------------------------------------------ publishing

    def publish(self, s: Snapshot) -> None:
        """Make the exported objects match ``s``; re-marshal and emit only what changed.

        An object with a value that does not fit its D-Bus type (a device number
        past ``u``) is left out, and logged once: marshalling it would fail
        every signal and every GetManagedObjects, for every object.
        """
        self.snapshot = s
        self.stats.generations += 1
        if self.bus is None or self.manager is None:
            return
        touched: set[str] = set()  # guests whose held devices changed
        for device_id in self._stale_devices(s):
            self._device(s, device_id, touched)
        if s.guests is not None:
            self._publish_guests(s.guests, touched)
        requests = self._fit_all({request_path(n): request_values(r)
                                  for n, r in s.requests.items()}, REQUEST_PROPERTIES)
        self._request_numbers = {request_path(n): n for n in s.requests
                                 if request_path(n) in requests}
        self._sync(self.requests, requests, RequestInterface)
        manager = self._fit(ROOT, manager_values(s), MANAGER_PROPERTIES)
        if manager is not None:
            self._show(ROOT, self.manager, manager)

    def _stale_devices(self, s: Snapshot) -> set[str]:
        """The ids whose object may differ from the one published: the device or its
        assignment is another object, or (all of them) the choices changed."""
        stale = changed_keys(self._devices, s.devices)
        stale |= changed_keys(self._assignments, s.assignments)
        choices = (s.overrides, s.remembered)
        if choices != self._choices:  # a person's choice: rare, and few entries
            self._choices = (dict(s.overrides), dict(s.remembered))
            stale |= s.devices.keys()
        _follow(self._devices, s.devices, stale)
        _follow(self._assignments, s.assignments, stale)
        return stale

    def _device(self, s: Snapshot, device_id: str, touched: set[str]) -> None:
        """Export, update or unexport one device's object; note the guests it left or joined."""
        assert self.bus is not None
        path = device_path(device_id)
        d, a = s.devices.get(device_id), s.assignments.get(device_id)
        values = None if d is None else self._fit(path, device_values(
            d, a, s.overrides.get(d.identity), s.remembered.get(d.identity)), DEVICE_PROPERTIES)
        holder = a.guest if values is not None and a is not None and a.state in _HELD else ""
        before = self._holder.get(path, "")
        if holder != before:
            touched |= {g for g in (before, holder) if g}
            if before:
                self._held[before].discard(path)
                if not self._held[before]:
                    del self._held[before]
                del self._holder[path]
            if holder:
                self._held.setdefault(holder, set()).add(path)
                self._holder[path] = holder
        if values is None:
            self._device_ids.pop(path, None)
            self._unexport(self.devices, path)
            return
        self._device_ids[path] = device_id
        self._show(path, self.devices.get(path), values, self.devices, DeviceInterface)

    def _publish_guests(self, guests: Mapping[str, Guest], touched: set[str]) -> None:
        """The guest objects whose guest came, changed or went, or whose held devices did."""
        changed = changed_keys(self._guests, guests)
        if touched:
            changed |= {k for k, g in guests.items() if g.name in touched}
        for key in changed:
            old, g = self._guests.get(key), guests.get(key)
            if old is not None and (g is None or g.uuid != old.uuid):
                self._unexport(self.guests, guest_path(old.uuid))
            if g is None:
                continue
            path = guest_path(g.uuid)
            values = self._fit(path, {"Name": g.name, "UUID": g.uuid, "State": str(g.state),
                                      "Devices": sorted(self._held.get(g.name, ()))},
                               GUEST_PROPERTIES)
            if values is None:
                self._unexport(self.guests, path)
            else:
                self._show(path, self.guests.get(path), values, self.guests, GuestInterface)
        if changed:
            self._guests = dict(guests)

    def _fit_all(self, wanted: dict[str, dict[str, Any]], signatures: Mapping[str, str]
                 ) -> dict[str, dict[str, Any]]:
        """The objects of ``wanted`` whose every value fits (see :meth:`_fit`)."""
        fitted = {path: self._fit(path, values, signatures) for path, values in wanted.items()}
        return {path: values for path, values in fitted.items() if values is not None}

    def _fit(self, path: str, values: dict[str, Any], signatures: Mapping[str, str]
             ) -> dict[str, Any] | None:
        """``values`` with every text bounded, or None (logged once) if one does not fit."""
        out = {}
        for name, value in values.items():
            fitted = fit(signatures[name], value)
            if fitted is None:
                self.stats.skipped += 1
                if path not in self._unfit:
                    self._unfit.add(path)
                    log.error("%s is not shown on the bus: its %s (%s) does not fit D-Bus "
                              "type %s", path, name, bounded(repr(value), 200), signatures[name])
                return None
            out[name] = fitted
        self._unfit.discard(path)
        return out

    def _show(self, path: str, obj: Published | None, values: dict[str, Any],
              exported: dict[str, Any] | None = None,
              make: Callable[[dict[str, Any]], Published] | None = None) -> None:
        """Export a new object (``make`` it into ``exported``) or update one; re-marshal
        its entry of GetManagedObjects if it came or changed."""
        assert self.bus is not None
        if obj is None:
            assert exported is not None and make is not None
            exported[path] = obj = make(values)
            self.bus.export(path, obj)
        elif not obj.update(values) and path in self.objects:
            return
        self.objects.put(path, obj.name, obj.variants())

    def _unexport(self, exported: dict[str, Any], path: str) -> None:
        assert self.bus is not None
        self._unfit.discard(path)
        if exported.pop(path, None) is not None:
            self.bus.unexport(path)
            self.objects.drop(path)

    def _sync(self, exported: dict[str, Any], wanted: dict[str, dict[str, Any]],
              make: Callable[[dict[str, Any]], Published]) -> None:
        for path in [p for p in exported if p not in wanted]:
            self._unexport(exported, path)
        for path, values in wanted.items():
            self._show(path, exported.get(path), values, exported, make)

    def managed_objects(self, path: str) -> bytes:
        """GetManagedObjects' answer below ``path``, joined from entries marshalled once
        per change of their object (see managed.py).

        Reads are open to everyone: dbus-fast rebuilt and marshalled the whole
        tree (every property of every object) for each call, so a flood of
        them from any user delayed everyone's answers.
        """
        self.stats.objects_served += 1
        return self.objects.answer(path)

    # ------------------------------------------------------------ naming for the calls

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
        """The id of the device exported at ``path``."""
        device_id = self._device_ids.get(path)
        if device_id is None:
            raise errors.NoSuchDevice(f"the device {excerpt(path)} is gone")
        return device_id

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
        """The number of the request exported at ``path``."""
        number = self._request_numbers.get(path)
        if number is None:
            raise errors.NoSuchRequest(f"the request {excerpt(path)} was answered, "
                                       "expired or withdrawn")
        return number

    def has_object(self, interface: str, path: str) -> bool:
        """Whether a call on ``interface`` at ``path`` has an object to go to."""
        if interface == MANAGER_IFACE:
            return path == ROOT
        if interface == REQUEST_IFACE:
            # A request that just went away gets NoSuchRequest, not UnknownObject.
            return path.startswith(f"{REQUESTS}/")
        return path in self.devices

    def same_device(self, d: Device) -> None:
        """After a (maybe long, interactive) authorization: still the device authorized?"""
        now = self.snapshot.devices.get(d.id) if self.snapshot else None
        if now is None or (now.identity, now.vendor, now.product) != \
                (d.identity, d.vendor, d.product):
            what = "unplugged" if now is None else f"replaced by {now.describe()}"
            raise errors.NoSuchDevice(f"{d.describe()} was {what} while authorization was "
                                      "pending; nothing was done")
