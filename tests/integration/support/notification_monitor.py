"""Print every org.freedesktop.Notifications message on a bus as one JSON line (a test helper).

Run as ``python notification_monitor.py ADDRESS``. It becomes a monitor
(``org.freedesktop.DBus.Monitoring.BecomeMonitor``), the way dbus-monitor
does, so it sees the applet's ``Notify``/``CloseNotification`` calls, the
server's replies (the notification ids) and its ``ActionInvoked`` and
``NotificationClosed`` signals exactly as they pass on the bus. Prints
``{"ready": true}`` once monitoring.
"""

from __future__ import annotations

import json
import sys

from gi.repository import Gio, GLib

IFACE = "org.freedesktop.Notifications"


def main() -> None:
    conn = Gio.DBusConnection.new_for_address_sync(
        sys.argv[1], Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
        | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
    loop = GLib.MainLoop()
    calls: dict[int, str] = {}  # serial of a Notify call -> its sender, to match the reply

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    def on_message(message: Gio.DBusMessage) -> bool:
        kind = message.get_message_type()
        body = message.get_body()
        args = body.unpack() if body is not None else ()
        if kind == Gio.DBusMessageType.METHOD_CALL and message.get_interface() == IFACE:
            if message.get_member() == "Notify":
                calls[message.get_serial()] = message.get_sender()
                app, replaces, icon, summary, text, actions, _hints, timeout = args
                emit({"member": "Notify", "serial": message.get_serial(), "app": app,
                      "replaces": replaces, "icon": icon, "summary": summary, "body": text,
                      "actions": list(zip(actions[::2], actions[1::2], strict=True)),
                      "timeout": timeout})
            else:
                emit({"member": message.get_member(), "args": list(args)})
        elif kind == Gio.DBusMessageType.METHOD_RETURN and message.get_reply_serial() in calls:
            calls.pop(message.get_reply_serial())
            emit({"member": "NotifyReply", "serial": message.get_reply_serial(),
                  "id": args[0] if args else None})
        elif kind == Gio.DBusMessageType.SIGNAL and message.get_interface() == IFACE:
            emit({"member": message.get_member(), "args": list(args)})
        return False

    def filter_(_conn: Gio.DBusConnection, message: Gio.DBusMessage,
                incoming: bool) -> Gio.DBusMessage | None:
        # Filters run in GDBus's worker thread: hand the message to the main loop.
        # Only the bus driver's replies (BecomeMonitor's) go on to GDBus: a monitor
        # must never answer the calls it sees, and GDBus would reply UnknownMethod.
        if not incoming:
            return message
        if message.get_sender() == "org.freedesktop.DBus" and message.get_message_type() in (
                Gio.DBusMessageType.METHOD_RETURN, Gio.DBusMessageType.ERROR):
            return message
        GLib.idle_add(on_message, message)
        return None

    conn.add_filter(filter_)
    conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus.Monitoring", "BecomeMonitor",
                   GLib.Variant("(asu)", ([f"interface='{IFACE}'", "type='method_return'"], 0)),
                   None, Gio.DBusCallFlags.NONE, -1, None)
    emit({"ready": True})
    loop.run()


if __name__ == "__main__":
    main()
