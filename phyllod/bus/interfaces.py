"""The four interfaces phyllod exports, as dbus-fast declares them.

Properties are read-only and come from contract.py's tables: each object holds
a dict of current values, replaced as a whole, and emits PropertiesChanged for
what changed. The read methods answer through :class:`ManagerCalls`. The
mutating methods are declared for introspection only: the gate (gate.py)
takes every mutating call before dbus-fast dispatches it, so a body that is
ever reached refuses, and no call can slip past authorization.

Signatures are dbus-fast's classic string annotations (``-> "s"``), which every
dbus-fast release understands (Debian 12 ships 1.84); so this module has no
``from __future__ import annotations``, which would quote them once more.
"""

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dbus_fast import DBusError, Variant
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from phyllod.contract import (
    DEVICE_IFACE,
    DEVICE_PROPERTIES,
    GUEST_IFACE,
    GUEST_PROPERTIES,
    MANAGER_IFACE,
    MANAGER_PROPERTIES,
    NOT_AUTHORIZED,
    REQUEST_IFACE,
    REQUEST_PROPERTIES,
)
from phyllod.core.safety.pci import TableRow


class ManagerCalls(Protocol):
    """The Manager's read methods, each raising DBusError with phyllod's error name."""

    def device_object(self, ref: str) -> str: ...

    def explain(self, ref: str) -> str: ...

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]: ...


def _read(name: str, signature: str) -> Any:
    """A read-only property served from the object's current values."""
    def getter(self: Published) -> Any:
        return self.values[name]
    getter.__name__ = name
    getter.__annotations__ = {"return": signature}
    return dbus_property(access=PropertyAccess.READ, name=name)(getter)


class Published(ServiceInterface):
    """An interface whose properties are a dict of values replaced as a whole."""

    INTERFACE = ""
    SIGNATURES: Mapping[str, str] = {}

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(self.INTERFACE)
        self.values = values

    def update(self, values: dict[str, Any]) -> None:
        changed = {k: v for k, v in values.items() if self.values.get(k) != v}
        self.values = values
        if changed:
            self.emit_properties_changed(changed)

    def variants(self) -> dict[str, Variant]:
        return {k: Variant(self.SIGNATURES[k], v) for k, v in self.values.items()}


def _properties(interface: str, props: Mapping[str, str]
                ) -> Callable[[type[Published]], type[Published]]:
    """Class decorator: ``interface`` with read-only properties ``props`` (name → signature)."""
    def declare(cls: type[Published]) -> type[Published]:
        cls.INTERFACE = interface
        cls.SIGNATURES = props
        for name, signature in props.items():
            setattr(cls, name, _read(name, signature))
        return cls
    return declare


def _refuse() -> None:
    """Mutating methods are served by the gate; reaching a body means it was bypassed."""
    raise DBusError(NOT_AUTHORIZED, "this call did not pass authorization")


@_properties(DEVICE_IFACE, DEVICE_PROPERTIES)
class DeviceInterface(Published):
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


@_properties(GUEST_IFACE, GUEST_PROPERTIES)
class GuestInterface(Published):
    """One defined guest and the present devices it holds."""


@_properties(REQUEST_IFACE, REQUEST_PROPERTIES)
class RequestInterface(Published):
    """A question to the person at the machine: where does this newly plugged device go?"""

    @method()
    def Answer(self, guest: "s", remember: "b") -> None:
        _refuse()


@_properties(MANAGER_IFACE, MANAGER_PROPERTIES)
class ManagerInterface(Published):
    """The daemon as a whole: policy and libvirt status, and calls by device name."""

    def __init__(self, calls: ManagerCalls, values: dict[str, Any]) -> None:
        super().__init__(values)
        self._calls = calls

    @method()
    def GetDevice(self, device: "s") -> "o":
        return self._calls.device_object(device)

    @method()
    def Explain(self, device: "s") -> "s":
        return self._calls.explain(device)

    @method()
    def GetIommuGroups(self) -> "a(ua(ssssss))":
        return self._calls.iommu_groups()

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
