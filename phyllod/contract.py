"""The names phyllodctl uses from the D-Bus contract (docs/dbus-api.md), in one place.

Plain strings, free of dbus-fast, so the pure modules can share them.
"""

BUS_NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
MANAGER_IFACE = "me.phyllo.Phyllod1.Manager"
DEVICE_IFACE = "me.phyllo.Phyllod1.Device"
GUEST_IFACE = "me.phyllo.Phyllod1.Guest"
REQUEST_IFACE = "me.phyllo.Phyllod1.Request"
REQUESTS = f"{ROOT}/requests"

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
