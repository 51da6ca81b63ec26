"""``phyllodctl monitor``'s pure half: from signals to one line per event.

The signals name objects by path, and a device's path is its id with every
punctuation mark flattened to ``_`` (not reversible), so the monitor keeps a
path → label map, seeded from ``GetManagedObjects`` and kept current by
``InterfacesAdded``/``InterfacesRemoved``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from phyllod import contract as names
from phyllod.contract import (
    BUS_NAME,
    DBUS_NAME,
    DEVICE_IFACE,
    GUEST_IFACE,
    INTERFACES,
    MANAGER_IFACE,
    NAME_OWNER_CHANGED,
    OBJECT_MANAGER,
    PROPERTIES,
    PROPERTIES_CHANGED,
    REQUEST_IFACE,
    ROOT,
)
from phyllod.ctl.output import ManagedObjects, device_name, escape

# sender= makes the bus deliver only what the owner of phyllod's name sends, so
# no other client on the bus can forge monitor events.
MATCH_RULES = (
    f"type='signal',sender='{BUS_NAME}',path='{ROOT}',interface='{OBJECT_MANAGER}'",
    f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES}',"
    f"member='{PROPERTIES_CHANGED}',path_namespace='{ROOT}'",
    f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
    f"member='{NAME_OWNER_CHANGED}',arg0='{BUS_NAME}'",
)


@dataclass(frozen=True)
class Event:
    """One thing that happened, ready for either output format."""

    time: datetime
    kind: str  # monitoring (subscribed), added, removed, changed, started, stopped
    subject: str  # device id, "guest NAME", "request N", or "phyllod"
    path: str = ""
    interface: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)
    invalidated: Sequence[str] = ()


@dataclass
class Labels:
    """What each object is called in the output (device id or guest name)."""

    by_path: dict[str, str] = field(default_factory=dict)

    def reset(self, objects: ManagedObjects) -> None:
        """Start again from a full snapshot (at start and when phyllod restarts)."""
        self.by_path.clear()
        for path, ifaces in objects.items():
            self.learn(path, ifaces)

    def learn(self, path: str, ifaces: Mapping[str, Mapping[str, Any]]) -> None:
        """Remember the label of an object that appeared."""
        if DEVICE_IFACE in ifaces and ifaces[DEVICE_IFACE].get("Id"):
            self.by_path[path] = str(ifaces[DEVICE_IFACE]["Id"])
        elif GUEST_IFACE in ifaces and ifaces[GUEST_IFACE].get("Name"):
            self.by_path[path] = f"guest {ifaces[GUEST_IFACE]['Name']}"
        elif REQUEST_IFACE in ifaces:
            self.by_path[path] = f"request {path.rsplit('/', 1)[-1]}"

    def label(self, path: str, interface: str = "") -> str:
        """The label, or the path's last element for an object never seen whole."""
        if interface == MANAGER_IFACE:
            return "phyllod"
        return self.by_path.get(path) or path.rsplit("/", 1)[-1]

    def forget(self, path: str) -> None:
        """Drop an object that went away."""
        self.by_path.pop(path, None)


def added(labels: Labels, now: datetime, path: str,
          ifaces: Mapping[str, Mapping[str, Any]]) -> Event | None:
    """``InterfacesAdded``: a device was plugged or a guest defined."""
    labels.learn(path, ifaces)
    interface = next((i for i in INTERFACES if i in ifaces), None)
    if interface is None:
        return None
    return Event(now, "added", labels.label(path, interface), path, interface, ifaces[interface])


def removed(labels: Labels, now: datetime, path: str, ifaces: Sequence[str]) -> Event | None:
    """``InterfacesRemoved``: a device was unplugged or a guest undefined."""
    interface = next((i for i in INTERFACES if i in ifaces), None)
    if interface is None:
        return None
    event = Event(now, "removed", labels.label(path, interface), path, interface)
    labels.forget(path)
    return event


def changed(labels: Labels, now: datetime, path: str, interface: str,
            props: Mapping[str, Any], invalidated: Sequence[str]) -> Event | None:
    """``PropertiesChanged`` on one of phyllod's interfaces (others are not ours)."""
    if interface not in INTERFACES:
        return None
    if interface == GUEST_IFACE and props.get("Name"):
        labels.by_path[path] = f"guest {props['Name']}"  # a renamed guest
    return Event(now, "changed", labels.label(path, interface), path, interface, props,
                 invalidated)


def _key(name: str) -> str:
    """``OverrideGuest`` → ``override-guest``: reads like an option, not like code."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def _value(value: Any, labels: Labels) -> str:
    """A property value for a monitor line: phyllod's objects by label, shell-quoted."""
    if isinstance(value, list | tuple):
        text = ",".join(labels.label(v) if str(v).startswith(f"{ROOT}/") else str(v)
                        for v in value)
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = str(value)
    return shlex.quote(escape(text))


def _details(properties: Mapping[str, Any], labels: Labels,
             invalidated: Sequence[str] = ()) -> list[str]:
    """``state attached guest=work (reason)``: state first, the reason last."""
    props = dict(properties)
    words = [f"state {escape(str(props.pop('State')))}"] if "State" in props else []
    reason = props.pop("Reason", None)
    words += [f"{_key(k)}={_value(v, labels)}" for k, v in sorted(props.items())]
    words += [f"{_key(k)} invalidated" for k in invalidated]
    if reason:
        words.append(f"({escape(str(reason))})")
    return words


def _added_words(event: Event, labels: Labels) -> list[str]:
    """``+ usb:1-3 plugged 1050:0407 'YubiKey OTP' state host (reason)``."""
    props = event.properties
    if event.interface == DEVICE_IFACE:
        ids = escape(f"{props.get('Vendor', '')}:{props.get('Product', '')}")
        brief = {k: props[k] for k in ("State", "Guest", "Reason") if props.get(k)}
        return ["plugged", ids, _value(device_name(props), labels), *_details(brief, labels)]
    if event.interface == REQUEST_IFACE:
        offers = [*props.get("Candidates", []), "host"]
        return ["asks", "where", escape(str(props.get("DeviceId", ""))), "goes:",
                _value(offers, labels), f"({escape(str(props.get('Description', '')))})"]
    return ["defined", *_details({k: props[k] for k in ("State",) if k in props}, labels)]


def human_line(event: Event, labels: Labels) -> str:
    """The terminal form: ``11:02:03 usb:1-2 state attached guest=work (…)``."""
    stamp = event.time.strftime("%H:%M:%S")
    subject = escape(event.subject)
    if event.kind == "added":
        words = ["+", subject, *_added_words(event, labels)]
    elif event.kind == "removed":
        gone = {DEVICE_IFACE: "gone", REQUEST_IFACE: "closed"}.get(event.interface, "undefined")
        words = ["-", subject, gone]
    elif event.kind == "changed":
        words = [subject, *_details(event.properties, labels, event.invalidated)]
    else:
        words = [subject, event.kind]
    return " ".join([stamp, *words])


def json_line(event: Event) -> str:
    """The ``--json`` form: one compact object per line, D-Bus property names as keys."""
    record: dict[str, Any] = {
        "time": event.time.isoformat(timespec="milliseconds"),
        "event": event.kind,
        "subject": event.subject,
    }
    if event.path:
        record |= {"path": event.path, "interface": event.interface}
    if event.kind in ("added", "changed"):
        record["properties"] = dict(event.properties)
    if event.invalidated:
        record["invalidated"] = list(event.invalidated)
    return json.dumps(record, ensure_ascii=True)


def owner_changed(now: datetime, name: str, new_owner: str) -> Event | None:
    """``NameOwnerChanged``: phyllod stopped or (re)started; its objects went or came."""
    if name != BUS_NAME:
        return None
    return Event(now, "started" if new_owner else "stopped", "phyllod")


def event_for(labels: Labels, now: datetime, path: str, interface: str, member: str,
              body: Sequence[Any]) -> Event | None:
    """The event a signal (matched by :data:`MATCH_RULES`) stands for, if any."""
    match interface, member, *body:
        case (names.OBJECT_MANAGER, names.INTERFACES_ADDED, str(obj), dict(ifaces)):
            return added(labels, now, obj, ifaces)
        case (names.OBJECT_MANAGER, names.INTERFACES_REMOVED, str(obj), list(ifaces)):
            return removed(labels, now, obj, ifaces)
        case (names.PROPERTIES, names.PROPERTIES_CHANGED, str(iface), dict(props),
              list(invalidated)):
            return changed(labels, now, path, iface, props, invalidated)
        case (names.DBUS_NAME, names.NAME_OWNER_CHANGED, str(name), str(), str(new_owner)):
            return owner_changed(now, name, new_owner)
    return None
