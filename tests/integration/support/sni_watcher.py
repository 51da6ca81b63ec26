"""A minimal org.kde.StatusNotifierWatcher on a session bus (a test helper).

What KDE Plasma's and GNOME's AppIndicator extension's watcher do, and no
more: items register (AppIndicator passes its object path; the watcher keys
the item by sender and path, as KDE does), the host is always "registered",
signals on registration. Prints ``{"ready": true}`` once it owns the name,
then one JSON line per registered item: ``{"service": ":1.5", "path": "/org/..."}``.
Run as ``python sni_watcher.py`` with DBUS_SESSION_BUS_ADDRESS set.
"""

from __future__ import annotations

import json

from gi.repository import Gio, GLib

NAME = "org.kde.StatusNotifierWatcher"
PATH = "/StatusNotifierWatcher"
XML = """
<node>
  <interface name="org.kde.StatusNotifierWatcher">
    <method name="RegisterStatusNotifierItem"><arg name="service" type="s" direction="in"/></method>
    <method name="RegisterStatusNotifierHost"><arg name="service" type="s" direction="in"/></method>
    <property name="RegisteredStatusNotifierItems" type="as" access="read"/>
    <property name="IsStatusNotifierHostRegistered" type="b" access="read"/>
    <property name="ProtocolVersion" type="i" access="read"/>
    <signal name="StatusNotifierItemRegistered"><arg type="s"/></signal>
    <signal name="StatusNotifierItemUnregistered"><arg type="s"/></signal>
    <signal name="StatusNotifierHostRegistered"/>
  </interface>
</node>
"""


def main() -> None:
    items: list[str] = []
    info = Gio.DBusNodeInfo.new_for_xml(XML).interfaces[0]
    loop = GLib.MainLoop()

    def method_call(conn: Gio.DBusConnection, sender: str, _path: str, _iface: str,
                    method: str, params: GLib.Variant,
                    invocation: Gio.DBusMethodInvocation) -> None:
        (service,) = params.unpack()
        if method == "RegisterStatusNotifierItem":
            if service.startswith("/"):
                bus_name, path = sender, service
            else:
                bus_name, path = service, "/StatusNotifierItem"
            items.append(bus_name + path)
            print(json.dumps({"service": bus_name, "path": path}), flush=True)
            conn.emit_signal(None, PATH, NAME, "StatusNotifierItemRegistered",
                             GLib.Variant("(s)", (bus_name + path,)))
        invocation.return_value(None)

    def get_property(_conn: Gio.DBusConnection, _sender: str, _path: str, _iface: str,
                     name: str) -> GLib.Variant:
        return {"RegisteredStatusNotifierItems": GLib.Variant("as", items),
                "IsStatusNotifierHostRegistered": GLib.Variant("b", True),
                "ProtocolVersion": GLib.Variant("i", 0)}[name]

    def on_bus(conn: Gio.DBusConnection, _name: str) -> None:
        conn.register_object(PATH, info, method_call, get_property, None)

    def on_name(_conn: Gio.DBusConnection, _name: str) -> None:
        print(json.dumps({"ready": True}), flush=True)

    Gio.bus_own_name(Gio.BusType.SESSION, NAME, Gio.BusNameOwnerFlags.NONE, on_bus, on_name,
                     lambda *_: loop.quit())
    loop.run()


if __name__ == "__main__":
    main()
