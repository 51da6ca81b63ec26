"""phyllod's D-Bus contract, in one place for its three programs (docs/dbus-api.md).

The daemon's bus service, ``phyllodctl`` and the applet all take the names
from here: the bus name, object paths, interfaces, the properties with their
D-Bus signatures, the methods, error names and polkit action ids. The shipped
introspection XML (``dbus/me.phyllo.Phyllod1.*.xml``) is checked against these
tables by tests/unit/bus/test_contract.py, and against the running daemon by
the integration tests, so none of the three can drift.

Standard library only: the applet, shipped as its own package, imports this
module and nothing else of phyllod besides its version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# ------------------------------------------------------------ names and paths

BUS_NAME: Final = "me.phyllo.Phyllod1"
ROOT: Final = "/me/phyllo/Phyllod1"
DEVICES: Final = f"{ROOT}/devices"
GUESTS: Final = f"{ROOT}/guests"
REQUESTS: Final = f"{ROOT}/requests"

MANAGER_IFACE: Final = "me.phyllo.Phyllod1.Manager"
DEVICE_IFACE: Final = "me.phyllo.Phyllod1.Device"
GUEST_IFACE: Final = "me.phyllo.Phyllod1.Guest"
REQUEST_IFACE: Final = "me.phyllo.Phyllod1.Request"
#: phyllod's own interfaces, in the order a client looks for them on an object.
INTERFACES: Final = (DEVICE_IFACE, GUEST_IFACE, MANAGER_IFACE, REQUEST_IFACE)


def _flat(name: str) -> str:
    return re.sub("[^A-Za-z0-9]", "_", name)


def device_path(device_id: str) -> str:
    """``usb:1-2.3`` → ``/me/phyllo/Phyllod1/devices/usb_1_2_3``.

    Port paths and PCI addresses have a fixed shape, so this stays one-to-one
    (but is not reversed: a client reads the ``Id`` property).
    """
    return f"{DEVICES}/{_flat(device_id)}"


def guest_path(uuid: str) -> str:
    """A guest's object, named by its libvirt UUID."""
    return f"{GUESTS}/{_flat(uuid)}"


def request_path(number: int) -> str:
    """An open ask request, numbered from 1 in the order phyllod opened them."""
    return f"{REQUESTS}/{number}"


# ------------------------------------------------------------ the freedesktop interfaces used

DBUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
OBJECT_MANAGER: Final = "org.freedesktop.DBus.ObjectManager"
PROPERTIES: Final = "org.freedesktop.DBus.Properties"
#: The signals a client follows phyllod by; phyllod defines no signal of its own.
INTERFACES_ADDED: Final = "InterfacesAdded"
INTERFACES_REMOVED: Final = "InterfacesRemoved"
PROPERTIES_CHANGED: Final = "PropertiesChanged"
NAME_OWNER_CHANGED: Final = "NameOwnerChanged"
#: GetManagedObjects' reply: {path: {interface: {property: value}}}.
MANAGED_OBJECTS_SIGNATURE: Final = "a{oa{sa{sv}}}"

# ------------------------------------------------------------ properties: name → D-Bus signature
# In the documentation's order, which is the order ``phyllodctl show`` prints them in.

DEVICE_PROPERTIES: Final[Mapping[str, str]] = {
    "Id": "s", "Subsystem": "s", "Vendor": "s", "Product": "s", "Serial": "s",
    "Manufacturer": "s", "Name": "s", "Port": "s", "Address": "s", "Bus": "u",
    "DeviceNumber": "u", "DeviceClass": "s", "InterfaceClasses": "as", "Driver": "s",
    "IommuGroup": "i", "State": "s",
    "Guest": "s", "Rule": "s", "Reason": "s", "Override": "s", "OverrideGuest": "s",
    "Identity": "s", "Remembered": "b", "RememberedGuest": "s",
    "VendorFromDatabase": "s", "ModelFromDatabase": "s", "SerialDoubt": "s",
}
GUEST_PROPERTIES: Final[Mapping[str, str]] = {
    "Name": "s", "UUID": "s", "State": "s", "Devices": "ao",
}
REQUEST_PROPERTIES: Final[Mapping[str, str]] = {
    "Device": "o", "DeviceId": "s", "Description": "s", "Candidates": "as", "Deadline": "t",
    "Rule": "s",
}
MANAGER_PROPERTIES: Final[Mapping[str, str]] = {
    "Version": "s", "IommuEnabled": "b", "PolicyStatus": "s", "PolicyError": "s",
    "PolicyFiles": "as", "LibvirtUri": "s", "LibvirtConnected": "b",
    "Remembered": "a{ss}", "AskTimeout": "u",
}

# ------------------------------------------------------------ methods


@dataclass(frozen=True, slots=True)
class Method:
    """A method: its arguments' names and D-Bus signatures, its reply's signature,
    and whether it changes anything (then polkit decides; phyllodctl and the
    applet let polkit ask for a password)."""

    args: tuple[tuple[str, str], ...] = ()
    returns: str = ""
    mutates: bool = False

    @property
    def takes(self) -> str:
        """The arguments' signature, as a message carries it (``ss``)."""
        return "".join(signature for _, signature in self.args)


_DEVICE_ARG = ("device", "s")
MANAGER_METHODS: Final[Mapping[str, Method]] = {
    "GetDevice": Method((_DEVICE_ARG,), "o"),
    "Explain": Method((_DEVICE_ARG,), "s"),
    "GetIommuGroups": Method((), "a(ua(ssssss))"),
    "Attach": Method((_DEVICE_ARG, ("guest", "s")), mutates=True),
    "Detach": Method((_DEVICE_ARG,), mutates=True),
    "ClearOverride": Method((_DEVICE_ARG,), mutates=True),
    "Forget": Method((_DEVICE_ARG,), mutates=True),
    "Reload": Method((), mutates=True),
}
DEVICE_METHODS: Final[Mapping[str, Method]] = {
    "Attach": Method((("guest", "s"),), mutates=True),
    "Detach": Method((), mutates=True),
    "ClearOverride": Method((), mutates=True),
}
REQUEST_METHODS: Final[Mapping[str, Method]] = {
    "Answer": Method((("guest", "s"), ("remember", "b")), mutates=True),
}

#: Each interface's (properties, methods), for the checks that keep them in step.
TABLES: Final[Mapping[str, tuple[Mapping[str, str], Mapping[str, Method]]]] = {
    MANAGER_IFACE: (MANAGER_PROPERTIES, MANAGER_METHODS),
    DEVICE_IFACE: (DEVICE_PROPERTIES, DEVICE_METHODS),
    GUEST_IFACE: (GUEST_PROPERTIES, {}),
    REQUEST_IFACE: (REQUEST_PROPERTIES, REQUEST_METHODS),
}

# ------------------------------------------------------------ errors

#: phyllod's error names are this prefix and the name of an error class in core/errors.py.
ERROR_PREFIX: Final = "me.phyllo.Phyllod1.Error."
NOT_AUTHORIZED: Final = ERROR_PREFIX + "NotAuthorized"
NO_SUCH_DEVICE: Final = ERROR_PREFIX + "NoSuchDevice"
NO_SUCH_GUEST: Final = ERROR_PREFIX + "NoSuchGuest"
NO_SUCH_REQUEST: Final = ERROR_PREFIX + "NoSuchRequest"
DENIED: Final = ERROR_PREFIX + "Denied"
BUSY: Final = ERROR_PREFIX + "Busy"
FAILED: Final = ERROR_PREFIX + "Failed"
ERRORS: Final = (NOT_AUTHORIZED, NO_SUCH_DEVICE, NO_SUCH_GUEST, NO_SUCH_REQUEST, DENIED, BUSY,
                 FAILED)

#: The bus's own errors that phyllod sends or its clients tell apart.
DBUS_ERROR_PREFIX: Final = "org.freedesktop.DBus.Error."
INVALID_ARGS: Final = DBUS_ERROR_PREFIX + "InvalidArgs"
LIMITS_EXCEEDED: Final = DBUS_ERROR_PREFIX + "LimitsExceeded"
ACCESS_DENIED: Final = DBUS_ERROR_PREFIX + "AccessDenied"
INTERACTIVE_AUTHORIZATION_REQUIRED: Final = DBUS_ERROR_PREFIX + "InteractiveAuthorizationRequired"
SERVICE_UNKNOWN: Final = DBUS_ERROR_PREFIX + "ServiceUnknown"
NAME_HAS_NO_OWNER: Final = DBUS_ERROR_PREFIX + "NameHasNoOwner"
DISCONNECTED: Final = DBUS_ERROR_PREFIX + "Disconnected"
NO_SERVER: Final = DBUS_ERROR_PREFIX + "NoServer"

# ------------------------------------------------------------ polkit action ids
# Declared in dbus/me.phyllo.phyllod.policy ("action" is polkit's word for a
# permission here, not phyllod's policy verb).

POLKIT_ATTACH: Final = "me.phyllo.phyllod.attach"
POLKIT_ATTACH_PCI: Final = "me.phyllo.phyllod.attach-pci"
POLKIT_DETACH: Final = "me.phyllo.phyllod.detach"
POLKIT_RELOAD: Final = "me.phyllo.phyllod.reload"
POLKIT_ANSWER: Final = "me.phyllo.phyllod.answer"
POLKIT_IDS: Final = (POLKIT_ATTACH, POLKIT_ATTACH_PCI, POLKIT_DETACH, POLKIT_RELOAD,
                     POLKIT_ANSWER)
