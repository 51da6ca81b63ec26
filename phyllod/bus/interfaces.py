"""The four interfaces phyllod exports, as dbus-fast declares them.

Properties are read-only and come from contract.py's tables: each object holds
its current values (a tuple in the contract's order), replaced as a whole, and
emits PropertiesChanged for what changed. The read methods answer through :class:`ManagerCalls`. The
mutating methods (contract.py's ``mutates``) are declared, from the contract,
for introspection only: the gate (gate.py) takes every mutating call before
dbus-fast dispatches it, so a body that is ever reached refuses, and no call
can slip past authorization.

Signatures are dbus-fast's classic string annotations (``-> "s"``), which every
dbus-fast release understands (Debian 12 ships 1.84); so this module has no
``from __future__ import annotations``, which would quote them once more.
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dbus_fast import DBusError, Variant
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from phyllod.contract import (
    DEVICE_IFACE,
    GUEST_IFACE,
    MANAGER_IFACE,
    NOT_AUTHORIZED,
    REQUEST_IFACE,
    TABLES,
    Method,
)
from phyllod.core.safety.pci import TableRow


class ManagerCalls(Protocol):
    """The Manager's read methods, each raising DBusError with phyllod's error name."""

    def device_object(self, ref: str) -> str: ...

    def explain(self, ref: str) -> str: ...

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]: ...


def _read(name: str, signature: str, index: int) -> Any:
    """A read-only property served from the object's current values."""
    def getter(self: Published) -> Any:
        value = self._row[index]
        if value is _UNSET:
            raise KeyError(name)
        return value
    getter.__name__ = name
    getter.__annotations__ = {"return": signature}
    return dbus_property(access=PropertyAccess.READ, name=name)(getter)


#: A property no value was given for yet (the Manager's, before the first publish).
_UNSET: Any = object()


class Published(ServiceInterface):
    """An interface whose properties are values replaced as a whole.

    The values are kept as a tuple in the contract's order, not a dict: there
    is one object per device, and a 25-entry dict costs some 1.2 KB where the
    tuple costs 0.25.
    """

    INTERFACE = ""
    SIGNATURES: Mapping[str, str] = {}
    NAMES: tuple[str, ...] = ()

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(self.INTERFACE)
        self._row = self._as_row(values)

    def _as_row(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values.get(n, _UNSET) for n in self.NAMES)

    @property
    def values(self) -> dict[str, Any]:
        """The current values by property name."""
        return {n: v for n, v in zip(self.NAMES, self._row, strict=True) if v is not _UNSET}

    def update(self, values: dict[str, Any]) -> bool:
        """Take ``values``; emit PropertiesChanged with those that changed, if any
        (and say whether any did)."""
        row = self._as_row(values)
        if row == self._row:
            return False
        changed = {n: v for n, old, v in zip(self.NAMES, self._row, row, strict=True)
                   if old != v and v is not _UNSET}
        self._row = row
        if changed:
            self.emit_properties_changed(changed)
        return bool(changed)

    def variants(self) -> dict[str, Variant]:
        return {n: Variant(self.SIGNATURES[n], v)
                for n, v in zip(self.NAMES, self._row, strict=True) if v is not _UNSET}


def _refusing(name: str, declared: Method) -> Any:
    """The mutating method ``name``, declared with the contract's arguments; it refuses
    if ever reached, since the gate serves every mutating call."""
    def refuse(self: Published, *args: Any) -> None:
        raise DBusError(NOT_AUTHORIZED, "this call did not pass authorization")
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    refuse.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", positional),
         *(inspect.Parameter(arg, positional, annotation=signature)
           for arg, signature in declared.args)], return_annotation=None)
    refuse.__name__ = name
    return method(name=name)(refuse)


def _contract(interface: str) -> Callable[[type[Published]], type[Published]]:
    """Class decorator: ``interface`` with contract.py's read-only properties and its
    mutating methods (the read methods are the class's own)."""
    def declare(cls: type[Published]) -> type[Published]:
        props, methods = TABLES[interface]
        cls.INTERFACE = interface
        cls.SIGNATURES = props
        cls.NAMES = tuple(props)
        for index, (name, signature) in enumerate(props.items()):
            setattr(cls, name, _read(name, signature, index))
        for name, declared in methods.items():
            if declared.mutates:
                setattr(cls, name, _refusing(name, declared))
        return cls
    return declare


@_contract(DEVICE_IFACE)
class DeviceInterface(Published):
    """One present device: identity, where it is and why (docs/dbus-api.md)."""


@_contract(GUEST_IFACE)
class GuestInterface(Published):
    """One defined guest and the present devices it holds."""


@_contract(REQUEST_IFACE)
class RequestInterface(Published):
    """A question to the person at the machine: where does this newly plugged device go?"""


@_contract(MANAGER_IFACE)
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
