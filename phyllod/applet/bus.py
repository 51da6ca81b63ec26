"""phyllod on the system bus, through Gio.DBusObjectManagerClient (GLib's main loop, no polling).

The object manager client follows the name's owner: when phyllod stops it
drops every object (``name-owner`` becomes None), and when it comes back it
reads them all again, so the applet reconnects by itself. It is created with
``DO_NOT_AUTO_START`` and calls go out with ``NO_AUTO_START``: phyllod is a
system service started at boot, and an administrator who stopped it should
not see every desktop session's applet start it again through bus
activation. Mutating calls carry ``ALLOW_INTERACTIVE_AUTHORIZATION`` so polkit
may ask the person (through their session's agent) instead of refusing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gi.repository import Gio, GLib

from phyllod.applet.commands import Call
from phyllod.contract import BUS_NAME, ROOT, SERVICE_UNKNOWN

log = logging.getLogger(__name__)

#: Attach and Answer return once the device has settled, and polkit may wait
#: for a person to type a password: minutes, not GDBus's 25 s default.
CALL_TIMEOUT_MS = 10 * 60 * 1000

ObjectProps = dict[str, dict[str, Any]]


def object_properties(obj: Gio.DBusObject) -> ObjectProps:
    """``{interface: {property: value}}`` of one object, from the proxies' caches."""
    out: ObjectProps = {}
    for proxy in obj.get_interfaces():
        props: dict[str, Any] = {}
        for name in proxy.get_cached_property_names() or ():
            value = proxy.get_cached_property(name)
            if value is not None:
                props[name] = value.unpack()
        out[proxy.get_interface_name()] = props
    return out


def split_remote_error(error: GLib.Error) -> tuple[str, str]:
    """``(error name, message)`` of a failed call (GDBus prefixes ``GDBus.Error:NAME: ``)."""
    name = Gio.DBusError.get_remote_error(error) or ""
    message = error.message or ""
    prefix = f"GDBus.Error:{name}: "
    if name and message.startswith(prefix):
        message = message[len(prefix):]
    return name, message


class PhyllodBus:
    """The applet's view of phyllod: callbacks for objects coming, going and changing."""

    def __init__(self, *, on_ready: Callable[[], None],
                 on_added: Callable[[str, ObjectProps], None],
                 on_removed: Callable[[str, ObjectProps, bool], None],
                 on_changed: Callable[[str, str], None],
                 on_owner: Callable[[str | None], None],
                 on_unreachable: Callable[[str], None]) -> None:
        self._on_ready = on_ready
        self._on_added = on_added
        self._on_removed = on_removed
        self._on_changed = on_changed
        self._on_owner = on_owner
        self._on_unreachable = on_unreachable
        self.client: Gio.DBusObjectManagerClient | None = None

    def start(self) -> None:
        """Connect to the system bus and create the object manager client, asynchronously."""
        Gio.bus_get(Gio.BusType.SYSTEM, cancellable=None, callback=self._got_bus)

    def _got_bus(self, _source: object, result: Gio.AsyncResult) -> None:
        try:
            connection = Gio.bus_get_finish(result)
        except GLib.Error as e:
            self._on_unreachable(e.message)
            return
        # Keywords: PyGObject folds the proxy-type function's user data and destroy
        # notify into fewer positional arguments than the C signature has.
        Gio.DBusObjectManagerClient.new(
            connection=connection, flags=Gio.DBusObjectManagerClientFlags.DO_NOT_AUTO_START,
            name=BUS_NAME, object_path=ROOT, get_proxy_type_func=None, cancellable=None,
            callback=self._got_client)

    def _got_client(self, _source: object, result: Gio.AsyncResult) -> None:
        try:
            client = Gio.DBusObjectManagerClient.new_finish(result)
        except GLib.Error as e:
            self._on_unreachable(e.message)
            return
        self.client = client
        client.connect("object-added", self._object_added)
        client.connect("object-removed", self._object_removed)
        client.connect("interface-added", self._interface_changed)
        client.connect("interface-removed", self._interface_changed)
        client.connect("interface-proxy-properties-changed", self._properties_changed)
        client.connect("notify::name-owner", self._owner_changed)
        self._on_ready()

    @property
    def owner(self) -> str | None:
        return self.client.get_name_owner() if self.client is not None else None

    def objects(self) -> dict[str, ObjectProps]:
        """Every object phyllod exports now, ``{}`` when it is not running."""
        if self.client is None or self.client.get_name_owner() is None:
            return {}
        return {obj.get_object_path(): object_properties(obj)
                for obj in self.client.get_objects()}

    def _object_added(self, _client: object, obj: Gio.DBusObject) -> None:
        self._on_added(obj.get_object_path(), object_properties(obj))

    def _object_removed(self, client: Gio.DBusObjectManagerClient, obj: Gio.DBusObject) -> None:
        # GDBus updates name-owner before it drops the objects of a vanished owner.
        self._on_removed(obj.get_object_path(), object_properties(obj),
                         client.get_name_owner() is None)

    def _interface_changed(self, _client: object, obj: Gio.DBusObject,
                           proxy: Gio.DBusProxy) -> None:
        self._on_changed(obj.get_object_path(), proxy.get_interface_name())

    def _properties_changed(self, _client: object, obj: Gio.DBusObjectProxy,
                            proxy: Gio.DBusProxy, _changed: GLib.Variant,
                            _invalidated: list[str]) -> None:
        self._on_changed(obj.get_object_path(), proxy.get_interface_name())

    def _owner_changed(self, client: Gio.DBusObjectManagerClient, _pspec: object) -> None:
        self._on_owner(client.get_name_owner())

    def call(self, call: Call, on_error: Callable[[str, str], None],
             on_done: Callable[[], None] | None = None) -> None:
        """Send ``call``; ``on_error(name, message)`` if phyllod (or the bus) refuses it."""
        if self.client is None:
            on_error(SERVICE_UNKNOWN, "not connected to the bus")
            return
        flags = (Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION
                 | Gio.DBusCallFlags.NO_AUTO_START)

        def done(connection: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                connection.call_finish(result)
            except GLib.Error as e:
                name, message = split_remote_error(e)
                log.warning("%s.%s on %s failed: %s %s", call.interface, call.method,
                            call.path, name, message)
                on_error(name, message)
                return
            log.info("%s.%s on %s done", call.interface, call.method, call.path)
            if on_done is not None:
                on_done()

        log.info("calling %s.%s%r on %s", call.interface, call.method, call.args, call.path)
        self.client.get_connection().call(
            bus_name=BUS_NAME, object_path=call.path, interface_name=call.interface,
            method_name=call.method, parameters=GLib.Variant(call.signature, call.args),
            reply_type=None, flags=flags, timeout_msec=CALL_TIMEOUT_MS, cancellable=None,
            callback=done)
