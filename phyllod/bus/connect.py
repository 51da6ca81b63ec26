"""One way from a bus named on a command line to a connected dbus-fast bus.

phyllod, its sleep watcher and phyllodctl all take ``--bus``: ``system``,
``session`` or a D-Bus address (``unix:path=/run/x/bus``, what the tests use).
Each caller maps failure to its own outcome (the daemon exits, the sleep
watcher runs on without logind, phyllodctl picks an exit code), so this raises
what dbus-fast raises.
"""

from __future__ import annotations

from typing import TypeVar

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from phyllod.bus import compat  # noqa: F401  (before any message is read)

BusT = TypeVar("BusT", bound=MessageBus)

_BUS_TYPES = {"system": BusType.SYSTEM, "session": BusType.SESSION}


def describe(address: str) -> str:
    """``the system bus`` or ``bus unix:path=…``, for messages."""
    return f"the {address} bus" if address in _BUS_TYPES else f"bus {address}"


async def open_bus(address: str, *, bus_class: type[BusT] = MessageBus,
                   unix_fds: bool = False) -> BusT:
    """``bus_class`` connected to ``system``, ``session`` or the D-Bus ``address``.

    ``unix_fds`` negotiates file descriptor passing (logind's inhibitor is one).
    dbus-fast resolves the address in the constructor (and before 5.0 connected
    there too), so both steps are here, under the caller's one ``try``: a
    malformed address or an unset session bus raises ``InvalidAddressError``, an
    unreachable one ``OSError``, ``EOFError`` or ``AuthError``.
    """
    bus_type = _BUS_TYPES.get(address)
    if bus_type is not None:
        bus = bus_class(bus_type=bus_type, negotiate_unix_fd=unix_fds)
    else:
        bus = bus_class(bus_address=address, negotiate_unix_fd=unix_fds)
    await bus.connect()
    return bus
